"""Samples grouped into tasks, split by time, padded to fixed-shape task batches.

A *task bundle* is a dict of fixed-shape arrays for T tasks:

  task_key        [T]            string
  support         {feature: [T, S, ...]}   raw feature values
  support_label   [T, S]         float32
  support_mask    [T, S]         float32, 1 = real sample, 0 = padding
  support_time    [T, S]         float64 (seconds), for leakage checks / "latest"
  query, query_label, query_mask, query_time    the same with Q slots

Within a task, samples are in time order; padded slots repeat the task's last
real sample (so every slot holds valid feature values) and carry mask 0.

With several task definitions (`FeatureSpec.task_keys`, e.g. user and user x genre) the
primary definition's tasks (spec.task_key) drive the bundle, and for every other
definition d the bundle adds (keyed by d; M sub-task slots, R support slots per sub-task):

  support_keys[d]           [T, S]     string, d's task key of each support slot (not fed to models)
  query_keys[d]             [T, Q]     string, the same for the query slots
  subtask_key[d]            [T, M]     string, the d-tasks of the task's query samples ("" = padding)
  subtask_query_index[d]    [T, Q]     int32, each query slot's sub-task slot (0 for padding)
  subtask_support_index[d]  [T, M, R]  int32, the task's support slots that form the sub-task's support set
  subtask_support_mask[d]   [T, M, R]  float32, 1 = real

A sub-task's support set is the primary task's support samples that share its key: all earlier
than every query sample, as the primary task's. A query sample whose d-task has no support sample
gets an empty support set (scored un-adapted: the cold start of that definition).

No Keras: the Beam pipelines and the TFRecord reader import this module.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from limaml_tf.api_export import limaml_export
from limaml_tf.checks import positive_int
from limaml_tf.raw_data import FeatureError
from limaml_tf.spec import FeatureSpec

if TYPE_CHECKING:  # TensorFlow is imported where it is used: Beam drivers read tasks without it
    import tensorflow as tf

SETS = ("support", "query")
SUBTASK_ARRAYS = ("subtask_key", "subtask_query_index", "subtask_support_index", "subtask_support_mask")


def recent_order(codes: np.ndarray, t: np.ndarray, max_samples_per_task: int | None) -> np.ndarray:
    """Row positions sorted by (task code, time, row), keeping each task's last `max_samples_per_task`
    (None: all): one lexsort and offsets from the per-task counts, no per-task work."""
    rows = np.lexsort((np.arange(len(codes)), t, codes))
    if max_samples_per_task:
        task = codes[rows]
        ends = np.cumsum(np.bincount(task))
        rows = rows[ends[task] - np.arange(len(task)) <= max_samples_per_task]
    return rows


def _recent_rows(df: pd.DataFrame, spec: FeatureSpec, max_samples_per_task: int | None):
    """Each task's most recent `max_samples_per_task` rows (None: all), sorted by (task, time), ties in
    row order: (their row positions, their task index, the task keys sorted, their times in seconds).
    Integer codes of the keys in the order of the strings (a categorical key column: its codes, no
    string per row), then `recent_order`."""
    ts = df[spec.timestamp]
    if pd.api.types.is_datetime64_any_dtype(ts):
        ts = ts.astype("int64") / 1e9
    key = df[spec.task_key]
    if isinstance(key.dtype, pd.CategoricalDtype) and key.cat.categories.dtype == object:
        key = key.cat.reorder_categories(sorted(key.cat.categories))  # factorize(sort=True): category order
    else:
        key = key.astype(str)
    codes, keys = pd.factorize(key, sort=True)
    t = ts.to_numpy(dtype="float64")
    rows = recent_order(codes, t, max_samples_per_task)
    return rows, codes[rows], np.asarray(keys, dtype=object), t[rows]


def keep_most_recent(df: pd.DataFrame, spec: FeatureSpec, max_samples_per_task: int | None) -> pd.DataFrame:
    """Sorted by (task, time); keeps each task's most recent `max_samples_per_task` samples (None: all).
    The task key becomes str; `_t` (time in seconds) and `_row` (position in `df`) are added."""
    max_samples_per_task = positive_int("max_samples_per_task", max_samples_per_task, allow_none=True)
    rows, task, keys, t = _recent_rows(df, spec, max_samples_per_task)
    out = df.iloc[rows].reset_index(drop=True)
    out[spec.task_key] = keys[task]
    return out.assign(_t=t, _row=rows)


@limaml_export
@dataclasses.dataclass
class TaskSet:
    """All tasks of a dataset as padded numpy arrays (see module docstring)."""

    spec: FeatureSpec
    arrays: dict

    def __len__(self) -> int:
        return len(self.arrays["task_key"])

    @property
    def task_keys(self) -> np.ndarray:
        return self.arrays["task_key"]

    @property
    def support_length(self) -> int:
        return self.arrays["support_mask"].shape[1]

    @property
    def query_length(self) -> int:
        return self.arrays["query_mask"].shape[1]

    def subset(self, index) -> "TaskSet":
        return TaskSet(self.spec, _map_arrays(self.arrays, lambda a: a[index]))

    def batches(self, tasks_per_batch: int, pad: bool = True):
        """Yields bundles of `tasks_per_batch` tasks in order (last one padded with empty tasks)."""
        tasks_per_batch = positive_int("tasks_per_batch", tasks_per_batch)
        for start in range(0, len(self), tasks_per_batch):
            yield pad_task_count(self.subset(slice(start, start + tasks_per_batch)).arrays,
                                 tasks_per_batch if pad else None)

    def dataset(self, tasks_per_batch: int, shuffle: bool = True, seed: int = 0,
                repeat: bool = False) -> tf.data.Dataset:
        """tf.data pipeline of fixed-shape task batches; the last batch is padded with empty tasks."""
        import tensorflow as tf

        tasks_per_batch = positive_int("tasks_per_batch", tasks_per_batch)
        arrays = {k: v for k, v in self.arrays.items() if not k.endswith(("_time", "_keys"))}
        ds = tf.data.Dataset.from_tensor_slices(arrays)
        if shuffle:
            ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        ds = ds.batch(tasks_per_batch).map(lambda b: pad_task_count(b, tasks_per_batch),
                                            num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)


def _map_arrays(arrays: dict, fn):
    return {k: ({n: fn(a) for n, a in v.items()} if isinstance(v, dict) else fn(v)) for k, v in arrays.items()}


def pad_task_count(bundle: dict, tasks_per_batch: int | None) -> dict:
    """Pads the task axis to `tasks_per_batch` with empty tasks (all-zero masks). Works on numpy or tf."""
    if tasks_per_batch is None:
        return bundle

    def pad(a):
        if isinstance(a, np.ndarray):
            n = tasks_per_batch - a.shape[0]
            if n <= 0:
                return a
            fill = "" if a.dtype == object else 0
            return np.concatenate([a, np.full((n,) + a.shape[1:], fill, dtype=a.dtype)])
        import tensorflow as tf

        n = tasks_per_batch - tf.shape(a)[0]
        padded = tf.pad(a, [[0, n]] + [[0, 0]] * (a.shape.rank - 1))
        return tf.ensure_shape(padded, [tasks_per_batch] + a.shape[1:])

    return _map_arrays(bundle, pad)


def _pad_sets(spec: FeatureSpec, keys: np.ndarray, sets: dict[str, pd.DataFrame], lengths: dict[str, int],
              with_label: bool = True) -> TaskSet:
    """Scatters sorted per-set sample rows into [n_tasks, length] slots, edge-padding each task."""
    key_index = {k: i for i, k in enumerate(keys)}
    arrays = {"task_key": keys.astype(object)}
    for name, df in sets.items():
        n_slots = lengths[name]
        task = df[spec.task_key].map(key_index).to_numpy()
        pos = df.groupby(spec.task_key, sort=False).cumcount().to_numpy()
        if len(pos) and pos.max() >= n_slots:
            raise ValueError(f"{name}: a task has {pos.max() + 1} samples but only {n_slots} slots")
        counts = np.bincount(task, minlength=len(keys)) if len(task) else np.zeros(len(keys), int)
        # Slot j of task t takes row first[t] + min(j, count-1): edge padding with the last real sample.
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(n_slots)[None, :]
        src = first[:, None] + np.minimum(slot, np.maximum(counts[:, None] - 1, 0))
        has_rows = counts[:, None] > 0
        src = np.where(has_rows, src, 0)
        mask = (slot < counts[:, None]).astype(np.float32)

        def gather(col: np.ndarray, fill):
            if len(col) == 0:
                return np.full((len(keys), n_slots) + col.shape[1:], fill, dtype=col.dtype)
            out = col[src]
            empty = ~has_rows.reshape((len(keys), 1) + (1,) * (col.ndim - 1))
            return np.where(np.broadcast_to(empty, out.shape), np.array(fill, dtype=col.dtype), out)

        raw = spec.raw_arrays(df)
        arrays[name] = {f: gather(raw[f], "" if raw[f].dtype == object else 0) for f in raw}
        if with_label:
            arrays[f"{name}_label"] = gather(df[spec.label].to_numpy(np.float32), 0).astype(np.float32)
        arrays[f"{name}_mask"] = mask
        arrays[f"{name}_time"] = gather(df["_t"].to_numpy(np.float64), 0.0)
        others = {d: c for d, c in spec.definitions.items() if c != spec.task_key}
        if others:
            arrays[f"{name}_keys"] = {d: gather(df[c].astype(str).to_numpy(dtype=object), "")
                                      for d, c in others.items()}
    for d in arrays.get("query_keys", {}):
        sub = subtask_arrays(arrays["support_keys"][d], arrays["support_mask"], arrays["query_keys"][d],
                             arrays["query_mask"])
        for name, value in sub.items():
            arrays.setdefault(name, {})[d] = value
    return TaskSet(spec, arrays)


def subtask_arrays(support_keys, support_mask, query_keys, query_mask) -> dict:
    """One definition's sub-tasks of a bundle (module docstring) from each slot's key of that definition:
    the distinct keys of a task's real query samples (in order of first appearance) and, per key, the
    task's real support slots with that key."""
    n_tasks = len(query_mask)
    t_q, slot_q = np.nonzero(query_mask > 0)
    q = pd.DataFrame({"t": t_q, "slot": slot_q, "key": query_keys[t_q, slot_q]})
    subtasks = q.drop_duplicates(["t", "key"])[["t", "key"]]
    subtasks = subtasks.assign(m=subtasks.groupby("t").cumcount().to_numpy())
    q = q.merge(subtasks, on=["t", "key"], how="left")
    t_s, slot_s = np.nonzero(support_mask > 0)
    s = pd.DataFrame({"t": t_s, "slot": slot_s, "key": support_keys[t_s, slot_s]}).merge(subtasks, on=["t", "key"])
    s = s.assign(r=s.groupby(["t", "m"]).cumcount().to_numpy())
    n_sub = max(int(subtasks["m"].max()) + 1 if len(subtasks) else 1, 1)
    n_support = max(int(s["r"].max()) + 1 if len(s) else 1, 1)
    key = np.full((n_tasks, n_sub), "", dtype=object)
    key[subtasks["t"], subtasks["m"]] = subtasks["key"].to_numpy()
    query_index = np.zeros(query_mask.shape, np.int32)
    query_index[q["t"], q["slot"]] = q["m"].to_numpy()
    support_index = np.zeros((n_tasks, n_sub, n_support), np.int32)
    support_index[s["t"], s["m"], s["r"]] = s["slot"].to_numpy()
    support_mask_out = np.zeros((n_tasks, n_sub, n_support), np.float32)
    support_mask_out[s["t"], s["m"], s["r"]] = 1.0
    return {"subtask_key": key, "subtask_query_index": query_index, "subtask_support_index": support_index,
            "subtask_support_mask": support_mask_out}


def recent_tasks(df: pd.DataFrame, spec: FeatureSpec, max_samples_per_task: int) -> TaskSet:
    """Tasks for adaptation (Algorithm 2b): per task, its most recent `max_samples_per_task` samples in
    time order as the support set (no query set); tasks sorted by key. Rows are used as given (check
    them first: `FeatureSpec.validate` or the pipelines' row checks). Vectorized: the kept rows are
    gathered once, and every [tasks, N] array is one fancy-index of them (slot j of a task holds its
    kept row min(j, kept - 1): padded slots repeat the last real sample)."""
    n = positive_int("max_samples_per_task", max_samples_per_task)
    rows, task, keys, t = _recent_rows(df, spec, n)
    kept = np.bincount(task, minlength=len(keys))
    slot = np.arange(n)
    src = (np.cumsum(kept) - kept)[:, None] + np.minimum(slot, np.maximum(kept - 1, 0)[:, None])
    picked = pd.DataFrame({c: df[c].array.take(rows) for c in [f.name for f in spec.features] + [spec.label]})
    return TaskSet(spec, {"task_key": keys, "support": {f: v[src] for f, v in spec.raw_arrays(picked).items()},
                          "support_label": picked[spec.label].to_numpy(np.float32)[src],
                          "support_mask": (slot < kept[:, None]).astype(np.float32), "support_time": t[src]})


@limaml_export
def split_tasks(df: pd.DataFrame, spec: FeatureSpec, max_samples_per_task: int = 100,
                support_fraction: float = 0.75, min_samples_per_task: int = 2) -> TaskSet:
    """Training tasks: per task, the most recent samples split chronologically into support / query.

    The first floor(n * support_fraction) samples of a task (n after the cap) are its support
    set, the rest its query set, so no query sample is earlier than a support sample.
    """
    if not 0 < support_fraction < 1:
        raise ValueError(f"support_fraction must be in (0, 1), got {support_fraction}: e.g. 0.75")
    positive_int("max_samples_per_task", max_samples_per_task, allow_none=True)
    positive_int("min_samples_per_task", min_samples_per_task)
    spec.validate(df)
    df = keep_most_recent(df, spec, max_samples_per_task)
    n = df.groupby(spec.task_key, sort=False)[spec.task_key].transform("size").to_numpy()
    df = df[n >= min_samples_per_task].reset_index(drop=True)
    if df.empty:
        raise FeatureError(f"no task has >= {min_samples_per_task} samples: lower min_samples_per_task "
                           "or provide more data")
    n = df.groupby(spec.task_key, sort=False)[spec.task_key].transform("size").to_numpy()
    pos = df.groupby(spec.task_key, sort=False).cumcount().to_numpy()
    n_support = np.maximum(np.floor(n * support_fraction).astype(int), 1)
    is_support = pos < n_support
    cap = max_samples_per_task or int(n.max())
    s_len = max(int(np.floor(cap * support_fraction)), 1)
    keys = df[spec.task_key].drop_duplicates().to_numpy()
    return _pad_sets(spec, keys, {"support": df[is_support], "query": df[~is_support]},
                     {"support": s_len, "query": cap - s_len})


@limaml_export
def paired_tasks(support_df: pd.DataFrame, query_df: pd.DataFrame, spec: FeatureSpec,
                 max_support: int = 100, max_query: int = 100) -> TaskSet:
    """Evaluation tasks: support = each task's samples in `support_df` (e.g. the validation period,
    most recent `max_support` kept), query = its samples in `query_df` (the test period, earliest
    `max_query` kept). Tasks are the keys of `query_df`; a task with no support samples gets an
    empty (all-masked) support set, so it is scored with the un-adapted model (cold start)."""
    positive_int("max_support", max_support)
    positive_int("max_query", max_query)
    spec.validate(support_df)
    spec.validate(query_df)
    support = keep_most_recent(support_df, spec, max_support)
    query = keep_most_recent(query_df, spec, None)
    query = query[query.groupby(spec.task_key, sort=False).cumcount() < max_query].reset_index(drop=True)
    keys = query[spec.task_key].drop_duplicates().to_numpy()
    support = support[support[spec.task_key].isin(set(keys))]
    return _pad_sets(spec, keys, {"support": support, "query": query},
                     {"support": max_support, "query": max_query})


@limaml_export
def time_split(df: pd.DataFrame, spec: FeatureSpec, quantiles=(0.7, 0.85)):
    """Splits rows into train / validation / test by global timestamp quantiles."""
    t = df[spec.timestamp]
    lo, hi = t.quantile(list(quantiles), interpolation="nearest").to_numpy()
    return df[t < lo], df[(t >= lo) & (t < hi)], df[t >= hi]
