"""Speed-up options (linear LR scaling, warm-up + decay, outer global-norm clip) and the TFRecord reader."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from limaml_tf import LiMAMLModel, MLPGlobalBlock, MLPMetaBlock, make_synthetic, split_tasks
from limaml_tf.trainer import XLA_ONE_STEP_MAX_SLOTS
from limaml_tf.tfrecords import task_dataset, write_tasks
from limaml_tf.training import make_optimizer, make_schedule, scaled_learning_rate


def test_linear_scaling_and_bad_input():
    assert scaled_learning_rate(128, base_lr=3e-3, base_tasks=32) == pytest.approx(1.2e-2)
    assert make_optimizer(16, base_lr=1e-2, base_tasks=32, clipnorm=None).learning_rate.numpy() == pytest.approx(5e-3)
    with pytest.raises(ValueError, match="tasks_per_batch"):
        make_optimizer(0)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_schedule(0.1, warmup_steps=-1)


def test_warmup_then_cosine_decay():
    optimizer = make_optimizer(64, base_lr=0.01, base_tasks=32, warmup_steps=10, decay_steps=100, alpha=0.1)
    assert optimizer.get_config()["learning_rate"]["class_name"] == "CosineDecay"
    assert optimizer.global_clipnorm == 1.0  # the paper's outer-loop clip is the default
    schedule = make_schedule(scaled_learning_rate(64, 0.01, 32), warmup_steps=10, decay_steps=100, alpha=0.1)
    lr = np.array([float(schedule(step)) for step in range(0, 111)])
    peak = 0.02
    np.testing.assert_allclose(lr[[0, 5, 10]], [0.0, peak / 2, peak], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(lr[60], peak * (0.1 + 0.9 * 0.5), rtol=1e-5)  # half way down the cosine
    np.testing.assert_allclose(lr[110], 0.1 * peak, rtol=1e-5)
    assert np.all(np.diff(lr[:11]) > 0) and np.all(np.diff(lr[10:]) < 0)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert float(restored(60)) == pytest.approx(lr[60])


@pytest.fixture(scope="module")
def tasks():
    df, spec = make_synthetic(num_tasks=20, num_items=30, mean_samples_per_task=12, seed=1)
    spec = spec.fit(df)
    return split_tasks(df, spec, max_samples_per_task=10)


def test_outer_step_clips_the_global_norm(tasks):
    """SGD with the outer gradient clipped to global norm c moves the weights by exactly lr * c."""
    keras.utils.set_random_seed(0)
    spec = tasks.spec
    model = LiMAMLModel(MLPMetaBlock(spec.meta_features, output_dim=4, hidden_units=(8,)),
                        MLPGlobalBlock(spec.other_features, hidden_units=(8,), embedding_dim=4), spec,
                        inner_learning_rate=0.5)
    clip, lr = 1e-3, 0.5
    model.compile(optimizer=make_optimizer(8, base_lr=lr, base_tasks=8, clipnorm=clip, optimizer="sgd"))
    bundle = next(iter(tasks.dataset(8, shuffle=False)))
    raw_norm = tf.linalg.global_norm(model.compute_gradients(bundle)[1]).numpy()
    assert raw_norm > 10 * clip  # the clip is active
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.train_on_batch(bundle)
    step = np.sqrt(sum(((v.numpy() - b) ** 2).sum() for v, b in zip(model.trainable_variables, before)))
    assert step == pytest.approx(lr * clip, rel=1e-4)


@pytest.mark.parametrize("cache", [False, True])
def test_tfrecord_reader_matches_taskset_dataset(tasks, tmp_path, cache):
    write_tasks(tasks, str(tmp_path), shards=3)
    expected = list(tasks.dataset(6, shuffle=False))
    got = list(task_dataset(str(tmp_path), 6, shuffle=False, cache=cache))
    # shards interleave tasks; compare the multiset of tasks (batch content keyed by task_key)
    assert len(got) == len(expected)

    def by_key(batches):
        rows = {}
        for b in batches:
            flat = tf.nest.flatten(b)
            keys = b["task_key"].numpy()
            for i, k in enumerate(keys):
                if k:
                    rows[k] = [np.asarray(a[i]) for a in flat]
        return rows

    exp, out = by_key(expected), by_key(got)
    assert sorted(exp) == sorted(out) and len(exp) == len(tasks)
    for k in exp:
        for a, b in zip(exp[k], out[k]):
            np.testing.assert_array_equal(a, b)
    assert tf.nest.map_structure(lambda t: (t.shape, t.dtype), got[0]) == \
        tf.nest.map_structure(lambda t: (t.shape, t.dtype), expected[0])


@pytest.mark.heavy
def test_xla_inner_loop_gives_the_same_gradients(tasks):
    spec = tasks.spec
    bundle = next(iter(tasks.dataset(8, shuffle=False)))
    grads = {}
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = LiMAMLModel(MLPMetaBlock(spec.meta_features, output_dim=4, hidden_units=(8,)),
                            MLPGlobalBlock(spec.other_features, hidden_units=(8,), embedding_dim=4), spec,
                            inner_steps=2, inner_learning_rate=0.5, jit_inner_loop=jit)
        grads[jit] = tf.function(lambda b: model.compute_gradients(b)[:2])(bundle)
    np.testing.assert_allclose(grads[True][0], grads[False][0], rtol=1e-5)
    for a, b in zip(grads[True][1], grads[False][1]):
        np.testing.assert_allclose(tf.convert_to_tensor(a), tf.convert_to_tensor(b), rtol=1e-4, atol=1e-6)
    assert LiMAMLModel.from_config(model.get_config()).jit_inner_loop


def test_xla_auto_where_it_measured_faster_when_the_loop_lowers_and_bad_values_are_named(tasks, monkeypatch):
    spec = tasks.spec
    encoded = None

    def model(**kw):
        nonlocal encoded
        m = LiMAMLModel(MLPMetaBlock(spec.meta_features, output_dim=4, hidden_units=(8,)),
                        MLPGlobalBlock(spec.other_features, hidden_units=(8,), embedding_dim=4), spec, **kw)
        encoded = m.encode_bundle(next(iter(tasks.dataset(4, shuffle=False))))
        return m
    assert [model(jit_inner_loop=j).uses_xla(encoded) for j in (False, True)] == [False, True]
    assert [model(jit_inner_loop="auto", inner_steps=n).uses_xla(encoded) for n in (1, 2)] == [True, True]
    # at n = 1 only up to XLA_ONE_STEP_MAX_SLOTS task slots (and a per-replica batch of unknown size runs TF)
    big = {**encoded, "support_mask": tf.TensorSpec([XLA_ONE_STEP_MAX_SLOTS, 1]), "query_mask": tf.TensorSpec([1, 1])}
    unknown = {**encoded, "support_mask": tf.TensorSpec([None, 4]), "query_mask": tf.TensorSpec([None, 4])}
    one_step = model(jit_inner_loop="auto", inner_steps=1)
    assert not one_step.uses_xla(big) and not one_step.uses_xla(unknown)
    unsupported = model(jit_inner_loop="auto", inner_steps=2)

    def fails(*args):
        raise tf.errors.InvalidArgumentError(None, None, "Detected unsupported operations")
    monkeypatch.setattr(unsupported._xla_scores(), "experimental_get_compiler_ir", fails)
    assert not unsupported.uses_xla(encoded)  # an op XLA cannot compile: the TF graph runs instead
    with pytest.raises(ValueError, match="jit_inner_loop must be True, False or 'auto'"):
        model(jit_inner_loop="yes")
