"""The evaluation protocols: who trains, who tunes, who is scored, and on which support.

Every protocol returns a `Split`: the training TaskSet, one validation and one test TaskSet per
*setting* (a support size K for few-shot, one setting otherwise), the fitted FeatureSpec and a
summary. Vocabularies and numeric statistics come from the training rows only.

* ``time`` (paper §6): train / validation / test by global timestamp quantiles. Training tasks are
  the training period's users (75/25 support/query by time). Test: support = the user's
  validation-period ratings, query = its test-period ratings (today's `reproduce`). Validation
  (for choosing settings): support = the user's most recent training-period ratings, query = its
  validation-period ratings. History features stay causal (a streaming service's view).
* ``few-shot``: users split 80/10/10 at random by seed into train / validation / test users. Every
  user's ratings sorted by time; validation and test users: support = first K ratings, query = the
  next <= `max_query` ratings strictly later than the last support rating (ratings tied with it
  are dropped). The validation and test users scored are the same at every K: those with a query
  at the largest K. Training users: the paper's chronological 75/25 tasks (most recent
  `max_train_samples` kept).
* ``user-cold`` (MeLU, RecBole-MetaRec): users with 13-100 ratings, split 80/10/10 by seed; per
  user (training users too), query = 10 random ratings, support = the rest.

In the per-user protocols the history features of every task are recomputed from its support
rows only (`limaml_tf.movielens.support_history`): a query rating never sees another query
rating's label, so the K support ratings are all a model knows about an evaluation user. The
sequence features (`limaml_tf.movielens.with_sequences`, only when a model reads them:
`sequence_len(cfg)` > 0) obey the same rule. The ID
meta block's vocabulary is the training users, so validation and test users are unseen.

A frame without a clock (`limaml_tf.movielens.has_clock`: the ordered ML-1M copy, whose `timestamp`
is each user's rank of the rating) serves few-shot and user-cold, which only need each user's
order ("time" below is then that rank; its spec has no time-derived feature); ``time`` refuses it
with a ValueError naming the fix.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from limaml_tf.spec import FeatureSpec
from limaml_tf.movielens import movielens_spec, require_clock, support_history, with_sequences
from limaml_tf.tasks import TaskSet, paired_tasks, split_tasks, time_split

PROTOCOLS = ("time", "few-shot", "user-cold")


@dataclasses.dataclass
class Split:
    protocol: str
    spec: FeatureSpec
    train: TaskSet
    validation: dict[str, TaskSet]  # setting name (e.g. "K=5") -> validation-user tasks
    test: dict[str, TaskSet]
    summary: dict
    unseen: set = dataclasses.field(default_factory=set)  # test users never in training (time protocol)

    @property
    def settings(self) -> list[str]:
        return list(self.test)


def setting_name(protocol: str, k: int | None = None) -> str:
    return {"few-shot": f"K={k}", "user-cold": "all-but-10", "time": "validation-period"}[protocol]


def split_users(users, seed: int, fractions=(0.8, 0.1, 0.1)):
    """Sorted unique users permuted by `seed`, cut into train / validation / test (80/10/10)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    users = np.array(sorted(set(map(str, users))), dtype=object)
    perm = users[np.random.default_rng(seed).permutation(len(users))]
    n_train = int(round(fractions[0] * len(users)))
    n_val = int(round(fractions[1] * len(users)))
    if n_train == 0 or n_val == 0 or n_train + n_val >= len(users):
        raise ValueError(f"{len(users)} users are too few for a {fractions} user split")
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


def _positions(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row (frame sorted by (user, time)): its index within the user, and the user's row count."""
    g = df.groupby("task", sort=False)
    return g.cumcount().to_numpy(), g["task"].transform("size").to_numpy()


def sequence_len(cfg) -> int:
    """The length of the sequence features the split carries: 0 (none) unless a model reads them."""
    return int(getattr(cfg, "split_sequence_len", 0) or 0)


def _tasks(rows: pd.DataFrame, is_support: np.ndarray, spec_or_none, max_support: int, max_query: int,
           recompute: bool = True, seq_len: int = 0):
    """History (and sequences) recomputed from the support rows, then padded support/query tasks."""
    rows = support_history(rows, is_support) if recompute else rows.reset_index(drop=True)
    if seq_len:
        rows = with_sequences(rows, seq_len, is_support if recompute else None)
    spec = spec_or_none or movielens_spec(rows, sequence_len=seq_len, per_user=True)
    tasks = paired_tasks(rows[is_support], rows[~is_support], spec, max_support=max_support, max_query=max_query)
    return tasks, spec, rows


def chronological(rows: pd.DataFrame, cap: int | None, support_fraction: float = 0.75, min_samples: int = 2):
    """Training tasks of the paper: per user the most recent `cap` ratings, first 75 % support."""
    pos, n = _positions(rows)
    keep = (n - pos <= cap) if cap else np.ones(len(rows), bool)
    rows = rows[keep].reset_index(drop=True)
    pos, n = _positions(rows)
    rows, pos, n = rows[n >= min_samples].reset_index(drop=True), pos[n >= min_samples], n[n >= min_samples]
    return rows, pos < np.maximum(np.floor(n * support_fraction).astype(int), 1)


def first_k(rows: pd.DataFrame, k: int, max_query: int):
    """Evaluation tasks of few-shot: support = first k ratings, query = the next <= max_query ratings
    strictly later than the last support rating. Users left with no query are dropped."""
    pos, _ = _positions(rows)
    is_support = pos < k
    t = rows["timestamp"].to_numpy()
    last = pd.Series(np.where(is_support, t, -np.inf)).groupby(rows["task"].to_numpy(), sort=False).transform("max")
    later = (~is_support) & (t > last.to_numpy())
    q_pos = pd.Series(later).groupby(rows["task"].to_numpy(), sort=False).cumsum().to_numpy()
    is_query = later & (q_pos <= max_query)
    has_query = pd.Series(is_query).groupby(rows["task"].to_numpy(), sort=False).transform("any").to_numpy()
    keep = (is_support | is_query) & has_query
    return rows[keep].reset_index(drop=True), is_support[keep]


def training_users(users, cfg):
    """The first `cfg.train_user_fraction` of the (seed-permuted) training users: fewer training tasks, the
    same validation and test users (the map's "number of training users" axis)."""
    fraction = float(getattr(cfg, "train_user_fraction", 1.0))
    return users[:max(int(round(fraction * len(users))), 1)]


def first_k_episodes(rows: pd.DataFrame, support_sizes, cap: int, seed: int):
    """Training tasks shaped like the few-shot evaluation ("train as you test"): per user, support = its
    first k ratings, k drawn (by seed) from `support_sizes`, query = the next ratings up to `cap` in all."""
    users = rows["task"].unique()
    k_of = dict(zip(users, np.random.default_rng(seed).choice(np.asarray(support_sizes), len(users))))
    pos, n = _positions(rows)
    k = rows["task"].map(k_of).to_numpy()
    keep = (pos < cap) & (n > k)  # users with a query
    return rows[keep].reset_index(drop=True), (pos < k)[keep]


def random_query(rows: pd.DataFrame, n_query: int, seed: int):
    """user-cold tasks: per user `n_query` ratings drawn at random (by seed) are the query."""
    draw = np.random.default_rng(seed).random(len(rows))
    rank = pd.Series(draw).groupby(rows["task"].to_numpy(), sort=False).rank(method="first").to_numpy()
    return rows, rank > n_query


def _user_rows(frame: pd.DataFrame, users) -> pd.DataFrame:
    return frame[frame["task"].isin(set(users))].reset_index(drop=True)


def few_shot(frame: pd.DataFrame, seed: int, cfg) -> Split:
    train_users, val_users, test_users = split_users(frame["task"].unique(), seed, cfg.user_fractions)
    train_users = training_users(train_users, cfg)
    k_max = max(cfg.support_sizes)
    if getattr(cfg, "train_episodes", "recent") == "first-k":
        cap = cfg.max_train_samples or int(frame.groupby("task").size().max())
        rows, is_support = first_k_episodes(_user_rows(frame, train_users), cfg.support_sizes, cap, seed)
        s_len, q_len = k_max, cap - min(cfg.support_sizes)
    else:
        rows, is_support = chronological(_user_rows(frame, train_users), cfg.max_train_samples)
        cap = cfg.max_train_samples or int(_positions(rows)[1].max())
        s_len = max(int(np.floor(cap * 0.75)), 1)
        q_len = cap - s_len
    train, spec, train_rows = _tasks(rows, is_support, None, s_len, q_len, seq_len=sequence_len(cfg))
    # the same users at every K: those with a query at the largest K (more than K_max ratings)
    val_users, test_users = (first_k(_user_rows(frame, u), k_max, cfg.max_query)[0]["task"].unique()
                             for u in (val_users, test_users))
    validation, test, summary = {}, {}, _user_summary(train_rows, train, val_users, test_users)
    for k in cfg.support_sizes:
        name = setting_name("few-shot", k)
        for users, out in ((val_users, validation), (test_users, test)):
            rows, is_support = first_k(_user_rows(frame, users), k, cfg.max_query)
            out[name] = _tasks(rows, is_support, spec, k_max, cfg.max_query, seq_len=sequence_len(cfg))[0]
    return Split("few-shot", spec, train, validation, test, summary)


def user_cold(frame: pd.DataFrame, seed: int, cfg) -> Split:
    counts = frame.groupby("task")["task"].transform("size")
    lo, hi = cfg.user_cold_ratings
    frame = frame[(counts >= lo) & (counts <= hi)].reset_index(drop=True)
    train_users, val_users, test_users = split_users(frame["task"].unique(), seed, cfg.user_fractions)
    train_users = training_users(train_users, cfg)
    q, s_max = cfg.user_cold_query, hi - cfg.user_cold_query
    L = sequence_len(cfg)
    train, spec, train_rows = _tasks(*random_query(_user_rows(frame, train_users), q, seed), None, s_max, q, seq_len=L)
    name = setting_name("user-cold")
    validation = {name: _tasks(*random_query(_user_rows(frame, val_users), q, seed + 1), spec, s_max, q, seq_len=L)[0]}
    test = {name: _tasks(*random_query(_user_rows(frame, test_users), q, seed + 2), spec, s_max, q, seq_len=L)[0]}
    summary = {"users with 13-100 ratings" if (lo, hi) == (13, 100) else f"users with {lo}-{hi} ratings":
               frame["task"].nunique(), **_user_summary(train_rows, train, val_users, test_users)}
    return Split("user-cold", spec, train, validation, test, summary)


def time_protocol(frame: pd.DataFrame, seed: int, cfg) -> Split:
    require_clock(frame, "--protocol time (a global time split)")
    stub = FeatureSpec("task", "timestamp", "label", (), ())
    if sequence_len(cfg):  # causal over all of a user's ratings, as the history features of this protocol
        frame = with_sequences(frame, sequence_len(cfg))
    train_df, valid_df, test_df = time_split(frame, stub, cfg.quantiles)
    spec = movielens_spec(train_df, sequence_len=sequence_len(cfg))
    train = split_tasks(train_df, spec, max_samples_per_task=cfg.max_train_samples)
    name = setting_name("time")
    validation = {name: paired_tasks(train_df, valid_df, spec, cfg.time_max_support, cfg.time_max_query)}
    test = {name: paired_tasks(valid_df, test_df, spec, cfg.time_max_support, cfg.time_max_query)}
    unseen = set(test[name].task_keys) - set(train.task_keys)
    summary = {"interactions": len(frame), "train": len(train_df), "validation": len(valid_df),
               "test": len(test_df), "train_users": len(train), "validation_users": len(validation[name]),
               "test_users": len(test[name]), "unseen_test_users": len(unseen),
               "test_users_with_support": int((test[name].arrays["support_mask"].sum(1) > 0).sum())}
    return Split("time", spec, train, validation, test, summary, unseen)


def _user_summary(train_rows, train, val_users, test_users) -> dict:
    return {"train_users": len(train), "validation_users": len(val_users), "test_users": len(test_users),
            "train_ratings": len(train_rows), "train_positive_rate": round(float(train_rows["label"].mean()), 3)}


def make_split(protocol: str, frame: pd.DataFrame, seed: int, cfg) -> Split:
    """The `protocol`'s split of `frame` (`limaml_tf.movielens.load_tasks_frame`) for one seed."""
    builders = {"time": time_protocol, "few-shot": few_shot, "user-cold": user_cold}
    if protocol not in builders:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    return builders[protocol](frame, seed, cfg)
