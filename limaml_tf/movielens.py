"""MovieLens (official GroupLens releases ML-100K and ML-1M) as LiMAML tasks.

Task = user; label = rating >= 4. Meta features: the user's demographics plus *causal*
history features computed only from that user's strictly earlier interactions (ties on the
timestamp count as "not earlier"). Other features: the movie, its genres, release year, the
user's affinity for the movie's genres so far, and the context (day of week, hour).

    ratings, users, movies = load_movielens("ml-100k", path)   # or path=None: download
    df = interactions(ratings, users, movies)
    train, valid, test = time_split(df, spec_placeholder)       # see `movielens_spec`
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import urllib.request
import zipfile

import numpy as np
import pandas as pd

from limaml_tf.artifacts import atomic_directory
from limaml_tf.sequences import add_sequences
from limaml_tf.spec import Feature, FeatureError, FeatureSpec

URLS = {
    "ml-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
}
FILES = {"ml-100k": ("u.data", "u.user", "u.item"), "ml-1m": ("ratings.dat", "users.dat", "movies.dat")}
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")
# ML-1M's age codes (lower bounds of its buckets); ML-100K's exact ages are mapped onto them.
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)
# ML-1M's occupation codes (README of ml-1m).
ML1M_OCCUPATIONS = ("other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
                    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
                    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer")
DAY = 86_400


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "limaml_tf")


def fetch(name: str, cache_dir: str | None = None, timeout: float = 60.0) -> str:
    """Downloads and unpacks the official archive of `name` (once) and returns its directory."""
    cache_dir = cache_dir or default_cache_dir()
    target = os.path.join(cache_dir, name)
    if all(os.path.exists(os.path.join(target, f)) for f in FILES[name]):
        return target
    try:
        with urllib.request.urlopen(URLS[name], timeout=timeout) as r:
            payload = r.read()
    except OSError as e:
        raise FeatureError(
            f"{name}: no local copy and the official archive {URLS[name]} could not be downloaded ({e}). "
            f"Download it elsewhere, unzip it, and pass its directory (holding {', '.join(FILES[name])}) "
            "as the path.") from e
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        zipfile.ZipFile(io.BytesIO(payload)).extractall(tmp)
        with atomic_directory(target) as out:
            for f in os.listdir(os.path.join(tmp, name)):
                shutil.move(os.path.join(tmp, name, f), os.path.join(out, f))
    return target


def _require(path: str, name: str) -> None:
    missing = [f for f in FILES[name] if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise FeatureError(f"{name}: missing file(s) {missing} in {path!r}: pass the directory of the unzipped "
                           f"official archive ({URLS[name]}), or no path to download it")


def _read(path: str, sep: str, names: list[str]) -> pd.DataFrame:
    # The official files are latin-1 (titles such as "Misérables"); "::" needs the python engine.
    return pd.read_csv(path, sep=sep, names=names, header=None, encoding="latin-1", engine="python",
                       dtype=str, keep_default_na=False)


def _age_bucket(age: pd.Series) -> pd.Series:
    return pd.Series(np.asarray(AGE_BUCKETS)[np.searchsorted(AGE_BUCKETS, age.to_numpy(), side="right") - 1],
                     index=age.index)


def load_movielens(name: str = "ml-100k", path: str | None = None, cache_dir: str | None = None):
    """Reads an official MovieLens release into three normalized frames.

    ratings: user_id, movie_id (str), rating (int), timestamp (int seconds)
    users:   user_id, gender, age (ML-1M bucket code), occupation (name), zip
    movies:  movie_id, title, genres ("A|B"), release_year (float, NaN when unknown)
    """
    if name not in FILES:
        raise ValueError(f"unknown MovieLens release {name!r}; known: {sorted(FILES)}")
    path = fetch(name, cache_dir) if path is None else path
    _require(path, name)
    r_file, u_file, m_file = (os.path.join(path, f) for f in FILES[name])
    if name == "ml-100k":
        ratings = _read(r_file, "\t", ["user_id", "movie_id", "rating", "timestamp"])
        users = _read(u_file, r"\|", ["user_id", "age", "gender", "occupation", "zip"])
        users["age"] = _age_bucket(users["age"].astype(int))
        items = _read(m_file, r"\|", ["movie_id", "title", "release_date", "video_date", "url", *GENRES])
        flags = items[list(GENRES)].astype(int).to_numpy().astype(bool)
        genres = ["|".join(g for g, on in zip(GENRES, row) if on) for row in flags]
        year = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
        movies = pd.DataFrame({"movie_id": items["movie_id"], "title": items["title"], "genres": genres,
                               "release_year": year.astype(float)})
    else:
        ratings = _read(r_file, "::", ["user_id", "movie_id", "rating", "timestamp"])
        users = _read(u_file, "::", ["user_id", "gender", "age", "occupation", "zip"])
        users["age"] = users["age"].astype(int)
        users["occupation"] = [ML1M_OCCUPATIONS[int(c)] if c.isdigit() and int(c) < len(ML1M_OCCUPATIONS)
                               else "other" for c in users["occupation"]]
        movies = _read(m_file, "::", ["movie_id", "title", "genres"])
        year = movies["title"].str.extract(r"\((\d{4})\)\s*$")[0]
        movies["release_year"] = pd.to_numeric(year, errors="coerce").astype(float)
    ratings["rating"] = ratings["rating"].astype(int)
    ratings["timestamp"] = ratings["timestamp"].astype(np.int64)
    return ratings, users[["user_id", "gender", "age", "occupation", "zip"]], movies


HISTORY_FEATURES = ("hist_count", "hist_pos_rate", "hist_mean_rating", "hist_days")


def _strictly_earlier(df: pd.DataFrame, values: np.ndarray) -> np.ndarray:
    """Per row: the sum of `values` [n, k] over the same user's rows with a smaller timestamp.
    `df` must be sorted by (user_id, timestamp)."""
    totals = pd.DataFrame(values).groupby(df["user_id"].to_numpy(), sort=False).cumsum().to_numpy() - values
    # rows sharing (user, timestamp) all see only what precedes the first of them
    first = df.groupby(["user_id", "timestamp"], sort=False).cumcount().to_numpy() == 0
    idx = np.maximum.accumulate(np.where(first, np.arange(len(df)), 0))
    return totals[idx]


def interactions(ratings: pd.DataFrame, users: pd.DataFrame, movies: pd.DataFrame) -> pd.DataFrame:
    """One row per rating with the label and every feature of `movielens_spec`, sorted by
    (user, time). History features use only the user's strictly earlier ratings."""
    df = ratings.merge(users, on="user_id", how="left", validate="many_to_one")
    df = df.merge(movies[["movie_id", "genres", "release_year"]], on="movie_id", how="left", validate="many_to_one")
    if df["gender"].isna().any():
        raise FeatureError(f"ratings reference user(s) missing from the users file: "
                           f"{sorted(df.loc[df['gender'].isna(), 'user_id'].unique())[:5]}")
    if df["genres"].isna().any():
        raise FeatureError(f"ratings reference movie(s) missing from the movies file: "
                           f"{sorted(df.loc[df['genres'].isna(), 'movie_id'].unique())[:5]}")
    df = df.assign(_num=pd.to_numeric(df["user_id"], errors="coerce"))
    df = df.sort_values(["_num", "user_id", "timestamp", "movie_id"], kind="stable").drop(columns="_num")
    df = df.reset_index(drop=True)
    df["label"] = (df["rating"] >= 4).astype(np.int64)
    onehot = _genre_onehot(df)
    past = _strictly_earlier(df, _history_terms(df, onehot))
    first_time = df.groupby("user_id", sort=False)["timestamp"].transform("min").to_numpy()
    _set_history(df, past, first_time, onehot)
    when = pd.to_datetime(df["timestamp"], unit="s", utc=True)
    df["day_of_week"] = when.dt.dayofweek.astype(str)
    df["hour"] = when.dt.hour.astype(np.float32)
    df["zip_prefix"] = df["zip"].astype(str).str[:2]
    df["age"] = df["age"].astype(str)
    df["release_year"] = df["release_year"].fillna(df["release_year"].median()).fillna(1990.0).astype(np.float32)
    return df


GENRE_NAMES = tuple(g for g in GENRES if g != "unknown")


def _genre_onehot(df: pd.DataFrame) -> np.ndarray:
    dummies = df["genres"].astype(str).str.get_dummies("|")
    return dummies.reindex(columns=list(GENRE_NAMES), fill_value=0).to_numpy(np.float64)


def _history_terms(df: pd.DataFrame, onehot: np.ndarray) -> np.ndarray:
    """Per row, what it adds to a later row's history: [1, label, rating, genre one-hot * label]."""
    pos = df["label"].to_numpy(np.float64)
    return np.column_stack([np.ones(len(df)), pos, df["rating"].to_numpy(np.float64), onehot * pos[:, None]])


def _set_history(df: pd.DataFrame, past: np.ndarray, first_time: np.ndarray, onehot: np.ndarray) -> None:
    """Writes the history features (and `genre_affinity`) of every row from its summed history terms."""
    count, n_pos, rating_sum, genre_pos = past[:, 0], past[:, 1], past[:, 2], past[:, 3:]
    share = genre_pos / np.maximum(n_pos, 1.0)[:, None]
    df["hist_count"] = np.log1p(count).astype(np.float32)
    df["hist_pos_rate"] = ((n_pos + 1.0) / (count + 2.0)).astype(np.float32)  # Laplace-smoothed
    df["hist_mean_rating"] = ((rating_sum + 3.0 * 2) / (count + 2.0)).astype(np.float32)
    days = np.maximum(df["timestamp"].to_numpy() - first_time, 0) / DAY
    df["hist_days"] = np.log1p(days).astype(np.float32)
    for j, g in enumerate(GENRE_NAMES):
        df[f"hist_genre_{_slug(g)}"] = share[:, j].astype(np.float32)
    # affinity of the user's past likes for this movie's genres (user x item, hence an "other" feature)
    df["genre_affinity"] = ((share * onehot).sum(1) / np.maximum(onehot.sum(1), 1.0)).astype(np.float32)


def support_history(df: pd.DataFrame, is_support) -> pd.DataFrame:
    """`df` (rows of `interactions`, sorted by (user, time)) with its history features recomputed
    from each user's **support** rows only, as the per-user protocols need: a support row sees the
    support rows strictly earlier than itself; a query row sees all of its user's support rows (what
    is known when the query is scored) and never another query row's label. `hist_days` counts from
    the user's first support rating (0 when the user has none or the row is earlier)."""
    is_support = np.asarray(is_support, dtype=bool)
    if len(is_support) != len(df):
        raise ValueError(f"is_support has {len(is_support)} entries for {len(df)} rows")
    df = df.reset_index(drop=True).copy()
    order = df.assign(_num=pd.to_numeric(df["user_id"], errors="coerce"))
    if not order.sort_values(["_num", "user_id", "timestamp"], kind="stable").index.equals(df.index):
        raise ValueError("support_history: rows must be sorted by (user, timestamp), as `interactions` returns them")
    onehot = _genre_onehot(df)
    terms = _history_terms(df, onehot) * is_support[:, None]
    totals = pd.DataFrame(terms).groupby(df["user_id"].to_numpy(), sort=False).transform("sum").to_numpy()
    past = np.where(is_support[:, None], _strictly_earlier(df, terms), totals)
    support_time = pd.Series(np.where(is_support, df["timestamp"].to_numpy(np.float64), np.inf))
    first = support_time.groupby(df["user_id"].to_numpy(), sort=False).transform("min").to_numpy()
    first = np.where(np.isfinite(first), first, df["timestamp"].to_numpy(np.float64))
    _set_history(df, past, first, onehot)
    return df


SEQUENCE_FEATURES = ("seq_movie", "seq_label", "seq_log_gap")  # the user's previous ratings (meta features)


def with_sequences(df: pd.DataFrame, max_len: int, is_support=None) -> pd.DataFrame:
    """`df` (rows of `interactions`, sorted by (user, time)) plus the user's previous `max_len` ratings,
    most recent first: `seq_movie` (movie ids), `seq_label` (their labels), `seq_log_gap` (log1p days
    before this rating). Strictly earlier ratings only; with `is_support`, support ratings only, as
    `support_history` (`limaml_tf.sequences.add_sequences`)."""
    return add_sequences(df, "user_id", "timestamp", {"seq_movie": "movie_id"}, max_len, label="label",
                         label_name="seq_label", gap_name="seq_log_gap", is_support=is_support)


def _slug(genre: str) -> str:
    return genre.lower().replace("'", "").replace("-", "_")


def movielens_spec(train_df: pd.DataFrame, user_id_feature: bool = True, sequence_len: int = 0) -> FeatureSpec:
    """The FeatureSpec for `interactions` frames. Vocabularies (and numeric stats) come from the
    training period only, so a user or movie first seen later maps to id 0 (unknown).
    `user_id` (a meta feature with the training users as vocabulary) is read only by ID meta
    blocks; MLP meta blocks are given `mlp_meta_features(spec)`. `sequence_len` > 0 adds the
    sequence meta features of `with_sequences` (read only by a `TransformerMetaBlock`)."""
    genre_names = [g for g in GENRES if g != "unknown"]
    vocab = lambda col: tuple(sorted(train_df[col].astype(str).unique()))  # noqa: E731
    meta = [Feature("gender", "categorical", vocabulary=("F", "M")),
            Feature("age", "categorical", vocabulary=tuple(str(a) for a in AGE_BUCKETS)),
            Feature("occupation", "categorical", vocabulary=vocab("occupation")),
            Feature("zip_prefix", "categorical", num_bins=128),
            *(Feature(n, "numeric") for n in HISTORY_FEATURES),
            *(Feature(f"hist_genre_{_slug(g)}", "numeric") for g in genre_names)]
    if user_id_feature:
        meta.append(Feature("user_id", "categorical", vocabulary=vocab("user_id")))
    if sequence_len:
        meta += [Feature("seq_movie", "sequence", vocabulary=vocab("movie_id"), max_len=sequence_len),
                 Feature("seq_label", "numeric_sequence", max_len=sequence_len),
                 Feature("seq_log_gap", "numeric_sequence", max_len=sequence_len)]
    other = [Feature("movie_id", "categorical", vocabulary=vocab("movie_id")),
             Feature("genres", "multi_valued", vocabulary=tuple(GENRES), max_len=6),
             Feature("release_year", "numeric"),
             Feature("genre_affinity", "numeric"),
             Feature("day_of_week", "categorical", vocabulary=tuple(str(d) for d in range(7))),
             Feature("hour", "numeric")]
    # a frame of load_tasks_frame(genre_tasks=True) adds the task definition user x main genre
    task_keys = {"user": "task", "user_x_genre": "task_genre"} if "task_genre" in train_df.columns else ()
    return FeatureSpec(task_key="task", timestamp="timestamp", label="label", meta_features=tuple(meta),
                       other_features=tuple(other), task_keys=task_keys).fit(train_df)


def mlp_meta_features(spec: FeatureSpec) -> tuple[Feature, ...]:
    return tuple(f for f in spec.meta_features if f.name != "user_id" and f.name not in SEQUENCE_FEATURES)


def load_tasks_frame(name: str = "ml-100k", path: str | None = None, genre_tasks: bool = False) -> pd.DataFrame:
    """`interactions` of a release, with the task key column `task` (= user id). `genre_tasks`: also
    `main_genre` (the movie's first listed genre) and the key column `task_genre` (user | main genre)
    of the second task definition "user_x_genre" (`movielens_spec` then declares both)."""
    df = interactions(*load_movielens(name, path))
    df = df.assign(task=df["user_id"].astype(str))
    if genre_tasks:
        main = df["genres"].astype(str).str.split("|").str[0].replace("", "unknown")
        df = df.assign(main_genre=main, task_genre=df["task"] + "|" + main)
    return df
