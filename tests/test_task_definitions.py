"""Several task definitions at once (a user and a user x item type): the meta-gradient of the vectorized
two-definition inner loop against a per-task Python loop, padding, time order, save / load, errors.

The reference shares nothing with the model's inner loop but the blocks' `stateless_call`: it loops in
Python over every query sample, forms that sample's task of each definition from the raw per-slot keys
(`support_keys` / `query_keys`, not the bundle's `subtask_*` index arrays), drops padded samples by
slicing, adapts each definition's block on its task's support set with the other blocks un-adapted, and
writes the MAML objective out by hand.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import limaml_tf as lt
from conftest import tiny_blocks
from limaml_tf.tasks import pad_task_count
from test_meta_gradients import _max_rel_err

TWO = {"user": "user_id", "user_x_type": "user_item_type"}


@pytest.fixture(scope="module")
def two_level():
    df, spec = lt.make_synthetic(num_tasks=40, mean_samples_per_task=30, seed=3, item_types=3)
    return df, spec.fit(df)


def _bundle(two_level, tasks=4, cap=12):
    df, spec = two_level
    return next(lt.split_tasks(df, spec, max_samples_per_task=cap).batches(tasks)), spec


def _model(spec, definitions=("user", "user_x_type"), steps=1, first_order=False, lr=0.7, **kw):
    keras.utils.set_random_seed(0)
    blocks = {d: tiny_blocks(spec)[0] for d in definitions}
    return lt.LiMAMLModel(blocks, tiny_blocks(spec)[1], spec, inner_steps=steps, inner_learning_rate=lr,
                          first_order=first_order, **kw)


def _bce(y, logits):
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))


def reference_meta_gradients(model, bundle, steps, lr, first_order):
    """Per query sample, per definition: that sample's task of the definition (the primary task, or the
    primary task's support samples with the sample's key), adapted in a Python loop."""
    blocks = model.meta_block.blocks
    names = sorted(blocks)
    primary = model.spec.primary_definition
    init = {d: [v.value for v in blocks[d].trainable_variables] for d in names}
    global_w = [v.value for v in model.global_block.trainable_variables]
    encoded = model.encode_bundle(bundle)
    dtype = model.compute_dtype

    def logits(params, x):
        emb = tf.concat([blocks[d].stateless_call(params[d], [], x)[0] for d in names], -1)
        return tf.reshape(model.global_block.stateless_call(global_w, [], {**x, "meta_embedding": emb})[0], [-1])

    def rows(name, t, idx):
        return ({k: tf.gather(v[t], idx) for k, v in encoded[name].items()},
                tf.cast(tf.gather(bundle[f"{name}_label"][t], idx), dtype))

    with tf.GradientTape() as outer:
        losses = []
        for t in range(bundle["query_mask"].shape[0]):
            n_q, n_s = int(bundle["query_mask"][t].sum()), int(bundle["support_mask"][t].sum())
            if n_q == 0:
                continue
            sample_losses = []
            for q in range(n_q):
                q_x, q_y = rows("query", t, [q])
                adapted = {}
                for d in names:
                    if d == primary:
                        members = list(range(n_s))
                    else:
                        key = bundle["query_keys"][d][t, q]
                        members = [s for s in range(n_s) if bundle["support_keys"][d][t, s] == key]
                    params = list(init[d])
                    for _ in range(steps if members else 0):
                        s_x, s_y = rows("support", t, members)
                        with tf.GradientTape() as inner:
                            inner.watch(params)
                            loss = _bce(s_y, logits({**init, d: params}, s_x))
                        grads = [tf.convert_to_tensor(g) for g in inner.gradient(loss, params)]
                        if first_order:
                            grads = [tf.stop_gradient(g) for g in grads]
                        params = [p - lr * g for p, g in zip(params, grads)]
                    adapted[d] = params
                sample_losses.append(_bce(q_y, logits(adapted, q_x)))
            losses.append(tf.add_n(sample_losses) / n_q)
        total = tf.add_n(losses) / len(losses)
    grads = outer.gradient(total, model.trainable_variables)
    return total, [tf.convert_to_tensor(g) if g is not None else tf.zeros_like(v)
                   for g, v in zip(grads, model.trainable_variables)]


@pytest.mark.parametrize("steps,first_order", [(1, True), (2, False)])
def test_two_definition_gradient_matches_per_sample_loop(two_level, steps, first_order):
    bundle, spec = _bundle(two_level)
    assert (bundle["subtask_support_mask"]["user_x_type"].sum(-1) == 0).any(), "want a cold-start sub-task too"
    model = _model(spec, steps=steps, first_order=first_order)
    loss, grads, _, _ = model.compute_gradients(bundle)
    ref_loss, ref_grads = reference_meta_gradients(model, bundle, steps, 0.7, first_order)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    assert _max_rel_err(grads, ref_grads) < 1e-4
    by_block = {d: [g for g, v in zip(grads, model.trainable_variables)
                    if any(v is w for w in model.meta_block.blocks[d].trainable_variables)] for d in TWO}
    assert all(float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g)))) > 0 for gs in by_block.values() for g in gs)


def test_only_the_primary_definition_equals_one_meta_block(two_level):
    """A dict holding only the primary definition's block runs the multi-definition loop and must equal
    today's single-block model with the same weights."""
    bundle, spec = _bundle(two_level)
    multi = _model(spec, definitions=("user",), steps=2)
    single = lt.LiMAMLModel(tiny_blocks(spec)[0], tiny_blocks(spec)[1], spec, inner_steps=2, inner_learning_rate=0.7)
    for a, b in zip(single.trainable_variables, multi.trainable_variables):
        a.assign(b)
    loss_m, grads_m, logits_m, _ = multi.compute_gradients(bundle)
    loss_s, grads_s, logits_s, _ = single.compute_gradients(bundle)
    np.testing.assert_allclose(float(loss_m), float(loss_s), rtol=1e-6)
    np.testing.assert_allclose(logits_m, logits_s, rtol=1e-5, atol=1e-6)
    assert _max_rel_err(grads_m, grads_s) < 1e-5


def _pad_bundle(bundle, tasks=9, extra=3):
    """More empty tasks, and more padded slots on every axis (support, query, sub-tasks, sub-task support)."""
    def pad(a, axes, fill=0):  # fill None: repeat the last slot (as the package pads features)
        widths = [(0, extra if i in axes else 0) for i in range(a.ndim)]
        return np.pad(a, widths, mode="edge") if fill is None else np.pad(a, widths, constant_values=fill)
    out = dict(bundle)
    for name in ("support", "query"):
        out[name] = {k: pad(v, {1}, None) for k, v in bundle[name].items()}
        out[f"{name}_label"] = pad(bundle[f"{name}_label"], {1})
        out[f"{name}_mask"] = pad(bundle[f"{name}_mask"], {1})
    out["subtask_query_index"] = {d: pad(v, {1}) for d, v in bundle["subtask_query_index"].items()}
    out["subtask_support_index"] = {d: pad(v, {1, 2}) for d, v in bundle["subtask_support_index"].items()}
    out["subtask_support_mask"] = {d: pad(v, {1, 2}) for d, v in bundle["subtask_support_mask"].items()}
    out["subtask_key"] = {d: pad(v, {1}, "") for d, v in bundle["subtask_key"].items()}
    out = {k: v for k, v in out.items() if not k.endswith(("_time", "_keys"))}
    return pad_task_count(out, tasks)


def test_padding_changes_nothing(two_level):
    bundle, spec = _bundle(two_level)
    model = _model(spec, steps=1)
    loss, grads, logits, _ = model.compute_gradients(bundle)
    p_loss, p_grads, p_logits, _ = model.compute_gradients(_pad_bundle(bundle))
    np.testing.assert_allclose(float(p_loss), float(loss), rtol=1e-5)
    q = bundle["query_mask"] > 0
    np.testing.assert_allclose(p_logits.numpy()[:len(q), :q.shape[1]][q], logits.numpy()[q], rtol=1e-5, atol=1e-6)
    assert _max_rel_err(p_grads, grads) < 1e-4


def _check_subtasks(bundle, d):
    """Every query sample's sub-task holds exactly the task's real support samples with its key, all of
    them no later than the query sample."""
    for t in range(len(bundle["query_mask"])):
        for q in np.flatnonzero(bundle["query_mask"][t]):
            m = bundle["subtask_query_index"][d][t, q]
            key = bundle["query_keys"][d][t, q]
            assert bundle["subtask_key"][d][t, m] == key
            real = bundle["subtask_support_mask"][d][t, m] > 0
            slots = bundle["subtask_support_index"][d][t, m][real]
            expected = [s for s in np.flatnonzero(bundle["support_mask"][t]) if bundle["support_keys"][d][t, s] == key]
            assert sorted(slots) == expected
            assert (bundle["support_time"][t, slots] <= bundle["query_time"][t, q]).all()


def test_subtask_support_is_the_tasks_earlier_samples_with_the_key(two_level):
    df, spec = two_level
    train, valid, test = lt.time_split(df, spec)
    for tasks in (lt.split_tasks(df, spec, max_samples_per_task=20),
                  lt.paired_tasks(valid, test, spec, max_support=12, max_query=8)):
        _check_subtasks(tasks.arrays, "user_x_type")
        assert (tasks.arrays["subtask_key"]["user_x_type"] != "").sum() > len(tasks)  # several per task


def test_spec_and_model_round_trip(two_level, tmp_path):
    bundle, spec = _bundle(two_level)
    assert lt.FeatureSpec.from_json(spec.to_json()) == spec
    assert "task_keys" not in lt.make_synthetic(num_tasks=5)[1].to_dict()  # one definition: JSON as before
    model = _model(spec, steps=1)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.meta_block.names == ["user", "user_x_type"]
    for a, b in zip(loaded.trainable_variables, model.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for d in ("user", "user_x_type"):  # each definition's weights reach its own block, with its values
        block = loaded.meta_block.blocks[d]
        split = loaded.meta_block.split(loaded.meta_block.trainable_variables)[d]
        assert all(a is b for a, b in zip(split, block.trainable_variables))
        for a, b in zip(block.trainable_variables, model.meta_block.blocks[d].trainable_variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    raw = {k: v[:, 0] for k, v in bundle["query"].items()}
    np.testing.assert_allclose(loaded(raw), model(raw), rtol=1e-6)


def test_bad_definitions_name_the_fix(two_level):
    df, spec = two_level
    with pytest.raises(lt.FeatureError, match="must refine"):
        dataclasses.replace(spec, task_keys={"user": "user_id", "type": "item_type_key"}).validate(
            df.assign(item_type_key=df["item_type"]))
    with pytest.raises(lt.FeatureError, match="lack the primary"):
        dataclasses.replace(spec, task_keys={"user_x_type": "user_item_type"})
    with pytest.raises(ValueError, match="not task definitions of the spec"):
        _model(spec, definitions=("user", "genre"))
    one = lt.make_synthetic(num_tasks=20, mean_samples_per_task=16)[1]
    with pytest.raises(ValueError, match="lacks the sub-tasks"):
        model = _model(spec)
        model.compute_gradients({k: v for k, v in _bundle(two_level)[0].items() if not k.startswith("subtask")})
    assert one.definitions == {"task": "user_id"}


def test_task_tfrecords_refuse_several_definitions_up_front(two_level, tmp_path):
    from limaml_tf.tfrecords import write_tasks

    df, spec = two_level
    with pytest.raises(lt.FeatureError, match=r"several task definitions .*split_tasks"):
        write_tasks(lt.split_tasks(df, spec, max_samples_per_task=16), str(tmp_path / "tasks"))
    assert not (tmp_path / "tasks").exists() or not any((tmp_path / "tasks").iterdir())
