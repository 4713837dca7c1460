"""The vectorized meta-gradient against independent references.

The reference below shares nothing with the model's inner loop but the blocks'
`stateless_call`: it loops over tasks in Python (eager), drops padded samples by
slicing instead of masking, and writes the MAML objective out by hand.
"""

import numpy as np
import pytest
import tensorflow as tf

import limaml_tf as lt
from conftest import tiny_blocks, with_id_feature


def _bce(y, logits):
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))


def reference_meta_gradients(model, bundle, steps, lr, first_order, adapt_global=False, head=None):
    """Per-task Python loop: the MAML query loss (mean over tasks with a query sample) and its gradient.
    With `adapt_global`, the inner loop adapts the global block's weights too (entire-network MAML).
    With Meta-SGD (`model.inner_rates`), each parameter steps by its own learned rate tensor. With
    `head` (names of meta-block weights), only those weights take the inner steps (head-only, ANIL)."""
    meta_vars = model.meta_block.trainable_variables
    global_vars = model.global_block.trainable_variables
    encoded = model.encode_bundle(bundle)
    dtype = model.compute_dtype
    n_meta = len(meta_vars)

    def forward(params, x):
        global_params = params[n_meta:] if adapt_global else [v.value for v in global_vars]
        emb, _ = model.meta_block.stateless_call(params[:n_meta], [], x)
        out, _ = model.global_block.stateless_call(global_params, [], {**x, "meta_embedding": emb})
        return tf.reshape(out, [-1])

    def real(name, t):
        n = int(np.sum(bundle[f"{name}_mask"][t]))
        x = {k: v[t, :n] for k, v in encoded[name].items()}
        return x, tf.cast(bundle[f"{name}_label"][t, :n], dtype)

    with tf.GradientTape() as outer:
        losses = []
        for t in range(bundle["query_mask"].shape[0]):
            q_x, q_y = real("query", t)
            if len(q_y) == 0:
                continue
            s_x, s_y = real("support", t)
            params = [v.value for v in meta_vars] + ([v.value for v in global_vars] if adapt_global else [])
            rates = [r.value for r in model.inner_rates] if model.inner_rates else [lr] * len(params)
            for _ in range(steps):
                if len(s_y) == 0:
                    break
                with tf.GradientTape() as inner:
                    inner.watch(params)
                    loss = _bce(s_y, forward(params, s_x))
                grads = [tf.convert_to_tensor(g) for g in inner.gradient(loss, params)]
                if first_order:
                    grads = [tf.stop_gradient(g) for g in grads]
                params = [p if head is not None and i < n_meta and meta_vars[i].path not in head else p - r * g
                          for i, (p, r, g) in enumerate(zip(params, rates, grads))]
            losses.append(_bce(q_y, forward(params, q_x)))
        total = tf.add_n(losses) / len(losses)
    grads = outer.gradient(total, model.trainable_variables)
    return total, [tf.convert_to_tensor(g) if g is not None else tf.zeros_like(v)
                   for g, v in zip(grads, model.trainable_variables)]


def _model(spec, steps, first_order, lr=0.7, **kw):
    return lt.LiMAMLModel(*tiny_blocks(spec), spec, inner_steps=steps, inner_learning_rate=lr,
                          first_order=first_order, **kw)


def _bundle(synthetic, tasks=6, cap=12):
    df, spec = synthetic
    ts = lt.split_tasks(df, spec, max_samples_per_task=cap)
    return next(ts.batches(tasks)), spec


def _max_rel_err(a, b):
    dense = tf.convert_to_tensor  # embedding-table gradients are tf.IndexedSlices
    return max(float(tf.reduce_max(tf.abs(dense(x) - dense(y))) / (tf.reduce_max(tf.abs(dense(y))) + 1e-12))
               for x, y in zip(a, b))


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_vectorized_gradient_matches_per_task_loop(synthetic, steps, first_order):
    bundle, spec = _bundle(synthetic)
    model = _model(spec, steps, first_order)
    loss, grads, _, _ = model.compute_gradients(bundle)
    ref_loss, ref_grads = reference_meta_gradients(model, bundle, steps, 0.7, first_order)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    assert _max_rel_err(grads, ref_grads) < 1e-4


@pytest.mark.heavy
@pytest.mark.parametrize("steps", [1, 2])
def test_entire_network_maml_matches_per_task_loop(synthetic, steps):
    bundle, spec = _bundle(synthetic)
    model = _model(spec, steps, first_order=False, adapt_global_block=True)
    loss, grads, _, _ = model.compute_gradients(bundle)
    ref_loss, ref_grads = reference_meta_gradients(model, bundle, steps, 0.7, False, adapt_global=True)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    assert _max_rel_err(grads, ref_grads) < 1e-4
    plain = reference_meta_gradients(model, bundle, steps, 0.7, False, adapt_global=False)[1]
    assert _max_rel_err(grads, plain) > 1e-3, "adapting the global block changed nothing"


@pytest.mark.parametrize("steps", [2])
def test_head_only_adaptation_matches_per_task_loop(synthetic, steps):
    """head_only=True (ANIL): the inner steps move the meta block's last layer only; the outer gradient
    still reaches every weight, through the adapted head."""
    bundle, spec = _bundle(synthetic)
    model = _model(spec, steps, first_order=False, head_only=True)
    head = {v.path for v in model.meta_block.head.trainable_variables}
    assert 0 < len(head) < len(model.meta_block.trainable_variables)
    loss, grads, _, _ = model.compute_gradients(bundle)
    ref_loss, ref_grads = reference_meta_gradients(model, bundle, steps, 0.7, False, head=head)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    assert _max_rel_err(grads, ref_grads) < 1e-4
    every_weight = reference_meta_gradients(model, bundle, steps, 0.7, False)[1]
    assert _max_rel_err(grads, every_weight) > 1e-3, "head-only adaptation adapted every weight"


@pytest.mark.parametrize("steps", [1, 2])
def test_meta_sgd_matches_per_task_loop(synthetic, steps):
    """Meta-SGD: learned per-weight inner rates (set to distinct random values here) and their gradient
    through the inner loop, against the per-task reference."""
    bundle, spec = _bundle(synthetic)
    model = _model(spec, steps, first_order=False, learn_inner_learning_rate=True)
    rng = np.random.default_rng(1)
    for r in model.inner_rates:
        r.assign(rng.uniform(0.2, 1.2, r.shape).astype("float32"))
    loss, grads, _, _ = model.compute_gradients(bundle)
    ref_loss, ref_grads = reference_meta_gradients(model, bundle, steps, None, False)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    assert _max_rel_err(grads, ref_grads) < 1e-4
    rate_paths = {r.path for r in model.inner_rates}
    rate_grads = [g for g, v in zip(grads, model.trainable_variables) if v.path in rate_paths]
    assert len(rate_grads) == len(rate_paths) and all(float(tf.reduce_max(tf.abs(g))) > 0 for g in rate_grads)


def test_meta_sgd_with_an_id_block(synthetic):
    """The learned rates of a `TaskParameterizedMetaBlock` are shaped like one task's parameters (a row)."""
    df, spec, user = with_id_feature(*synthetic)
    model = lt.LiMAMLModel(lt.IDEmbeddingMetaBlock(user, output_dim=3), tiny_blocks(spec)[1], spec,
                           learn_inner_learning_rate=True)
    assert [tuple(r.shape) for r in model.inner_rates] == [(3,)]
    bundle = next(lt.split_tasks(df, spec, max_samples_per_task=12).batches(4))
    loss, grads, _, _ = model.compute_gradients(bundle)
    assert np.isfinite(float(loss)) and float(tf.reduce_max(tf.abs(grads[-1]))) > 0


def _as_tensors(bundle):
    return tf.nest.map_structure(lambda a: tf.constant(a.astype(str) if a.dtype == object else a), bundle)


@pytest.mark.heavy
@pytest.mark.parametrize("steps,adapt_global,options", [(1, False, {}), (3, False, {}), (2, True, {}),
                                                        (1, False, {"mixed_loss_weight": 0.7})],
                         ids=["n1", "n3", "entire-network-n2", "mixed-loss"])
def test_second_order_gradient_matches_finite_differences(synthetic, float64, steps, adapt_global, options):
    """Central differences on entries of every block (meta and global) whose gradient is not trivially
    zero (unused embedding rows are skipped: they would match at 0 on both sides and prove nothing).
    "mixed-loss": the outer objective + λ × the un-adapted network's loss on every real sample."""
    bundle, spec = _bundle(synthetic, tasks=4, cap=10)
    model = _model(spec, steps, first_order=False, lr=1.5, adapt_global_block=adapt_global, **options)
    bundle = _as_tensors(bundle)
    objective = tf.function(lambda b: model.compute_gradients(b)[0])  # traced once, reads the variables
    _, grads, _, _ = model.compute_gradients(bundle)
    rng = np.random.default_rng(0)
    eps = 1e-6
    checked = {"meta": 0, "global": 0}
    meta_paths = {v.path for v in model.meta_block.trainable_variables}
    for var, grad in zip(model.trainable_variables, grads):
        value, grad = var.numpy(), tf.convert_to_tensor(grad).numpy()
        live = np.argwhere(np.abs(grad) > 1e-8)
        for idx in map(tuple, live[rng.permutation(len(live))[:2]]):
            plus, minus = value.copy(), value.copy()
            plus[idx] += eps
            minus[idx] -= eps
            var.assign(plus)
            f_plus = float(objective(bundle))
            var.assign(minus)
            f_minus = float(objective(bundle))
            var.assign(value)
            fd = (f_plus - f_minus) / (2 * eps)
            assert abs(fd - grad[idx]) <= 1e-6 + 1e-5 * abs(fd), (var.path, idx, fd, grad[idx])
            checked["meta" if var.path in meta_paths else "global"] += 1
    assert checked["meta"] >= 6 and checked["global"] >= 6, checked


@pytest.mark.heavy
def test_first_order_misses_what_finite_differences_see(synthetic, float64):
    """Second order must differ from first order on the meta block, and FD must side with second order."""
    bundle, spec = _bundle(synthetic, tasks=4, cap=10)
    so = _model(spec, 1, first_order=False, lr=1.5)
    fo = _model(spec, 1, first_order=True, lr=1.5)
    fo.set_weights(so.get_weights())
    _, g_so, _, _ = so.compute_gradients(bundle)
    _, g_fo, _, _ = fo.compute_gradients(bundle)
    n_meta = len(so.meta_block.trainable_variables)
    meta_so = np.concatenate([np.ravel(g) for g in g_so[:n_meta]])
    meta_fo = np.concatenate([np.ravel(g) for g in g_fo[:n_meta]])
    assert np.abs(meta_so).max() > 1e-4, "meta-block gradient is zero: the inner loop is disconnected"
    assert np.abs(meta_so - meta_fo).max() > 1e-3 * np.abs(meta_so).max(), "second order == first order"


def test_padding_changes_nothing(synthetic, float64):
    """Extra padded sample slots and extra empty tasks leave loss and gradients identical."""
    df, spec = synthetic
    model = _model(spec, 2, first_order=False)
    b_small = next(lt.split_tasks(df, spec, max_samples_per_task=12).batches(5))
    # A padded copy: 3 more (edge-repeated) sample slots per set and 3 more empty tasks.
    def pad(a, extra_slots, extra_tasks):
        if a.ndim >= 2:
            edge = np.repeat(a[:, -1:], extra_slots, axis=1)
            a = np.concatenate([a, edge], axis=1)
        fill = np.zeros((extra_tasks,) + a.shape[1:], a.dtype) if a.dtype != object else \
            np.full((extra_tasks,) + a.shape[1:], "", dtype=object)
        return np.concatenate([a, fill])
    padded = {}
    for k, v in b_small.items():
        if isinstance(v, dict):
            padded[k] = {n: pad(a, 3, 3) for n, a in v.items()}
        elif k.endswith("_mask"):
            m = np.concatenate([v, np.zeros((v.shape[0], 3), v.dtype)], 1)
            padded[k] = np.concatenate([m, np.zeros((3, m.shape[1]), v.dtype)])
        else:
            padded[k] = pad(v, 3, 3)
    # Garbage in padded label slots must not matter either.
    padded["support_label"][:, -3:] = 1.0
    loss_a, grads_a, _, _ = model.compute_gradients(b_small)
    loss_b, grads_b, _, _ = model.compute_gradients(padded)
    np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-12)
    assert _max_rel_err(grads_b, grads_a) < 1e-10  # float64: only summation order may differ


def test_chunking_gives_the_same_gradient(synthetic):
    bundle, spec = _bundle(synthetic, tasks=6)
    whole = _model(spec, 1, first_order=False)
    chunked = _model(spec, 1, first_order=False, max_tasks_per_chunk=4)
    chunked.set_weights(whole.get_weights())
    loss_a, grads_a, _, _ = whole.compute_gradients(bundle)
    loss_b, grads_b, _, _ = chunked.compute_gradients(bundle)
    np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-5)
    assert _max_rel_err(grads_b, grads_a) < 1e-5


def test_inner_loop_really_vectorizes(synthetic):
    """pfor must convert every op: with fallback disabled, a non-vectorizable op raises."""
    bundle, spec = _bundle(synthetic)
    model = _model(spec, 2, first_order=False)
    encoded = model.encode_bundle(bundle)
    fn = tf.function(lambda e: model.adapt_and_score(e, 2, 0.5, training=True, fallback_to_while_loop=False))
    loss, logits = fn(encoded)
    assert logits.shape == (6, bundle["query_mask"].shape[1])
    graph = fn.get_concrete_function(encoded).graph.as_graph_def()
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert "While" not in ops and "StatelessWhile" not in ops, "the inner loop fell back to a while loop"


def test_aggregations_by_hand():
    """mean / max / cosine pooling of a task's sample embeddings against values worked out by hand."""
    from limaml_tf.maml import pool

    embs = tf.constant([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [9.0, 9.0]])
    mask = tf.constant([1.0, 1.0, 1.0, 0.0])  # the last sample is padding
    latest = tf.constant([1.0, 0.0])
    np.testing.assert_allclose(pool(embs, mask, latest, "mean"), [0.0, 2.0 / 3.0], atol=1e-6)
    np.testing.assert_allclose(pool(embs, mask, latest, "max"), [1.0, 2.0], atol=1e-6)
    # cos with latest: 1, 0, -1 (clipped to 0) -> weights 1, 0, 0 -> the first embedding
    np.testing.assert_allclose(pool(embs, mask, latest, "cosine"), [1.0, 0.0], atol=1e-6)
    # cos with [0, 1]: 0.8 and 0.6 -> (0.8 * [3, 4] + 0.6 * [4, 3]) / 1.4 = [4.8, 5.0] / 1.4
    two = tf.constant([[3.0, 4.0], [4.0, 3.0]])
    np.testing.assert_allclose(pool(two, tf.ones([2]), tf.constant([0.0, 1.0]), "cosine"), [4.8 / 1.4, 5.0 / 1.4],
                               rtol=1e-5)


@pytest.mark.parametrize("aggregation", ["mean", "max", "cosine", "latest"])
def test_meta_embeddings_without_adaptation_pool_the_blocks_outputs(synthetic, aggregation):
    """With 0 steps, Algorithm 2b pools the un-adapted meta block's embeddings of the real samples."""
    from limaml_tf.maml import pool

    bundle, spec = _bundle(synthetic, tasks=3, cap=12)
    model = _model(spec, 1, first_order=False)
    enc = model.encode_bundle(bundle)
    n = bundle["support_mask"].sum(1).astype(int)
    latest = {k: tf.gather(v, n - 1, batch_dims=1) for k, v in enc["support"].items()}
    got = model.meta_embeddings(enc["support"], enc["support_label"], enc["support_mask"], latest, 0, 0.5,
                                aggregation).numpy()
    for t in range(3):
        embs = model.embed({k: v[t, : n[t]] for k, v in enc["support"].items()})
        last = embs[-1]
        expected = last if aggregation == "latest" else pool(embs, tf.ones([n[t]]), last, aggregation)
        np.testing.assert_allclose(got[t], expected, rtol=1e-5, atol=1e-6)
