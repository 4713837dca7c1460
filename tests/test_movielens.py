"""MovieLens loaders on tiny fixtures in the official formats; leakage checks."""

import numpy as np
import pandas as pd
import pytest

from limaml_tf.features import FeatureError
from limaml_tf.movielens import interactions, load_movielens, load_tasks_frame, movielens_spec
from limaml_tf.tasks import paired_tasks, split_tasks, time_split
from movielens_fixtures import write_ml100k, write_ml1m

def test_ml100k_loader_reads_official_format(tmp_path):
    ratings, users, movies = load_movielens("ml-100k", str(write_ml100k(tmp_path / "ml-100k")))
    assert len(ratings) == 48 and ratings["rating"].between(1, 5).all()
    assert movies.set_index("movie_id").loc["2", "title"] == "Misérables, Les (1995)"  # latin-1 decoded
    assert movies.set_index("movie_id").loc["1", "genres"] == "Animation|Children's|Comedy"
    assert np.isnan(movies.set_index("movie_id").loc["3", "release_year"])
    # exact ages are mapped onto ML-1M's age buckets
    assert users.set_index("user_id")["age"].to_dict() == {"1": 18, "2": 50, "3": 1, "4": 56}


def test_ml1m_loader_reads_official_format(tmp_path):
    ratings, users, movies = load_movielens("ml-1m", str(write_ml1m(tmp_path / "ml-1m")))
    assert ratings["timestamp"].tolist()[0] == 978300760
    m = movies.set_index("movie_id")
    assert m.loc["30", "title"] == "Année dernière (1961)" and m.loc["30", "release_year"] == 1961
    assert m.loc["20", "genres"] == "Animation|Children's|Comedy"
    assert users.set_index("user_id").loc["2", "occupation"] == "self-employed"
    df = interactions(ratings, users, movies)
    assert df["label"].tolist() == [1, 0, 1, 0]  # sorted by (user, time): user 2 rated 10 first


def test_missing_file_error_names_it(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    (tmp_path / "ml-1m" / "users.dat").unlink()
    with pytest.raises(FeatureError, match=r"users\.dat.*files\.grouplens\.org"):
        load_movielens("ml-1m", str(tmp_path / "ml-1m"))


def _brute_force_history(df, row):
    past = df[(df["user_id"] == row["user_id"]) & (df["timestamp"] < row["timestamp"])]
    return len(past), int(past["label"].sum()), past


def test_history_features_use_only_strictly_earlier_ratings(tmp_path):
    df = interactions(*load_movielens("ml-100k", str(write_ml100k(tmp_path / "ml-100k"))))
    for _, row in df.iterrows():
        n, pos, past = _brute_force_history(df, row)
        assert row["hist_count"] == pytest.approx(np.log1p(n))
        assert row["hist_pos_rate"] == pytest.approx((pos + 1) / (n + 2))
        liked = past[past["label"] == 1]
        drama = liked["genres"].str.split("|").apply(lambda g: "Drama" in g).sum()
        assert row["hist_genre_drama"] == pytest.approx(drama / max(len(liked), 1))
    # the two ratings sharing a timestamp see the same (earlier-only) history
    tied = df[df.duplicated(["user_id", "timestamp"], keep=False)]
    assert tied.groupby(["user_id", "timestamp"])["hist_count"].nunique().eq(1).all()


def test_history_features_ignore_future_labels(tmp_path):
    ratings, users, movies = load_movielens("ml-100k", str(write_ml100k(tmp_path / "ml-100k")))
    base = interactions(ratings, users, movies)
    cut = ratings["timestamp"].median()
    flipped = ratings.assign(rating=np.where(ratings["timestamp"] > cut, 6 - ratings["rating"], ratings["rating"]))
    changed = interactions(flipped, users, movies)
    early = base["timestamp"] <= cut
    cols = [c for c in base.columns if c.startswith("hist_")] + ["genre_affinity"]
    pd.testing.assert_frame_equal(base.loc[early, cols], changed.loc[early, cols])
    assert not base.loc[~early, cols].equals(changed.loc[~early, cols])  # the check can fail


def test_time_split_and_spec_do_not_leak(tmp_path):
    df = load_tasks_frame("ml-100k", str(write_ml100k(tmp_path / "ml-100k")))
    spec = movielens_spec(df)  # only used for the timestamp column here
    train_df, valid_df, test_df = time_split(df, spec, (0.5, 0.75))
    assert len(train_df) + len(valid_df) + len(test_df) == len(df)
    assert train_df["timestamp"].max() < valid_df["timestamp"].min()
    assert valid_df["timestamp"].max() < test_df["timestamp"].min()
    spec = movielens_spec(train_df)
    # vocabularies and numeric stats come from the training period only
    assert set(spec.feature("user_id").vocabulary) == set(train_df["user_id"])
    assert spec.feature("hour").mean == pytest.approx(train_df["hour"].mean())
    train = split_tasks(train_df, spec, max_samples_per_task=6)
    a = train.arrays
    assert (a["support_mask"].sum(1) + a["query_mask"].sum(1) <= 6).all()
    last_support = np.where(a["support_mask"] > 0, a["support_time"], -np.inf).max(1)
    first_query = np.where(a["query_mask"] > 0, a["query_time"], np.inf).min(1)
    assert (last_support <= first_query).all()
    ev = paired_tasks(valid_df, test_df, spec, max_support=8, max_query=8).arrays
    s_time = np.where(ev["support_mask"] > 0, ev["support_time"], -np.inf).max(1)
    q_time = np.where(ev["query_mask"] > 0, ev["query_time"], np.inf).min(1)
    assert (s_time < q_time).all()
