"""Sequence features built causally from the raw interactions (no Keras).

`add_sequences` gives every row the task's previous `max_len` interactions, most recent first
(the `sequence` / `numeric_sequence` kinds of `limaml_tf.spec`): the values of chosen columns
of those rows, their labels if asked, and the signed log time gap to the row. A row sees only
rows of its task with a *strictly* smaller timestamp (rows tied on time never see each other),
as the history features of `limaml_tf.movielens` do.

The per-user protocols' leak rule (`limaml_tf.movielens.support_history`): with `is_support`,
only support rows are ever seen. A support row sees the support rows strictly earlier than
itself; a query row sees all of its task's support rows (what is known when it is scored) and
never another query row, so no query label leaks into any sequence.

    df = add_sequences(df, "task", "timestamp", {"seq_movie": "movie_id"}, max_len=20,
                       label="label", label_name="seq_label", gap_name="seq_log_gap")
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from limaml_tf.api_export import limaml_export
from limaml_tf.raw_data import FeatureError

DAY = 86_400.0


def previous_rows(df: pd.DataFrame, task_key: str, timestamp: str, max_len: int, is_support=None) -> np.ndarray:
    """[n, max_len] int64: row positions (in `df`) of each row's visible earlier rows, most recent first,
    -1 for padding. `df` must be sorted by (task, time); see the module docstring for what is visible."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    n = len(df)
    visible = np.ones(n, bool) if is_support is None else np.asarray(is_support, bool)
    if len(visible) != n:
        raise ValueError(f"is_support has {len(visible)} entries for {n} rows")
    task = pd.factorize(df[task_key].to_numpy())[0]  # codes in order of first appearance
    t = df[timestamp].to_numpy()
    same_task = np.diff(task) == 0
    if n and ((np.diff(task) < 0).any() or (same_task & (np.diff(t) < 0)).any()):  # a task split or time going back
        raise FeatureError(f"add_sequences: rows must be sorted by ({task_key!r}, {timestamp!r}): sort them first, "
                           f"e.g. df.sort_values([{task_key!r}, {timestamp!r}], kind='stable')")
    # visible rows of each task in time order: a support row sees a prefix of them (those strictly earlier)
    vis_rows = np.flatnonzero(visible)
    vis_count = np.bincount(task[vis_rows], minlength=task.max() + 1 if n else 0)
    vis_start = np.cumsum(vis_count) - vis_count
    before = np.cumsum(visible) - visible  # visible rows before this row, all tasks
    task_first = np.r_[0, np.flatnonzero(~same_task) + 1] if n else np.zeros(0, int)
    earlier = before - before[task_first][task]  # ... of this task, ties not yet excluded
    tie_first = np.r_[True, ~same_task | (np.diff(t) != 0)] if n else np.zeros(0, bool)
    earlier = earlier[np.maximum.accumulate(np.where(tie_first, np.arange(n), 0))]  # rows tied on time see alike
    count = np.where(visible, earlier, vis_count[task])  # a query row sees all its task's support rows
    j = np.arange(max_len)[None, :]
    pos = vis_start[task][:, None] + count[:, None] - 1 - j
    return np.where(j < count[:, None], vis_rows[np.clip(pos, 0, max(len(vis_rows) - 1, 0))] if len(vis_rows)
                    else -1, -1)


@limaml_export
def add_sequences(df: pd.DataFrame, task_key: str, timestamp: str, columns: dict[str, str], max_len: int,
                  label: str | None = None, label_name: str | None = None, gap_name: str | None = None,
                  is_support=None) -> pd.DataFrame:
    """`df` plus sequence columns (lists, most recent first, at most `max_len` long):

    * `columns` {new name: source column}: the source values (as str) of the previous rows
      (a `sequence` feature);
    * `label_name`: the previous rows' `label` (float, a `numeric_sequence`);
    * `gap_name`: sign(dt) * log1p(|dt| in days), dt = this row's time - the previous row's time
      (a `numeric_sequence`; negative only for a query row of a protocol whose support is later).

    `df` must be sorted by (task, time). `is_support`: see the module docstring."""
    if not columns:
        raise ValueError("add_sequences: give at least one categorical column (it marks the real positions)")
    missing = [c for c in [task_key, timestamp, *columns.values(), *([label] if label_name else [])]
               if c not in df.columns]
    if missing:
        raise FeatureError(f"add_sequences: missing column(s) {missing}: add them or change the arguments")
    prev = previous_rows(df, task_key, timestamp, max_len, is_support)
    real = prev >= 0
    lengths = real.sum(1)
    out = df.copy()

    def lists(values: np.ndarray):  # [n, max_len] -> list of the real (leading) values per row
        return [row[:k].tolist() for row, k in zip(values, lengths)]

    src = np.maximum(prev, 0)
    for name, col in columns.items():
        out[name] = lists(df[col].astype(str).to_numpy(dtype=object)[src])
    if label_name:
        out[label_name] = lists(df[label].to_numpy(np.float64)[src])
    if gap_name:
        t = df[timestamp]
        t = (t.astype("int64") / 1e9 if pd.api.types.is_datetime64_any_dtype(t) else t).to_numpy(np.float64)
        dt = (t[:, None] - t[src]) / DAY
        out[gap_name] = lists(np.sign(dt) * np.log1p(np.abs(dt)))
    return out
