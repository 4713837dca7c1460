"""The closed-form inner solver (`limaml_tf.closed_form`) against slow references that share none of
its code: a per-task loop whose gradient and Hessian come from autodiff of the regularized loss
itself, a generic optimizer's minimum, and central finite differences in float64."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf

from limaml_tf import closed_form


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
