"""Task-grouped training examples as TFRecords: one `tf.train.Example` per task.

Written by the data pipeline (`beam_pipelines/build_training_data.py`) and by
`write_tasks`, read by `task_dataset` into the same fixed-shape task bundles as
`TaskSet.dataset`. Feature keys of an example:

  task_key                          bytes
  <set>_label, <set>_mask, <set>_time   float [L]      (set = support | query, L its slots)
  <set>/<feature>                   float or bytes [L * values per sample]

A `tasks_meta.json` beside the files records the spec and the slot counts. No Keras: the data
pipeline's Beam workers import this module.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from limaml_tf.artifacts import atomic_write_text
from limaml_tf.raw_data import FeatureError
from limaml_tf.spec import FeatureSpec
from limaml_tf.tasks import SETS, TaskSet, pad_task_count

META_FILE = "tasks_meta.json"


def _floats(a) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(a, np.float32).ravel()))


def _bytes(a) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode() for v in np.asarray(a).ravel()]))


def check_one_definition(spec: FeatureSpec) -> None:
    """Task TFRecords carry one task definition (no sub-task arrays): refuse a spec with several, up front."""
    if spec.task_keys:
        raise FeatureError(f"the spec declares several task definitions (task_keys {dict(spec.task_keys)}); task "
                           "TFRecords carry one: train such a model from limaml_tf.split_tasks(...).dataset(...) "
                           "(docs/task_definitions.md)")


def task_example(spec: FeatureSpec, task: dict) -> bytes:
    """Serializes one task (a TaskSet.arrays-style dict without the task axis)."""
    feats = {"task_key": _bytes([task["task_key"]])}
    for s in SETS:
        for part in ("label", "mask", "time"):
            feats[f"{s}_{part}"] = _floats(task[f"{s}_{part}"])
        for f in spec.features:
            value = task[s][f.name]
            feats[f"{s}/{f.name}"] = _floats(value) if f.is_numeric else _bytes(value)
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_meta(directory: str, spec: FeatureSpec, support_length: int, query_length: int) -> None:
    meta = {"spec": spec.to_dict(), "support_length": support_length, "query_length": query_length}
    atomic_write_text(os.path.join(directory, META_FILE), json.dumps(meta))


def read_meta(directory: str) -> tuple[FeatureSpec, int, int]:
    with open(os.path.join(directory, META_FILE)) as f:
        meta = json.load(f)
    return FeatureSpec.from_dict(meta["spec"]), meta["support_length"], meta["query_length"]


def write_tasks(tasks: TaskSet, directory: str, shards: int = 1) -> list[str]:
    """Writes a TaskSet as sharded TFRecords + tasks_meta.json (each shard written atomically)."""
    check_one_definition(tasks.spec)
    os.makedirs(directory, exist_ok=True)
    paths = []
    for shard in range(shards):
        path = os.path.join(directory, f"tasks-{shard:05d}-of-{shards:05d}.tfrecord")
        with tf.io.TFRecordWriter(path + ".tmp") as w:
            for i in range(shard, len(tasks), shards):
                w.write(task_example(tasks.spec, tasks.subset(i).arrays))
        os.replace(path + ".tmp", path)
        paths.append(path)
    write_meta(directory, tasks.spec, tasks.support_length, tasks.query_length)
    return paths


def parse_fn(spec: FeatureSpec, support_length: int, query_length: int):
    """Returns a function: serialized example(s) -> task dict(s) in the TaskSet layout."""
    lengths = {"support": support_length, "query": query_length}
    schema = {"task_key": tf.io.FixedLenFeature([], tf.string)}
    for s, n in lengths.items():
        for part in ("label", "mask", "time"):
            schema[f"{s}_{part}"] = tf.io.FixedLenFeature([n], tf.float32)
        for f in spec.features:
            schema[f"{s}/{f.name}"] = tf.io.FixedLenFeature((n,) + f.raw_shape(), f.raw_dtype)

    def parse(serialized):
        ex = tf.io.parse_example(serialized, schema)
        out = {"task_key": ex["task_key"]}
        for s in SETS:
            out[s] = {f.name: ex[f"{s}/{f.name}"] for f in spec.features}
            for part in ("label", "mask", "time"):
                out[f"{s}_{part}"] = ex[f"{s}_{part}"]
        return out

    return parse


def task_dataset(directory: str, tasks_per_batch: int, shuffle: bool = True, seed: int = 0,
                 repeat: bool = False, cache: bool | str = False, shuffle_buffer: int = 4096,
                 parse_batch: int = 256) -> tf.data.Dataset:
    """Fixed-shape task batches read from a directory written by `write_tasks` / the data pipeline.

    Files are read in parallel (interleave), examples are parsed in vectorized blocks of
    `parse_batch` on parallel threads, and batches are prefetched. `cache=True` keeps the parsed,
    padded tasks in memory after the first epoch (a string: a cache file path), so later epochs only
    shuffle and batch. Under MultiWorkerMirroredStrategy, tf.data's default auto-shard policy gives
    each worker its own files when there are at least as many files as workers.
    """
    spec, s_len, q_len = read_meta(directory)
    files = sorted(tf.io.gfile.glob(os.path.join(directory, "*.tfrecord")))
    if not files:
        raise FileNotFoundError(f"no *.tfrecord files in {directory!r}: run the data pipeline first")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 4),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    parse = parse_fn(spec, s_len, q_len)
    drop_time = lambda b: {k: v for k, v in b.items() if not k.endswith("_time")}  # noqa: E731
    ds = ds.batch(parse_batch).map(lambda x: drop_time(parse(x)), num_parallel_calls=tf.data.AUTOTUNE,
                                   deterministic=not shuffle).unbatch()
    if cache:
        ds = ds.cache("" if cache is True else cache)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(tasks_per_batch).map(lambda b: pad_task_count(b, tasks_per_batch),
                                       num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
