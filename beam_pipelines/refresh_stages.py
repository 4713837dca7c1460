"""The worker-side stages of the refresh pipeline around RunInference (see refresh_embeddings.py):

  (bucket, {"rows": [(batch id, Arrow IPC bytes)], "serving": [serving-task rows]})
    -> PackBucket: each task's most recent N samples, tasks sorted by key and cut into TaskBatches
       of `tasks_per_batch` (vectorized: `limaml_tf.tasks.recent_tasks` on the bucket's rows, strings as
       categoricals made by Arrow); serving tasks without recent samples -> cold-start TaskBatches
    -> RunInference(AdapterModelHandler)  -> one result per TaskBatch: its keys and embeddings [n, d]
    -> by_bucket -> WriteEmbeddings: one Parquet file per bucket (part-BBBBB-of-NNNNN.parquet; adapted,
       then cold-start rows, each sorted by task key), through `beam_pipelines.sinks.WriteShards`: a
       temp file per attempt, renamed exactly once, so a retried or duplicated bundle cannot change
       what is committed

The spec arrives from the driver (read once from the adapter export); workers import neither Keras
nor the model code.
"""

from __future__ import annotations

import datetime as dt
import logging

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from beam_pipelines.adapter_handler import ADAPTED, COLD, adapted_batches, cold_start_batches
from beam_pipelines.interactions import stage_time, timed
from beam_pipelines.shuffle import concat_sorted
from beam_pipelines.sinks import WriteShards
from limaml_tf.artifacts import embeddings_table
from limaml_tf.spec import FeatureSpec
from limaml_tf.tasks import recent_tasks

log = logging.getLogger(__name__)


class PackBucket(beam.DoFn):
    """(bucket, {"rows": [(batch id, Arrow IPC bytes)], "serving": [rows]}) -> TaskBatches (adapted, then
    cold start)."""

    def __init__(self, spec: FeatureSpec, max_samples: int, tasks_per_batch: int):
        self.spec_json, self.max_samples, self.tasks_per_batch = spec.to_json(), max_samples, tasks_per_batch

    def setup(self):
        self.spec = FeatureSpec.from_json(self.spec_json)

    def process(self, element):
        return timed("pack", self._pack(element))

    def _pack(self, element):
        bucket, groups = element
        key = self.spec.task_key
        rows = concat_sorted(groups["rows"])
        adapted = set()
        if rows is not None and rows.num_rows:
            tasks = recent_tasks(rows.to_pandas(strings_to_categorical=True), self.spec, self.max_samples)
            adapted = set(tasks.task_keys)
            beam.metrics.Metrics.counter("embeddings", ADAPTED).inc(len(tasks))
            yield from adapted_batches(tasks, self.tasks_per_batch, bucket)
        serving = list(groups["serving"])
        if serving:
            serving = pd.concat(serving, ignore_index=True)
            cold = serving[~serving[key].isin(adapted)].drop_duplicates(key)
            cold = cold.sort_values(key, kind="stable").reset_index(drop=True)
            beam.metrics.Metrics.counter("embeddings", COLD).inc(len(cold))
            yield from cold_start_batches(self.spec, cold, self.tasks_per_batch, bucket)


def by_bucket(result):
    """PredictionResult(example=(bucket, kind, keys), inference=embeddings [n, d]) -> (bucket, (kind, keys,
    embeddings)): one element per TaskBatch."""
    (bucket, kind, keys), embeddings = result.example, result.inference
    return bucket, (kind, keys, embeddings)


def bucket_table(batches, model_version: str, computed_at: dt.datetime) -> pa.Table:
    """One bucket's embedding rows from its TaskBatches' results (adapted, then cold start; each sorted by
    task key). A task delivered twice (at-least-once runners re-deliver elements) is written once."""
    rows = pd.DataFrame({"kind": np.concatenate([[kind] * len(keys) for kind, keys, _ in batches]),
                         "key": np.concatenate([np.asarray(keys, object) for _, keys, _ in batches])})
    embeddings = np.concatenate([e for *_, e in batches])
    tables = []
    for kind in (ADAPTED, COLD):
        part = rows[rows["kind"] == kind].drop_duplicates("key").sort_values("key", kind="stable")
        if len(part):
            tables.append(embeddings_table(part["key"], embeddings[part.index], model_version, computed_at, kind))
    return pa.concat_tables(tables)


class WriteEmbeddings(beam.PTransform):
    """(bucket, (kind, task keys, embeddings)) -> `out_dir`/part-BBBBB-of-NNNNN.parquet, one file per bucket,
    committed exactly once (`beam_pipelines.sinks`)."""

    def __init__(self, out_dir: str, num_buckets: int, model_version: str, computed_at: dt.datetime):
        super().__init__()
        self.out_dir, self.num_buckets = out_dir, num_buckets
        self.model_version, self.computed_at = model_version, computed_at

    def write(self, batches, f) -> None:
        with stage_time("write"):
            table = bucket_table(batches, self.model_version, self.computed_at)
            pq.write_table(table, f)
        log.info("refresh: %d embeddings written", table.num_rows)  # progress in the worker logs

    def expand(self, keyed):
        return keyed | WriteShards(self.out_dir, "part", ".parquet", self.num_buckets, self.write)
