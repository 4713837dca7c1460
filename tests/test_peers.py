"""The peer benchmark compares the same maths: our vectorized outer gradient, a learn2learn-style
per-task loop and torch.func's vmap agree on one batch (weights copied into torch). Needs torch
(`pip install -e ".[bench]"`); skipped without it."""

import pytest

import limaml_tf as lt
from conftest import tiny_blocks

pytest.importorskip("torch")


def test_three_methods_give_the_same_second_order_gradient(synthetic):
    from benchmarks.peers import max_differences

    df, spec = synthetic
    bundle = next(lt.split_tasks(df, spec, max_samples_per_task=12).batches(6))
    model = lt.LiMAMLModel(*tiny_blocks(spec), spec, inner_steps=2, inner_learning_rate=0.7)
    differences = max_differences(model, model.encode_bundle(bundle), steps=2, lr=0.7)
    assert max(differences.values()) < 1e-4, differences
