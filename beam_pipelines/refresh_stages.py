"""The worker-side stages of the refresh pipeline around RunInference (see refresh_embeddings.py):

  (bucket, {"rows": [(batch id, rows)], "serving": [serving-task rows]})
    -> PackBucket: each task's most recent N samples, tasks sorted by key and cut into TaskBatches
       of `tasks_per_batch`; serving tasks without recent samples -> cold-start TaskBatches
    -> RunInference(AdapterModelHandler)  -> one embedding per task
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
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from beam_pipelines.adapter_handler import ADAPTED, COLD, adapted_batches, cold_start_batches
from beam_pipelines.interactions import concat_sorted
from beam_pipelines.sinks import WriteShards
from limaml_tf.artifacts import embeddings_table
from limaml_tf.spec import FeatureSpec
from limaml_tf.tasks import recent_tasks

log = logging.getLogger(__name__)


class PackBucket(beam.DoFn):
    """(bucket, {"rows": [(batch id, rows)], "serving": [rows]}) -> TaskBatches (adapted, then cold start)."""

    def __init__(self, spec: FeatureSpec, max_samples: int, tasks_per_batch: int):
        self.spec_json, self.max_samples, self.tasks_per_batch = spec.to_json(), max_samples, tasks_per_batch

    def setup(self):
        self.spec = FeatureSpec.from_json(self.spec_json)

    def process(self, element):
        bucket, groups = element
        key = self.spec.task_key
        rows = concat_sorted(groups["rows"])
        adapted = set()
        if len(rows):
            tasks = recent_tasks(rows, self.spec, self.max_samples)
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
    """PredictionResult(example=(bucket, kind, key), inference=embedding) -> (bucket, (key, kind, embedding))."""
    (bucket, kind, key), embedding = result.example, result.inference
    return bucket, (key, kind, embedding)


def bucket_table(rows, model_version: str, computed_at: dt.datetime) -> pa.Table:
    """One bucket's embedding rows (adapted, then cold start; each sorted by task key). A task delivered
    twice (at-least-once runners; Beam 2.77's DaskRunner re-delivers elements) is written once."""
    unique = {(key, kind): emb for key, kind, emb in rows}
    tables = []
    for kind in (ADAPTED, COLD):
        part = sorted((key, emb) for (key, k), emb in unique.items() if k == kind)
        if part:
            keys, embs = zip(*part)
            tables.append(embeddings_table(keys, list(embs), model_version, computed_at, kind))
    return pa.concat_tables(tables)


class WriteEmbeddings(beam.PTransform):
    """(bucket, (task key, kind, embedding)) -> `out_dir`/part-BBBBB-of-NNNNN.parquet, one file per bucket,
    committed exactly once (`beam_pipelines.sinks`)."""

    def __init__(self, out_dir: str, num_buckets: int, model_version: str, computed_at: dt.datetime):
        super().__init__()
        self.out_dir, self.num_buckets = out_dir, num_buckets
        self.model_version, self.computed_at = model_version, computed_at

    def write(self, rows, f) -> None:
        pq.write_table(bucket_table(rows, self.model_version, self.computed_at), f)
        log.info("refresh: %d embeddings written", len(rows))  # progress in the worker logs

    def expand(self, keyed):
        return keyed | WriteShards(self.out_dir, "part", ".parquet", self.num_buckets, self.write)
