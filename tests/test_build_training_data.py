"""Data pipeline: raw logs + a feature table -> task TFRecords identical to split_tasks in memory."""

import numpy as np
import pandas as pd
import tensorflow as tf

from beam_pipelines.build_training_data import build_training_data
from limaml_tf.synthetic import make_synthetic
from limaml_tf.tasks import SETS, split_tasks
from limaml_tf.tfrecords import parse_fn, read_meta, task_dataset


def test_pipeline_output_equals_split_tasks(tmp_path):
    df, spec = make_synthetic(num_tasks=25, mean_samples_per_task=12, seed=5)
    df.loc[df.index[::7], "timestamp"] = df["timestamp"].iloc[0]  # timestamp ties: split must break them alike
    items = df.drop_duplicates("item_id")[["item_id", "item_tags", "item_f0", "item_f1", "item_f2", "item_f3"]]
    logs = df.drop(columns=["item_tags", "item_f0", "item_f1", "item_f2", "item_f3"])
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    logs.iloc[:150].to_parquet(logs_dir / "day-1.parquet")
    logs.iloc[150:].to_parquet(logs_dir / "day-2.parquet")
    bad = logs.iloc[:1].assign(item_id="never-seen")  # no feature-table match -> NaN numeric features
    bad.to_parquet(logs_dir / "day-3.parquet")
    items.to_parquet(tmp_path / "items.parquet")

    out = tmp_path / "tasks"
    summary = build_training_data(str(logs_dir), spec, str(out), max_samples=12, min_samples=3,
                                  joins=[f"{tmp_path}/items.parquet:item_id"], num_buckets=3, num_shards=2,
                                  workers=1)
    assert summary["dead_letter"] == 1 and "numeric feature 'item_f0'" in next(iter(summary["dead_letter_reasons"]))

    want = split_tasks(df, spec, max_samples_per_task=12, min_samples_per_task=3)
    got_spec, s_len, q_len = read_meta(str(out))
    assert got_spec == spec and (s_len, q_len) == (want.support_length, want.query_length)
    files = sorted(str(p) for p in out.glob("*.tfrecord"))
    assert len(files) == 2
    parsed = parse_fn(spec, s_len, q_len)(next(iter(tf.data.TFRecordDataset(files).batch(10_000))))
    keys = [k.decode() for k in parsed["task_key"].numpy()]
    assert sorted(keys) == sorted(want.task_keys)
    order = [keys.index(k) for k in want.task_keys]
    for s in SETS:
        for part in ("label", "mask"):
            np.testing.assert_array_equal(parsed[f"{s}_{part}"].numpy()[order], want.arrays[f"{s}_{part}"])
        np.testing.assert_allclose(parsed[f"{s}_time"].numpy()[order], want.arrays[f"{s}_time"], rtol=1e-6)
        for f in spec.features:
            g = parsed[s][f.name].numpy()[order]
            w = want.arrays[s][f.name]
            if g.dtype == object:
                g = np.vectorize(bytes.decode)(g)
                np.testing.assert_array_equal(g, w.astype(str))
            else:
                np.testing.assert_allclose(g, w, rtol=1e-6)
    batch = next(iter(task_dataset(str(out), tasks_per_batch=8, shuffle=False)))
    assert batch["support_mask"].shape == (8, s_len)
    assert pd.Series(keys).is_unique


def _tasks_by_key(out, spec):
    """Every task Example in `out` as {task key: parsed arrays (support/query label, mask, time)}."""
    got_spec, s_len, q_len = read_meta(str(out))
    files = sorted(str(p) for p in out.glob("*.tfrecord"))
    parsed = parse_fn(got_spec, s_len, q_len)(next(iter(tf.data.TFRecordDataset(files).batch(10_000))))
    keys = [k.decode() for k in parsed["task_key"].numpy()]
    return {k: {f"{s}_{part}": parsed[f"{s}_{part}"].numpy()[i] for s in SETS for part in ("label", "mask", "time")}
            for i, k in enumerate(keys)}


def test_start_end_window_leaks_no_sample(tmp_path):
    """--start / --end keep exactly [start, end): nothing before start, nothing at or after end, and the
    "most recent N" cut is made inside the window (not on the whole log, then filtered)."""
    df, spec = make_synthetic(num_tasks=20, mean_samples_per_task=30, days=40, seed=9)
    t = df["timestamp"]
    start, end = float(round(t.quantile(0.3))), float(round(t.quantile(0.6)))  # whole seconds: exact in ISO
    df.loc[df.index[::11], "timestamp"] = start  # rows exactly on the bounds: start is in, end is out
    df.loc[df.index[5::11], "timestamp"] = end
    logs = tmp_path / "logs"
    logs.mkdir()
    df.to_parquet(logs / "part-0.parquet")
    window = df[(df["timestamp"] >= start) & (df["timestamp"] < end)]
    assert len(window) < len(df) and (df["timestamp"] >= end).any() and (df["timestamp"] < start).any()

    out = tmp_path / "tasks"
    build_training_data(str(logs), spec, str(out), max_samples=6, min_samples=2, num_buckets=2, num_shards=1,
                        start=pd.Timestamp(start, unit="s", tz="UTC").isoformat(), end=str(end), workers=1)
    got = _tasks_by_key(out, spec)
    want = split_tasks(window, spec, max_samples_per_task=6, min_samples_per_task=2)
    assert sorted(got) == sorted(want.task_keys)
    for i, key in enumerate(want.task_keys):
        for name in ("support_mask", "query_mask", "support_label", "query_label"):
            np.testing.assert_array_equal(got[key][name], want.arrays[name][i], err_msg=f"{key} {name}")
        for s in SETS:
            real = got[key][f"{s}_time"][got[key][f"{s}_mask"] > 0]
            np.testing.assert_allclose(real, want.arrays[f"{s}_time"][i][want.arrays[f"{s}_mask"][i] > 0], rtol=1e-6)
    # the comparison has teeth: the whole log would give other samples for the same tasks
    everything = split_tasks(df, spec, max_samples_per_task=6, min_samples_per_task=2)
    differs = [k for i, k in enumerate(everything.task_keys) if k in got and not np.allclose(
        everything.arrays["support_time"][i], got[k]["support_time"], rtol=1e-6)]
    assert differs
