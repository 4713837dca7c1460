"""The adapter SavedModel as a Beam RunInference model handler (Algorithm 2b on the workers).

    RunInference(AdapterModelHandler(adapter_path, tasks_per_batch))

`load_model` loads the SavedModel once per worker process (RunInference shares it between the
DoFn instances of a process) — no model code, no Keras objects; `run_inference` pads one batch to
`tasks_per_batch` tasks and calls the adapter's `embed_tasks` (tasks with recent samples: k SGD
steps of the meta block + aggregation, all saved in the artifact) or `cold_start` (tasks without:
the un-adapted meta block), so every call has the same shape and the loaded function runs one
graph for the whole job.

An example is one task (`TaskExample`); `TaskBatch` holds up to `tasks_per_batch` tasks of one kind
as stacked arrays and is a sequence of them. The refresh pipeline cuts each bucket's tasks (sorted
by key) into TaskBatches itself and feeds them pre-batched (`prebatched=True`: RunInference skips
`BatchElements`), so batches are cut deterministically and no batch is emitted from
`finish_bundle`, whose outputs some runners drop (docs/refresh.md, "Runners"). With `prebatched=False`, single
TaskExamples are batched by `BatchElements` at the fixed size `batch_elements_kwargs` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_pipelines.interactions import stage_time
from limaml_tf.artifacts import COLD_START, EMBED_TASKS, adapter_inputs
from limaml_tf.spec import FeatureSpec
from limaml_tf.tasks import TaskSet, pad_task_count

ADAPTED = "adapted"  # kinds of task: with recent samples -> embed_tasks
COLD = "cold_start"  # without -> cold_start (the un-adapted meta block)
ENDPOINTS = {ADAPTED: EMBED_TASKS, COLD: COLD_START}


class TaskExample(NamedTuple):
    """One task: `inputs` are the adapter endpoint's inputs without the task axis."""
    bucket: int
    kind: str
    key: str
    inputs: dict


class TaskBatch(Sequence):
    """Up to `tasks_per_batch` tasks of one kind as stacked arrays: inputs[name] is [n, ...]."""

    def __init__(self, bucket: int, kind: str, keys, inputs: dict):
        if kind not in ENDPOINTS:
            raise ValueError(f"kind must be one of {sorted(ENDPOINTS)}, got {kind!r}")
        self.bucket, self.kind, self.keys, self.inputs = int(bucket), kind, np.asarray(keys, object), inputs

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i) -> TaskExample:
        return TaskExample(self.bucket, self.kind, str(self.keys[i]), {k: v[i] for k, v in self.inputs.items()})

    @classmethod
    def stack(cls, examples: Sequence[TaskExample]) -> "TaskBatch":
        first = examples[0]
        if any(e.kind != first.kind or e.bucket != first.bucket for e in examples):
            raise ValueError("a TaskBatch holds tasks of one kind and one bucket")
        return cls(first.bucket, first.kind, [e.key for e in examples],
                   {k: np.stack([e.inputs[k] for e in examples]) for k in first.inputs})


def _same_kind_runs(batch: Sequence) -> list[TaskBatch]:
    """The batch as TaskBatches of consecutive tasks of one kind and bucket (order kept)."""
    if isinstance(batch, TaskBatch):
        return [batch]
    if all(isinstance(b, TaskBatch) for b in batch):
        return list(batch)
    runs, start = [], 0
    for i in range(1, len(batch) + 1):
        if i == len(batch) or batch[i][:2] != batch[start][:2]:
            runs.append(TaskBatch.stack(batch[start:i]))
            start = i
    return runs


class AdapterModelHandler(ModelHandler):
    """RunInference handler for the adapter SavedModel: a batch of tasks -> one meta embedding per task.

    Predictions are one `PredictionResult(example=(bucket, kind, task keys), inference=embeddings [n, d])`
    per TaskBatch (a batch of single TaskExamples: per run of one kind and bucket), so RunInference
    emits one element per batch, not per task."""

    def __init__(self, adapter_path: str, tasks_per_batch: int, tf_threads: int | None = None,
                 prebatched: bool = True):
        super().__init__(min_batch_size=tasks_per_batch, max_batch_size=tasks_per_batch)
        self.adapter_path, self.tasks_per_batch = adapter_path, int(tasks_per_batch)
        self.tf_threads, self.prebatched = tf_threads, prebatched

    def load_model(self):
        import tensorflow as tf

        if self.tf_threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(self.tf_threads)
                tf.config.threading.set_inter_op_parallelism_threads(self.tf_threads)
            except RuntimeError:  # TF already initialized in this process (in-process runners, tests)
                pass
        return tf.saved_model.load(self.adapter_path)

    def embed(self, model, batch: TaskBatch) -> np.ndarray:
        """Embeddings [len(batch), d] of one TaskBatch, run padded to `tasks_per_batch` tasks."""
        n = len(batch)
        if n > self.tasks_per_batch:
            raise ValueError(f"a batch of {n} tasks exceeds tasks_per_batch={self.tasks_per_batch}")
        inputs = pad_task_count(batch.inputs, self.tasks_per_batch)
        return getattr(model, ENDPOINTS[batch.kind])(inputs)["meta_embedding"].numpy()[:n]

    def run_inference(self, batch, model, inference_args=None):
        out = []
        for run in _same_kind_runs(batch):
            with stage_time("adapter"):
                emb = self.embed(model, run)
            out.append(PredictionResult((run.bucket, run.kind, run.keys), emb))
        return out

    def get_num_bytes(self, batch) -> int:
        return sum(v.nbytes for run in _same_kind_runs(batch) for v in run.inputs.values())

    def get_metrics_namespace(self) -> str:
        return "limaml_adapter"

    def should_skip_batching(self) -> bool:
        return self.prebatched


# -- packing tasks into TaskBatches ------------------------------------------------------------

def adapted_batches(tasks: TaskSet, tasks_per_batch: int, bucket: int = 0):
    """TaskBatches of `embed_tasks` inputs from tasks with recent samples (`limaml_tf.tasks.recent_tasks`),
    `tasks_per_batch` tasks each in the TaskSet's order (the last one may be smaller)."""
    for start in range(0, len(tasks), tasks_per_batch):
        part = tasks.subset(slice(start, start + tasks_per_batch)).arrays
        yield TaskBatch(bucket, ADAPTED, part["task_key"], adapter_inputs(part))


def default_features(spec: FeatureSpec, n: int, given: pd.DataFrame | None = None) -> dict:
    """Raw features for `cold_start`: given values where present, else numeric = the training mean
    (encodes to 0) and categorical = "" (the missing id)."""
    df = pd.DataFrame(index=range(n)) if given is None else given.reset_index(drop=True)
    for f in spec.features:
        default = f.mean if f.kind == "numeric" else ""
        df[f.name] = df[f.name].fillna(default) if f.name in df.columns else default
    return spec.raw_arrays(df)


def cold_start_batches(spec: FeatureSpec, tasks: pd.DataFrame, tasks_per_batch: int, bucket: int = 0):
    """TaskBatches of `cold_start` inputs for tasks without recent samples: one row per task in
    `tasks` (its task key + any known features; the others get the defaults), in the given order."""
    for start in range(0, len(tasks), tasks_per_batch):
        part = tasks.iloc[start:start + tasks_per_batch]
        yield TaskBatch(bucket, COLD, part[spec.task_key].astype(str).to_numpy(),
                        default_features(spec, len(part), part))
