"""The closed-form inner solver (`limaml_tf.closed_form`) against slow references that share none of
its code: a per-task loop whose gradient and Hessian come from autodiff of the regularized loss
itself, a generic optimizer's minimum, and central finite differences in float64."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf

import limaml_tf as lt
from limaml_tf import closed_form
from limaml_tf import export as lt_export


def _problem(seed=0, tasks=4, slots=7, k=3, padded=2):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (tasks, slots))
    factors = rng.normal(0, 1, (tasks, slots, k))
    labels = rng.integers(0, 2, (tasks, slots)).astype(float)
    mask = np.ones((tasks, slots))
    mask[:, slots - padded:] = 0.0  # padded slots: garbage values that must not matter
    mask[-1] = 0.0  # a task with no real support sample
    return base, factors, labels, mask


def _task_objective(delta, base, factors, labels, mask, l2):
    """Σ_s m_s ℓ(y_s, b_s + <δ, g_s>) + λ/2 |δ|² of one task (float64)."""
    logits = base + tf.linalg.matvec(factors, delta)
    loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(mask * loss) + 0.5 * l2 * tf.reduce_sum(delta ** 2)


def _reference_newton(base, factors, labels, mask, l2, steps):
    """Per task: gradient and Hessian of `_task_objective` by autodiff, then δ ← δ − H⁻¹ g."""
    out = []
    for t in range(base.shape[0]):
        args = [tf.constant(a[t], tf.float64) for a in (base, factors, labels, mask)]
        delta = tf.zeros([factors.shape[-1]], tf.float64)
        for _ in range(steps):
            with tf.GradientTape() as outer:
                outer.watch(delta)
                with tf.GradientTape() as inner:
                    inner.watch(delta)
                    value = _task_objective(delta, *args, l2)
                grad = inner.gradient(value, delta)
            hessian = outer.jacobian(grad, delta)
            delta = delta - tf.constant(np.linalg.solve(hessian.numpy(), grad.numpy()))
        out.append(delta.numpy())
    return np.stack(out)


@pytest.mark.parametrize("steps", [1, 3])
def test_newton_steps_equal_a_per_task_autodiff_reference(steps):
    base, factors, labels, mask = _problem()
    got = closed_form.solve(base, factors, labels, mask, 0.7, steps).numpy()
    want = _reference_newton(base, factors, labels, mask, 0.7, steps)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    assert np.abs(got[:-1]).min() > 1e-4  # real tasks move (so the comparison sees every entry) ...
    np.testing.assert_array_equal(got[-1], 0.0)  # ... a task with no support sample does not


def test_many_steps_reach_the_minimum_of_the_regularized_loss():
    base, factors, labels, mask = _problem(seed=1)
    got = closed_form.solve(base, factors, labels, mask, 0.5, 12).numpy()
    for t in range(base.shape[0] - 1):
        fun = lambda d: float(_task_objective(tf.constant(d), *(tf.constant(a[t]) for a in (base, factors, labels, mask)),
                                              0.5))  # noqa: E731
        best = scipy.optimize.minimize(fun, np.zeros(factors.shape[-1]), method="Nelder-Mead",
                                       options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20_000}).x
        np.testing.assert_allclose(got[t], best, atol=2e-4)


def test_padded_slots_change_nothing():
    base, factors, labels, mask = _problem(seed=2)
    noisy = [a.copy() for a in (base, factors, labels)]
    for a in noisy:
        a[mask == 0] = 1e3 if a.ndim == 2 else -7.0  # padding with absurd values
    np.testing.assert_allclose(closed_form.solve(*noisy, mask, 0.3, 2).numpy(),
                               closed_form.solve(base, factors, labels, mask, 0.3, 2).numpy(), rtol=1e-5, atol=1e-6)


def test_query_loss_gradient_through_the_solve_matches_finite_differences():
    """d(query loss of the solved δ)/d(support logits, support factors, λ): the second-order path the outer
    update takes, against central differences of the reference solver in float64."""
    base, factors, labels, mask = _problem(seed=3, tasks=2, slots=5, k=2, padded=1)
    rng = np.random.default_rng(4)
    q_base, q_factors, q_labels = rng.normal(0, 1, (2, 4)), rng.normal(0, 1, (2, 4, 2)), rng.integers(0, 2, (2, 4))

    def query_loss_reference(b, g, l2):
        delta = _reference_newton(b, g, labels, mask, l2, 1)
        logits = q_base + np.einsum("tqk,tk->tq", q_factors, delta)
        return float(np.sum(np.logaddexp(0, logits) - q_labels * logits))

    b, g, l2 = tf.Variable(base, dtype=tf.float32), tf.Variable(factors, dtype=tf.float32), tf.Variable(0.8)
    with tf.GradientTape() as tape:
        delta = closed_form.solve(b, g, labels, mask, l2, 1)
        logits = q_base + tf.einsum("tqk,tk->tq", tf.constant(q_factors, tf.float32), delta)
        loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.constant(q_labels, tf.float32),
                                                                     logits=tf.cast(logits, tf.float32)))
    d_b, d_g, d_l2 = tape.gradient(loss, [b, g, l2])
    eps = 1e-5
    for index in [(0, 0), (1, 2), (0, 4)]:  # (0, 4) is a padded slot: its gradient must be exactly 0
        plus, minus = base.copy(), base.copy()
        plus[index] += eps
        minus[index] -= eps
        fd = (query_loss_reference(plus, factors, 0.8) - query_loss_reference(minus, factors, 0.8)) / (2 * eps)
        assert d_b.numpy()[index] == pytest.approx(fd, rel=2e-3, abs=1e-5)
    for index in [(0, 1, 0), (1, 3, 1)]:
        plus, minus = factors.copy(), factors.copy()
        plus[index] += eps
        minus[index] -= eps
        fd = (query_loss_reference(base, plus, 0.8) - query_loss_reference(base, minus, 0.8)) / (2 * eps)
        assert d_g.numpy()[index] == pytest.approx(fd, rel=2e-3, abs=1e-5)
    fd = (query_loss_reference(base, factors, 0.8 + eps) - query_loss_reference(base, factors, 0.8 - eps)) / (2 * eps)
    assert float(d_l2) == pytest.approx(fd, rel=2e-3, abs=1e-5)
    assert d_b.numpy()[0, 4] == 0.0 and abs(fd) > 1e-3


# -- through LiMAMLModel: training gradient, Algorithm 2b, the adapter export --------------------------

def _ridge_model(spec, steps=1, factor_dim=2, **kw):
    from conftest import tiny_blocks

    meta, glob = tiny_blocks(spec, output_dim=3 + factor_dim)
    glob = lt.FactorizedGlobalBlock(glob, spec.other_features, factor_dim=factor_dim, embedding_dim=2)
    model = lt.LiMAMLModel(meta, glob, spec, inner_steps=steps, inner_solver="ridge", ridge_l2=0.6, **kw)
    rng = np.random.default_rng(5)
    for v in model.trainable_variables:  # non-trivial weights (so every term of the solve matters)
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    return model


def _reference_delta(model, x, y):
    """One task's δ by `_reference_newton`'s autodiff steps, written against the blocks (differentiable)."""
    emb = model.meta_block(x)
    base = tf.reshape(model.global_block({**x, "meta_embedding": emb}), [-1])
    factors = model.global_block.item_factors(x)
    l2 = tf.nn.softplus(model.ridge.raw)
    delta = tf.zeros([factors.shape[-1]])
    for _ in range(model.inner_steps):
        with tf.GradientTape() as outer:
            outer.watch(delta)
            with tf.GradientTape() as inner:
                inner.watch(delta)
                value = _task_objective(delta, base, factors, y, tf.ones_like(y), l2)
            grad = inner.gradient(value, delta)
        delta = delta - tf.linalg.solve(outer.jacobian(grad, delta), grad[:, None])[:, 0]
    return delta


@pytest.mark.parametrize("steps", [2])  # two Newton steps: the second starts from a non-zero δ
def test_ridge_model_gradient_matches_a_per_task_loop(synthetic, steps):
    """The outer gradient of LiMAMLModel(inner_solver="ridge") — through the solve, to both blocks and λ —
    against a per-task Python loop over real (unpadded) samples, with the Newton steps from autodiff."""
    df, spec = synthetic
    bundle = next(lt.split_tasks(df, spec, max_samples_per_task=30).batches(6))
    assert (bundle["support_mask"].sum(1) < bundle["support_mask"].shape[1]).any()  # padded support slots
    model = _ridge_model(spec, steps)
    loss, grads, _, _ = model.compute_gradients(bundle)
    encoded = model.encode_bundle(bundle)
    with tf.GradientTape() as tape:
        losses = []
        for t in range(bundle["query_mask"].shape[0]):
            n_s, n_q = (int(bundle[f"{s}_mask"][t].sum()) for s in ("support", "query"))
            if not n_q:
                continue
            real = lambda name, n: {k: v[t, :n] for k, v in encoded[name].items()}  # noqa: E731
            delta = _reference_delta(model, real("support", n_s), tf.cast(bundle["support_label"][t, :n_s], tf.float32))
            q_x = real("query", n_q)
            logits = (tf.reshape(model.global_block({**q_x, "meta_embedding": model.meta_block(q_x)}), [-1])
                      + tf.linalg.matvec(model.global_block.item_factors(q_x), delta))
            q_y = tf.cast(bundle["query_label"][t, :n_q], tf.float32)
            losses.append(tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=q_y, logits=logits)))
        ref_loss = tf.add_n(losses) / len(losses)
    ref_grads = tape.gradient(ref_loss, model.trainable_variables)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    paths = [v.path for v in model.trainable_variables]
    assert any("ridge_l2" in p for p in paths)
    for path, g, r in zip(paths, grads, ref_grads):
        g, r = tf.convert_to_tensor(g), tf.convert_to_tensor(r)
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=2e-3, atol=2e-5, err_msg=path)
        assert float(tf.reduce_max(tf.abs(r))) > 0, f"{path}: no gradient reaches it"


@pytest.mark.heavy
def test_ridge_adapter_export_gives_the_solved_embeddings(synthetic, tmp_path):
    """Algorithm 2b with the closed-form solver, through the exported adapter SavedModel: [e, u0 + δ] of each
    task's latest recent sample, δ from the per-task reference."""
    from limaml_tf.artifacts import EMBED_TASKS, adapter_inputs
    from limaml_tf.tasks import recent_tasks

    df, spec = synthetic
    model = _ridge_model(spec, steps=2)
    path = lt_export.export_adapter(model, str(tmp_path), "ridge", steps=2)
    tasks = recent_tasks(df, spec, 6)
    # the refresh's workers call this endpoint of the SavedModel (beam_pipelines.adapter_handler)
    adapter = tf.saved_model.load(path)
    got = getattr(adapter, EMBED_TASKS)(adapter_inputs(tasks.arrays))["meta_embedding"].numpy()
    a = tasks.arrays
    encoded = model.encode_samples({k: tf.constant(v) for k, v in a["support"].items()}, a["support_mask"].shape)
    want, priors = [], []
    for t in range(len(a["task_key"])):
        n = int(a["support_mask"][t].sum())
        x = {k: v[t, :n] for k, v in encoded.items()}
        delta = _reference_delta(model, x, tf.constant(a["support_label"][t, :n], tf.float32))
        latest = model.meta_block({k: v[n - 1:n] for k, v in x.items()})[0]
        priors.append(latest.numpy())
        want.append(latest.numpy() + np.concatenate([np.zeros(3), delta.numpy()]))
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-4, atol=1e-5)
    assert np.abs(got - np.stack(priors))[:, 3:].min() > 1e-4  # every task's vector moved from its prior


@pytest.mark.heavy
def test_ridge_model_served_from_its_embeddings_scores_as_in_training(synthetic, tmp_path):
    """The product path of the closed-form solver: the adapter SavedModel embeds each task from its support
    set, the serving SavedModel (global block only) scores its query rows with that embedding; equal to the
    model's own adapted query probabilities (`adapt_and_predict`: adapt on support, score query), since the
    synthetic tasks' meta features are constant per task."""
    from limaml_tf.artifacts import EMBED_TASKS, SERVING_SIGNATURE, adapter_inputs

    df, spec = synthetic
    model = _ridge_model(spec, steps=1)
    t = df[spec.timestamp].quantile(0.7)
    bundle = next(lt.paired_tasks(df[df[spec.timestamp] <= t], df[df[spec.timestamp] > t], spec, max_support=16,
                                  max_query=8).batches(8))
    assert (bundle["support_mask"].sum(1) > 0).all()
    want = model.adapt_and_predict(bundle, steps=1)
    serving = tf.saved_model.load(lt_export.export_serving(model, str(tmp_path), "ridge", train_df=df))
    adapter = tf.saved_model.load(lt_export.export_adapter(model, str(tmp_path), "ridge", steps=1))
    emb = getattr(adapter, EMBED_TASKS)(adapter_inputs(bundle))["meta_embedding"].numpy()
    tasks, slots = bundle["query_mask"].shape
    rows = {k: tf.constant(np.reshape(v, (tasks * slots, *v.shape[2:]))) for k, v in bundle["query"].items()}
    served = serving.signatures[SERVING_SIGNATURE](**rows, meta_embedding=tf.constant(np.repeat(emb, slots, 0)))
    got = served["probability"].numpy().reshape(tasks, slots)
    mask = bundle["query_mask"] > 0
    np.testing.assert_allclose(got[mask], want[mask], rtol=1e-4, atol=1e-5)
    unadapted = model.adapt_and_predict(bundle, steps=0)
    assert np.abs(unadapted - want)[mask].max() > 1e-3  # the solve changed the scores the test compares
