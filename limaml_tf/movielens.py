"""MovieLens (official GroupLens releases ML-100K and ML-1M) as LiMAML tasks.

Task = user; label = rating >= 4. Meta features: the user's demographics plus *causal*
history features computed only from that user's strictly earlier interactions (ties on the
timestamp count as "not earlier"). Other features: the movie, its genres, release year, the
user's affinity for the movie's genres so far, and the context (day of week, hour).

    ratings, users, movies = load_movielens("ml-100k", path)   # or path=None: download
    df = interactions(ratings, users, movies)
    train, valid, test = time_split(df, spec_placeholder)       # see `movielens_spec`

ML-1M is read from either layout of its directory (`load_movielens`): the official one
(ratings.dat with timestamps) or an *ordered* copy (ratings.csv.gz with each rating's rank in its
user's history and NO timestamps). A frame of the ordered copy has no clock (`has_clock` is
False): its `timestamp` is a synthetic per-user rank, not time, so the time-derived features
(`CLOCK_FEATURES`, `seq_log_gap`) are left out and a global time split is refused.
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
from limaml_tf.raw_data import FeatureError
from limaml_tf.spec import Feature, FeatureSpec

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
# ML-1M's ordered layout: ratings in per-user order (user_id,movie_id,rating,order), no timestamps
ORDERED_RATINGS = "ratings.csv.gz"
CLOCK_FEATURES = ("hist_days", "day_of_week", "hour")  # derived from wall-clock time: absent without a clock
NO_CLOCK = ("this copy has no timestamps: use --protocol few-shot or user-cold, or the official ml-1m archive "
            f"with timestamps (ratings.dat, {URLS['ml-1m']})")


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


def _layout(path: str, name: str) -> str:
    """"official", or "ordered" for an ML-1M directory with ratings.csv.gz instead of ratings.dat
    (the official ratings.dat wins when both are there: it has timestamps)."""
    files = list(FILES[name])
    layout = "official"
    if name == "ml-1m" and not os.path.isfile(os.path.join(path, files[0])) \
            and os.path.isfile(os.path.join(path, ORDERED_RATINGS)):
        files[0], layout = ORDERED_RATINGS, "ordered"
    missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
    if missing:
        alt = f" (or {ORDERED_RATINGS} of an ordered copy)" if name == "ml-1m" and layout == "official" else ""
        raise FeatureError(f"{name}: missing file(s) {missing}{alt} in {path!r}: pass the directory of the unzipped "
                           f"official archive ({URLS[name]}), or no path to download it")
    return layout


def _read_ordered(r_file: str) -> pd.DataFrame:
    """ratings.csv.gz of the ordered ML-1M layout; see `load_movielens`."""
    ratings = pd.read_csv(r_file, dtype={"user_id": str, "movie_id": str}, keep_default_na=False)
    missing = sorted({"user_id", "movie_id", "rating", "order"} - set(ratings.columns))
    if missing:
        raise FeatureError(f"{r_file}: missing column(s) {missing}; the ordered layout is "
                           "user_id,movie_id,rating,order (order = the rating's rank in its user's history)")
    if not pd.api.types.is_integer_dtype(ratings["order"]) or ratings.duplicated(["user_id", "order"]).any():
        raise FeatureError(f"{r_file}: `order` must be integers, unique within each user (the rank in the "
                           "user's history)")
    ratings = ratings.sort_values(["user_id", "order"], kind="stable")
    later = ratings.duplicated(["user_id", "movie_id"], keep="first")  # a (user, movie) pair rated twice
    ratings = ratings[~later].sort_index().reset_index(drop=True)
    ratings["timestamp"] = ratings["order"].astype(np.int64)  # synthetic: a per-user rank, NOT seconds
    ratings.attrs.update(has_clock=False, dropped_duplicates=int(later.sum()))
    return ratings[["user_id", "movie_id", "rating", "timestamp", "order"]]


def has_clock(df: pd.DataFrame) -> bool:
    """Whether `df` (ratings of `load_movielens` or rows of `interactions`) has real timestamps. False
    for the ordered ML-1M layout, whose `timestamp` only orders each user's ratings. Read from
    `df.attrs["has_clock"]`; a frame that lost its attrs has a clock when it has the clock features."""
    return bool(df.attrs.get("has_clock", "hour" in df.columns))


def require_clock(df: pd.DataFrame, what: str = "a global time split") -> None:
    """Raises the ValueError of a frame without timestamps (see `has_clock`) for `what`."""
    if not has_clock(df):
        raise ValueError(f"{what} needs timestamps, but {NO_CLOCK}")


def _read(path: str, sep: str, names: list[str]) -> pd.DataFrame:
    # The official files are latin-1 (titles such as "Misérables"); "::" needs the python engine.
    return pd.read_csv(path, sep=sep, names=names, header=None, encoding="latin-1", engine="python",
                       dtype=str, keep_default_na=False)


def _age_bucket(age: pd.Series) -> pd.Series:
    return pd.Series(np.asarray(AGE_BUCKETS)[np.searchsorted(AGE_BUCKETS, age.to_numpy(), side="right") - 1],
                     index=age.index)


def load_movielens(name: str = "ml-100k", path: str | None = None, cache_dir: str | None = None):
    """Reads a MovieLens release into three normalized frames.

    ratings: user_id, movie_id (str), rating (int), timestamp (int seconds)
    users:   user_id, gender, age (ML-1M bucket code), occupation (name), zip
    movies:  movie_id, title, genres ("A|B"), release_year (float, NaN when unknown)

    ML-1M's directory may hold either layout (the official ratings.dat wins when both are there):

    * official: ratings.dat (`::`, with timestamps), users.dat, movies.dat;
    * ordered: ratings.csv.gz (`user_id,movie_id,rating,order`, `order` = the rating's rank in its
      user's history, oldest first; NO timestamps) with the official users.dat and movies.dat.
      **Its `timestamp` column is synthetic: `timestamp = order`, a strictly increasing per-user
      clock that orders a user's ratings and means nothing across users nor as seconds.** The
      frame is marked `ratings.attrs["has_clock"] = False` (`has_clock`): `interactions` then
      computes no time-derived feature (`CLOCK_FEATURES`: hist_days, day_of_week, hour; nor the
      sequences' `seq_log_gap`), `movielens_spec` leaves them out, and a global time split is
      refused. The column `order` is kept as read. A (user, movie) pair rated twice keeps its
      earlier rating only (the later one, by `order`, is dropped; `ratings.attrs["dropped_duplicates"]`
      counts them): the copy this targets has four such pairs, artefacts of its rebuild. The official
      files are read as they are (`attrs["has_clock"] = True`).
    """
    if name not in FILES:
        raise ValueError(f"unknown MovieLens release {name!r}; known: {sorted(FILES)}")
    path = fetch(name, cache_dir) if path is None else path
    layout = _layout(path, name)
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
        ratings = (_read(r_file, "::", ["user_id", "movie_id", "rating", "timestamp"]) if layout == "official"
                   else _read_ordered(os.path.join(path, ORDERED_RATINGS)))
        users = _read(u_file, "::", ["user_id", "gender", "age", "occupation", "zip"])
        users["age"] = users["age"].astype(int)
        users["occupation"] = [ML1M_OCCUPATIONS[int(c)] if c.isdigit() and int(c) < len(ML1M_OCCUPATIONS)
                               else "other" for c in users["occupation"]]
        movies = _read(m_file, "::", ["movie_id", "title", "genres"])
        year = movies["title"].str.extract(r"\((\d{4})\)\s*$")[0]
        movies["release_year"] = pd.to_numeric(year, errors="coerce").astype(float)
    ratings["rating"] = ratings["rating"].astype(int)
    ratings["timestamp"] = ratings["timestamp"].astype(np.int64)
    ratings.attrs.setdefault("has_clock", True)
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
    (user, time). History features use only the user's strictly earlier ratings. Ratings without a
    clock (`has_clock`, the ordered ML-1M layout: `timestamp` is the per-user rank) give no
    `CLOCK_FEATURES` columns and a frame marked `attrs["has_clock"] = False`."""
    clock = bool(ratings.attrs.get("has_clock", True))
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
    first_time = df.groupby("user_id", sort=False)["timestamp"].transform("min").to_numpy() if clock else None
    _set_history(df, past, first_time, onehot)
    if clock:
        when = pd.to_datetime(df["timestamp"], unit="s", utc=True)
        df["day_of_week"] = when.dt.dayofweek.astype(str)
        df["hour"] = when.dt.hour.astype(np.float32)
    df["zip_prefix"] = df["zip"].astype(str).str[:2]
    df["age"] = df["age"].astype(str)
    df["release_year"] = df["release_year"].fillna(df["release_year"].median()).fillna(1990.0).astype(np.float32)
    df.attrs = {**ratings.attrs, "has_clock": clock}  # and the ordered layout's `dropped_duplicates`
    return df


GENRE_NAMES = tuple(g for g in GENRES if g != "unknown")


def _genre_onehot(df: pd.DataFrame) -> np.ndarray:
    # one-hot of each distinct genres string, then gathered per row (get_dummies on 1M rows takes ~10 s)
    codes, distinct = pd.factorize(df["genres"].astype(str).to_numpy())
    dummies = pd.Series(distinct, dtype=object).str.get_dummies("|")
    return dummies.reindex(columns=list(GENRE_NAMES), fill_value=0).to_numpy(np.float64)[codes]


def _history_terms(df: pd.DataFrame, onehot: np.ndarray) -> np.ndarray:
    """Per row, what it adds to a later row's history: [1, label, rating, genre one-hot * label]."""
    pos = df["label"].to_numpy(np.float64)
    return np.column_stack([np.ones(len(df)), pos, df["rating"].to_numpy(np.float64), onehot * pos[:, None]])


def _set_history(df: pd.DataFrame, past: np.ndarray, first_time: np.ndarray | None, onehot: np.ndarray) -> None:
    """Writes the history features (and `genre_affinity`) of every row from its summed history terms;
    `hist_days` only with `first_time` (None: no clock)."""
    count, n_pos, rating_sum, genre_pos = past[:, 0], past[:, 1], past[:, 2], past[:, 3:]
    share = genre_pos / np.maximum(n_pos, 1.0)[:, None]
    df["hist_count"] = np.log1p(count).astype(np.float32)
    df["hist_pos_rate"] = ((n_pos + 1.0) / (count + 2.0)).astype(np.float32)  # Laplace-smoothed
    df["hist_mean_rating"] = ((rating_sum + 3.0 * 2) / (count + 2.0)).astype(np.float32)
    if first_time is not None:
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
    the user's first support rating (0 when the user has none or the row is earlier); a frame without
    a clock (`has_clock`) has none."""
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
    if not has_clock(df):
        _set_history(df, past, None, onehot)
        return df
    support_time = pd.Series(np.where(is_support, df["timestamp"].to_numpy(np.float64), np.inf))
    first = support_time.groupby(df["user_id"].to_numpy(), sort=False).transform("min").to_numpy()
    first = np.where(np.isfinite(first), first, df["timestamp"].to_numpy(np.float64))
    _set_history(df, past, first, onehot)
    return df


SEQUENCE_FEATURES = ("seq_movie", "seq_label", "seq_log_gap")  # the user's previous ratings (meta features)


def with_sequences(df: pd.DataFrame, max_len: int, is_support=None) -> pd.DataFrame:
    """`df` (rows of `interactions`, sorted by (user, time)) plus the user's previous `max_len` ratings,
    most recent first: `seq_movie` (movie ids), `seq_label` (their labels), `seq_log_gap` (log1p days
    before this rating; not for a frame without a clock, `has_clock`). Strictly earlier ratings only;
    with `is_support`, support ratings only, as `support_history` (`limaml_tf.sequences.add_sequences`)."""
    return add_sequences(df, "user_id", "timestamp", {"seq_movie": "movie_id"}, max_len, label="label",
                         label_name="seq_label", gap_name="seq_log_gap" if has_clock(df) else None,
                         is_support=is_support)


def _slug(genre: str) -> str:
    return genre.lower().replace("'", "").replace("-", "_")


def movielens_spec(train_df: pd.DataFrame, user_id_feature: bool = True, sequence_len: int = 0,
                   per_user: bool = False) -> FeatureSpec:
    """The FeatureSpec for `interactions` frames. Vocabularies (and numeric stats) come from the
    training period only, so a user or movie first seen later maps to id 0 (unknown).
    `user_id` (a meta feature with the training users as vocabulary) is read only by ID meta
    blocks; MLP meta blocks are given `mlp_meta_features(spec)`. `sequence_len` > 0 adds the
    sequence meta features of `with_sequences` (read only by a `TransformerMetaBlock`).

    A frame without a clock (`has_clock`: the ordered ML-1M layout) gets no time-derived feature
    (`CLOCK_FEATURES`, `seq_log_gap`), and only for `per_user=True` (the rows of a per-user split:
    few-shot, user-cold): otherwise the rows came from a global time split on a synthetic clock,
    and this raises the ValueError of `require_clock`."""
    clock = has_clock(train_df)
    if not clock and not per_user:
        require_clock(train_df, "a global time split (--protocol time, the paper's tables, `limaml train`)")
    genre_names = [g for g in GENRES if g != "unknown"]
    vocab = lambda col: tuple(sorted(train_df[col].astype(str).unique()))  # noqa: E731
    meta = [Feature("gender", "categorical", vocabulary=("F", "M")),
            Feature("age", "categorical", vocabulary=tuple(str(a) for a in AGE_BUCKETS)),
            Feature("occupation", "categorical", vocabulary=vocab("occupation")),
            Feature("zip_prefix", "categorical", num_bins=128),
            *(Feature(n, "numeric") for n in HISTORY_FEATURES if clock or n not in CLOCK_FEATURES),
            *(Feature(f"hist_genre_{_slug(g)}", "numeric") for g in genre_names)]
    if user_id_feature:
        meta.append(Feature("user_id", "categorical", vocabulary=vocab("user_id")))
    if sequence_len:
        meta += [Feature("seq_movie", "sequence", vocabulary=vocab("movie_id"), max_len=sequence_len),
                 Feature("seq_label", "numeric_sequence", max_len=sequence_len),
                 *([Feature("seq_log_gap", "numeric_sequence", max_len=sequence_len)] if clock else [])]
    other = [Feature("movie_id", "categorical", vocabulary=vocab("movie_id")),
             Feature("genres", "multi_valued", vocabulary=tuple(GENRES), max_len=6),
             Feature("release_year", "numeric"),
             Feature("genre_affinity", "numeric"),
             *([Feature("day_of_week", "categorical", vocabulary=tuple(str(d) for d in range(7))),
                Feature("hour", "numeric")] if clock else [])]
    # a frame of load_tasks_frame(genre_tasks=True) adds the task definition user x main genre
    task_keys = {"user": "task", "user_x_genre": "task_genre"} if "task_genre" in train_df.columns else ()
    return FeatureSpec(task_key="task", timestamp="timestamp", label="label", meta_features=tuple(meta),
                       other_features=tuple(other), task_keys=task_keys).fit(train_df)


def mlp_meta_features(spec: FeatureSpec) -> tuple[Feature, ...]:
    return tuple(f for f in spec.meta_features if f.name != "user_id" and f.name not in SEQUENCE_FEATURES)


def load_tasks_frame(name: str = "ml-100k", path: str | None = None, genre_tasks: bool = False) -> pd.DataFrame:
    """`interactions` of a release, with the task key column `task` (= user id). `genre_tasks`: also
    `main_genre` (the movie's first listed genre) and the key column `task_genre` (user | main genre)
    of the second task definition "user_x_genre" (`movielens_spec` then declares both). The ordered
    ML-1M layout gives a frame without a clock (`has_clock`), for the per-user protocols only."""
    df = interactions(*load_movielens(name, path))
    df = df.assign(task=df["user_id"].astype(str))
    if genre_tasks:
        main = df["genres"].astype(str).str.split("|").str[0].replace("", "unknown")
        df = df.assign(main_genre=main, task_genre=df["task"] + "|" + main)
    return df
