"""MovieLens loaders on tiny fixtures in the official formats; leakage checks."""

import numpy as np
import pandas as pd
import pytest

from limaml_tf.raw_data import FeatureError
from limaml_tf.movielens import (CLOCK_FEATURES, has_clock, interactions, load_movielens, load_tasks_frame,
                                 movielens_spec, with_sequences)
from limaml_tf.tasks import paired_tasks, split_tasks, time_split
from movielens_fixtures import ml1m_ratings, write_ml100k, write_ml1m, write_ml1m_official, write_ml1m_ordered

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


# -- ML-1M: the official layout and the ordered one (per-user rank, no timestamps) ----------------------

NO_CLOCK = r"no timestamps: use --protocol few-shot or user-cold, or the official ml-1m archive with timestamps"


@pytest.fixture(scope="module")
def ml1m_dirs(tmp_path_factory):
    """The same generated ratings in both ML-1M layouts; the ordered one adds a later duplicate of
    user 3's first (user, movie) pair at its 6th position (order 5)."""
    rows = ml1m_ratings()
    top = tmp_path_factory.mktemp("ml1m")
    return write_ml1m_official(top / "official", rows), write_ml1m_ordered(top / "ordered", rows, duplicate=(3, 5))


def test_ml1m_ordered_layout_loads_with_a_synthetic_clock(ml1m_dirs):
    official, ordered = ml1m_dirs
    ratings, users, movies = load_movielens("ml-1m", str(ordered))
    assert not has_clock(ratings) and ratings.attrs["dropped_duplicates"] == 1
    assert has_clock(load_movielens("ml-1m", str(official))[0])
    assert len(ratings) == 20 * 14 and ratings["user_id"].nunique() == 20
    assert (ratings["timestamp"] == ratings["order"]).all()  # the synthetic clock is the rank
    assert movies.set_index("movie_id").loc["3", "title"] == "Année dernière (1961)"  # latin-1 decoded
    assert users.set_index("user_id").loc["2", "occupation"] == "artist"  # code 2


def test_ml1m_ordered_duplicate_pair_keeps_the_earlier_rating(ml1m_dirs):
    ratings = load_movielens("ml-1m", str(ml1m_dirs[1]))[0]
    user = ratings[ratings["user_id"] == "3"].sort_values("order")
    first = user.iloc[0]
    assert not ratings.duplicated(["user_id", "movie_id"]).any()
    again = user[user["movie_id"] == first["movie_id"]]
    assert len(again) == 1 and again["order"].tolist() == [0]  # the re-rating at order 5 is dropped
    assert 5 not in user["order"].tolist() and user["order"].tolist()[5] == 6  # ranks kept as read


def test_ml1m_ordered_invents_no_time_features(ml1m_dirs):
    df = load_tasks_frame("ml-1m", str(ml1m_dirs[1]))
    assert not has_clock(df) and not set(CLOCK_FEATURES) & set(df.columns)
    seq = with_sequences(df, 4)
    assert "seq_log_gap" not in seq.columns and not has_clock(seq)
    spec = movielens_spec(seq, sequence_len=4, per_user=True)
    names = {f.name for f in (*spec.meta_features, *spec.other_features)}
    assert not names & {*CLOCK_FEATURES, "seq_log_gap"} and {"hist_count", "seq_movie", "seq_label"} <= names
    # a spec for rows of a global split is refused (`limaml train`, the paper's tables)
    with pytest.raises(ValueError, match=NO_CLOCK):
        movielens_spec(df)
    with pytest.raises(ValueError, match=NO_CLOCK):
        movielens_spec(df[df["order"] < 5].drop(columns="order"))  # boolean rows keep the mark


def test_ml1m_both_layouts_give_the_same_rows_and_history(ml1m_dirs):
    a = load_tasks_frame("ml-1m", str(ml1m_dirs[0]))
    b = load_tasks_frame("ml-1m", str(ml1m_dirs[1]))
    assert has_clock(a) and set(CLOCK_FEATURES) <= set(a.columns)
    key = ["user_id", "movie_id", "rating", "label"]
    pd.testing.assert_frame_equal(a[key], b[key])  # same rows in the same (user, time) order
    common = [c for c in b.columns if c.startswith("hist_")] + ["genre_affinity"]
    pd.testing.assert_frame_equal(a[common], b[common])


def test_ml1m_ordered_history_is_causal(ml1m_dirs):
    df = load_tasks_frame("ml-1m", str(ml1m_dirs[1]))
    first = df.groupby("user_id")["order"].transform("min") == df["order"]
    assert (df.loc[first, "hist_count"] == 0).all() and (df.loc[first, "hist_pos_rate"] == 0.5).all()
    for _, row in df.iterrows():
        past = df[(df["user_id"] == row["user_id"]) & (df["order"] < row["order"])]
        assert row["hist_count"] == pytest.approx(np.log1p(len(past)))
        assert row["hist_pos_rate"] == pytest.approx((past["label"].sum() + 1) / (len(past) + 2))
        assert row["hist_mean_rating"] == pytest.approx((past["rating"].sum() + 6) / (len(past) + 2))


def test_ml1m_missing_ratings_names_both_layouts(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    (tmp_path / "ml-1m" / "ratings.dat").unlink()
    with pytest.raises(FeatureError, match=r"ratings\.dat.*ratings\.csv\.gz"):
        load_movielens("ml-1m", str(tmp_path / "ml-1m"))


def test_ml1m_ordered_bad_order_column_is_named(tmp_path, ml1m_dirs):
    import shutil

    d = shutil.copytree(ml1m_dirs[1], tmp_path / "bad")
    pd.DataFrame({"user_id": [1, 1], "movie_id": [1, 2], "rating": [4, 3], "order": [0, 0]}).to_csv(
        d / "ratings.csv.gz", index=False)
    with pytest.raises(FeatureError, match="order.*unique within each user"):
        load_movielens("ml-1m", str(d))
    pd.DataFrame({"user_id": [1], "movie_id": [1], "rating": [4]}).to_csv(d / "ratings.csv.gz", index=False)
    with pytest.raises(FeatureError, match=r"missing column\(s\) \['order'\]"):
        load_movielens("ml-1m", str(d))


ML1M_CFG = {"support_sizes": (3, 5), "max_query": 8, "max_train_samples": 12, "user_cold_ratings": (13, 100)}


def test_ml1m_ordered_time_protocol_is_refused(ml1m_dirs):
    from limaml_eval import Config, make_split

    cfg = Config(protocol="time", **ML1M_CFG)
    with pytest.raises(ValueError, match=NO_CLOCK):
        make_split("time", load_tasks_frame("ml-1m", str(ml1m_dirs[1])), 0, cfg)
    assert make_split("time", load_tasks_frame("ml-1m", str(ml1m_dirs[0])), 0, cfg).summary["train"] > 0


def test_ml1m_ordered_few_shot_support_is_each_users_first_k(ml1m_dirs):
    from limaml_eval import Config, make_split

    frame = load_tasks_frame("ml-1m", str(ml1m_dirs[1]))
    s = make_split("few-shot", frame, 0, Config(**ML1M_CFG))
    assert not {f.name for f in (*s.spec.meta_features, *s.spec.other_features)} & set(CLOCK_FEATURES)
    for k in (3, 5):
        tasks = s.test[f"K={k}"]
        a, m_s, m_q = tasks.arrays, tasks.arrays["support_mask"] > 0, tasks.arrays["query_mask"] > 0
        assert len(tasks) == 2 and (m_s.sum(1) == k).all() and (m_q.sum(1) == 8).all()
        for t, key in enumerate(tasks.task_keys):
            order = frame.loc[frame["task"] == key, "order"].sort_values().to_numpy()
            assert np.array_equal(a["support_time"][t][m_s[t]], order[:k])  # its first k ratings
            assert np.array_equal(a["query_time"][t][m_q[t]], order[k:k + 8])  # then the next ones
            assert np.allclose(a["query"]["hist_count"][t][m_q[t]], np.log1p(k))  # the query sees the support only


def test_ml1m_ordered_user_cold_split(ml1m_dirs):
    from limaml_eval import Config, make_split

    s = make_split("user-cold", load_tasks_frame("ml-1m", str(ml1m_dirs[1])), 0, Config(**ML1M_CFG))
    tasks = s.test["all-but-10"]
    assert len(s.train) == 16 and len(tasks) == 2
    assert ((tasks.arrays["query_mask"].sum(1) == 10) & (tasks.arrays["support_mask"].sum(1) == 4)).all()
