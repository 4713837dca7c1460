"""`max_tasks_per_chunk` as a memory budget ("auto", "512MB"): chunks chosen from the step's estimated
memory, the gradient unchanged; bad settings named with their fix."""

import numpy as np
import pytest
import tensorflow as tf

import limaml_tf as lt
from conftest import tiny_blocks
from limaml_tf.memory import StepMemory, chunk_setting


@pytest.mark.parametrize("value", [0, -3, True, 1.5, "lots", "512XB", "0MB", "-1GB"])
def test_bad_chunk_settings_name_the_argument_and_the_fix(value):
    with pytest.raises(ValueError, match=r"max_tasks_per_chunk must be .*'auto', a memory budget such as '512MB'"):
        chunk_setting(value)


def test_chunk_settings_parse():
    assert chunk_setting(None) == (None, None, False) and chunk_setting(np.int64(3)).tasks == 3
    assert chunk_setting("auto").auto and chunk_setting(" Auto ").auto
    assert chunk_setting("512MB").budget == 512 * 10**6 and chunk_setting("1.5 GiB").budget == 3 * 2**29
    memory = StepMemory(fixed=100, per_task=10)
    assert [memory.tasks_within(b, 8) for b in (50, 125, 130, 10**6)] == [1, 2, 3, 8]


@pytest.mark.heavy
def test_memory_budget_chunks_give_the_unchunked_gradient(synthetic):
    """A budget that fits 3 of 6 tasks per chunk: 2 chunks, the same loss and gradient as one."""
    df, spec = synthetic
    bundle = next(lt.split_tasks(df, spec, max_samples_per_task=12).batches(6))
    whole = lt.LiMAMLModel(*tiny_blocks(spec), spec, inner_steps=1, inner_learning_rate=0.7)
    chunked = lt.LiMAMLModel(*tiny_blocks(spec), spec, inner_steps=1, inner_learning_rate=0.7,
                             max_tasks_per_chunk="auto")
    chunked.set_weights(whole.get_weights())
    encoded = chunked.encode_bundle(bundle)
    assert chunked.tasks_per_chunk(encoded) == 6  # a tiny model: "auto" fits the whole batch
    estimate = chunked.step_memory(encoded)
    assert estimate.per_task > 0
    budget = f"{estimate.of(3) + estimate.per_task // 2}B"
    chunked.max_tasks_per_chunk = budget
    assert chunked.tasks_per_chunk(encoded) == 3
    loss_a, grads_a, logits_a, _ = whole.compute_gradients(bundle)
    loss_b, grads_b, logits_b, _ = chunked.compute_gradients(bundle)
    np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-5)
    np.testing.assert_allclose(logits_b, logits_a, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(tf.convert_to_tensor(b), tf.convert_to_tensor(a), rtol=1e-4, atol=1e-7)
    restored = lt.LiMAMLModel.from_config(chunked.get_config())
    assert restored.max_tasks_per_chunk == budget
