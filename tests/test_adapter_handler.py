"""The adapter's RunInference ModelHandler: pre-batched TaskBatches (what the refresh feeds) and single
tasks batched by BatchElements at the fixed size give the model's embeddings, adapted and cold start."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that

from beam_pipelines.adapter_handler import (ADAPTED, COLD, AdapterModelHandler, TaskBatch, adapted_batches,
                                            cold_start_batches, default_features)
from beam_pipelines.runner import beam_options
from limaml_tf.export import export_adapter
from limaml_tf.tasks import recent_tasks
from tests.serving_helpers import tiny  # noqa: F401 (fixture)

T = 8


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):  # noqa: F811
    model, spec, df = tiny
    path = export_adapter(model, str(tmp_path_factory.mktemp("adapter")), "a", steps=2, learning_rate=0.3)
    tasks = recent_tasks(df, spec, 6)
    return model, spec, df, path, tasks


def test_batching_settings():
    handler = AdapterModelHandler("unused", T)
    assert handler.batch_elements_kwargs() == {"min_batch_size": T, "max_batch_size": T}
    assert handler.should_skip_batching()  # the refresh cuts batches itself (see the module docstring)
    assert not AdapterModelHandler("unused", T, prebatched=False).should_skip_batching()


def test_task_batch_is_a_sequence_of_tasks(adapter):
    *_, tasks = adapter
    batch = next(adapted_batches(tasks, T, bucket=3))
    assert len(batch) == T and batch.kind == ADAPTED and batch.bucket == 3
    one = batch[2]
    assert (one.bucket, one.kind, one.key) == (3, ADAPTED, tasks.task_keys[2])
    assert one.inputs["support_mask"].shape == (6,) and one.inputs["task_key"] == tasks.task_keys[2]
    again = TaskBatch.stack(list(batch))
    assert list(again.keys) == list(batch.keys)
    for k, v in batch.inputs.items():
        np.testing.assert_array_equal(again.inputs[k], v)
    with pytest.raises(ValueError, match="one kind"):
        TaskBatch.stack([batch[0], next(cold_start_batches(tasks.spec, _frame(tasks, 1), T))[0]])


def _frame(tasks, n):
    import pandas as pd

    return pd.DataFrame({tasks.spec.task_key: list(tasks.task_keys[:n])})


def test_prebatched_equals_the_model(adapter):
    model, spec, df, path, tasks = adapter
    handler = AdapterModelHandler(path, T)
    loaded = handler.load_model()
    results = [r for b in adapted_batches(tasks, T) for r in handler.run_inference(b, loaded)]
    assert len(results) == -(-len(tasks) // T)  # one result per TaskBatch
    assert {r.example[:2] for r in results} == {(0, ADAPTED)}
    assert list(np.concatenate([r.example[2] for r in results])) == list(tasks.task_keys)
    got = np.concatenate([r.inference for r in results])
    a = tasks.arrays
    last = a["support_mask"].sum(1).astype(int) - 1
    support = model.encode_samples({n: tf.constant(v) for n, v in a["support"].items()}, a["support_mask"].shape)
    latest = model.encoder({n: tf.constant(v[np.arange(len(v)), last]) for n, v in a["support"].items()})
    want = model.meta_embeddings(support, a["support_label"], a["support_mask"], latest, 2, 0.3).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    (cold,) = handler.run_inference(next(cold_start_batches(spec, _frame(tasks, 3), T)), loaded)
    assert cold.example[1] == COLD and len(cold.example[2]) == 3
    # cold start = the un-adapted meta block on the defaults (training mean, missing id)
    defaults = {k: tf.constant(v) for k, v in default_features(spec, 3).items()}
    np.testing.assert_allclose(cold.inference, model.embed(model.encoder(defaults)).numpy(),
                               rtol=1e-5, atol=1e-6)


def per_task(results):
    """((bucket, kind, key), embedding) of each task of the handler's per-batch results."""
    for r in results if not hasattr(results, "example") else [results]:
        (bucket, kind, keys), emb = r.example, r.inference
        yield from (((bucket, kind, str(k)), e) for k, e in zip(keys, emb))


def test_single_tasks_through_batch_elements_equal_the_prebatched_run(adapter):
    """prebatched=False: RunInference batches single tasks (BatchElements, fixed size T) — same numbers,
    in a real pipeline (FnApiRunner), adapted and cold-start tasks mixed."""
    _, spec, _, path, tasks = adapter
    handler = AdapterModelHandler(path, T)
    loaded = handler.load_model()
    prebatched = list(adapted_batches(tasks, T)) + list(cold_start_batches(spec, _frame(tasks, 5), T))
    want = dict(per_task(r for b in prebatched for r in handler.run_inference(b, loaded)))
    examples = [e for b in prebatched for e in b]

    def check(results):
        got = dict(results)
        assert sorted(got) == sorted(want)
        for k, v in got.items():
            np.testing.assert_allclose(v, want[k], rtol=1e-5, atol=1e-6, err_msg=str(k))

    with beam.Pipeline(options=beam_options([], workers=1)) as p:
        results = (p | beam.Create(examples)
                   | RunInference(AdapterModelHandler(path, T, prebatched=False))
                   | beam.FlatMap(per_task))
        assert_that(results, check)
