"""The closed-form inner solver (`LiMAMLModel(inner_solver="ridge")`): each task's vector solved exactly.

The global block is a `FactorizedGlobalBlock` (or any block with `item_factors(features) -> [N, k]` whose
logit is affine in the meta embedding's last k entries u, with slope `item_factors`): logit =
f(x, e) + <u, g(x)> for a meta embedding [e, u]. Per task, with the un-adapted network's logits b_s on
its support samples, their item factors g_s, labels y_s and mask m_s, the solver takes `steps` Newton
steps from δ = 0 on the L2-regularized logistic loss of the task's residual vector δ:

    min_δ  Σ_s m_s · ℓ(y_s, b_s + <δ, g_s>) + λ/2 · |δ|²
    δ ← δ − (Σ_s m_s p_s (1 − p_s) g_s g_sᵀ + λ I)⁻¹ (Σ_s m_s (p_s − y_s) g_s + λ δ),   p_s = σ(b_s + <δ, g_s>)

One step is iteratively reweighted least squares once: a weighted ridge regression of the working
residual (Bertinetto et al., ICLR 2019 "R2-D2"; the shared-predictor-plus-ridge-residual of RESUS, Wang
et al., TOIS 2023). The sum (not the mean) over the support keeps λ a prior: a task with few samples
stays near the shared prediction, one with many follows its own data. λ = softplus(learned). The
adapted meta embedding of a sample is [e, u0 + δ] (the meta block gives the prior [e, u0]); the query
loss is differentiated through the solve (`tf.linalg.solve`), so the outer update learns the item
factors, the prior and λ for the solve. Nothing is vectorized per task: the blocks run on all support
and query slots at once with the shared weights, and the solve is one batched k × k system per task.
"""

from __future__ import annotations

import tensorflow as tf

from limaml_tf import maml


def check_network(net: maml.Network, meta_dim: int | None = None) -> int:
    """The factor dimension k of a network the ridge solver can adapt; a named error otherwise."""
    factor_dim = getattr(net.global_block, "factor_dim", None)
    if not callable(getattr(net.global_block, "item_factors", None)) or not factor_dim:
        raise ValueError(f"inner_solver='ridge' needs a global block with item factors (its logit affine in the meta "
                         f"embedding's last factor_dim entries), got {type(net.global_block).__name__}: wrap it, "
                         "FactorizedGlobalBlock(global_block, item_features, factor_dim=k)")
    if net.adapt_global_block:
        raise ValueError("inner_solver='ridge' solves the task's vector only: use it with adapt_global_block=False")
    if net.sample_loss is not maml.sigmoid_cross_entropy:
        raise ValueError("inner_solver='ridge' solves the logistic loss (Newton steps): leave the model's loss at its "
                         "default (binary cross-entropy on logits)")
    if meta_dim is not None and meta_dim < factor_dim:
        raise ValueError(f"inner_solver='ridge': the meta embedding has {meta_dim} entries, fewer than the global "
                         f"block's factor_dim = {factor_dim}; make the meta block's output_dim at least {factor_dim}")
    return int(factor_dim)


def network_outputs(net: maml.Network, weights: maml.Weights, features, seed, training):
    """The un-adapted network on every slot of `features` ([T, S, ...] encoded): (meta embeddings
    [T, S, d], logits [T, S], item factors [T, S, k])."""
    lead = tf.shape(next(iter(features.values())))[:2]
    flat = {k: maml.merge_task_slots(v) for k, v in features.items()}
    emb = maml.call_block(net.meta_block, weights.meta, flat, seed, training)
    logits = maml.call_block(net.global_block, weights.global_, {**flat, "meta_embedding": emb}, seed, training)
    factors = maml.call_block_method(net.global_block, weights.global_, "item_factors", flat)
    unflat = lambda a: tf.reshape(a, tf.concat([lead, tf.shape(a)[1:]], 0))  # noqa: E731
    return unflat(emb), tf.reshape(logits, lead), unflat(factors)


def solve(base, factors, labels, mask, l2, steps: int):
    """δ [T, k]: `steps` Newton steps from 0 (module docstring) for every task at once. `base` [T, S],
    `factors` [T, S, k], `labels`, `mask` [T, S]; `l2` > 0 a scalar. A task with no real support sample
    gets δ = 0 (its system is λ I, its gradient 0)."""
    base, factors = tf.cast(base, tf.float32), tf.cast(factors, tf.float32)
    labels, mask, l2 = tf.cast(labels, tf.float32), tf.cast(mask, tf.float32), tf.cast(l2, tf.float32)
    k = tf.shape(factors)[-1]
    eye = tf.eye(k, dtype=tf.float32)
    delta = tf.zeros(tf.stack([tf.shape(factors)[0], k]), tf.float32)
    for _ in range(steps):
        p = tf.sigmoid(base + tf.einsum("tsk,tk->ts", factors, delta))
        grad = tf.einsum("tsk,ts->tk", factors, mask * (p - labels)) + l2 * delta
        hessian = tf.einsum("tsk,ts,tsj->tkj", factors, mask * p * (1.0 - p), factors) + l2 * eye
        delta = delta - tf.linalg.solve(hessian, grad[..., None])[..., 0]
    return delta


def _seed(encoded):
    return encoded["task_seed"][0] if "task_seed" in encoded else tf.zeros([2], tf.int64)


def adapt_and_score(net: maml.Network, weights: maml.Weights, encoded, steps: int, l2, training=False,
                    unadapted_loss=False) -> dict:
    """`maml.adapt_and_score` with the closed-form solver: {"query_loss" [T], "query_logits" [T, Q]} and,
    with `unadapted_loss`, "unadapted_loss" [T] (the un-adapted network on every real sample)."""
    check_network(net)  # the compiled loss may have changed since construction
    seed = _seed(encoded)
    _, s_logits, s_factors = network_outputs(net, weights, encoded["support"], seed, training)
    _, q_logits, q_factors = network_outputs(net, weights, encoded["query"], seed + 1, training)
    delta = solve(s_logits, s_factors, encoded["support_label"], encoded["support_mask"], l2, steps)
    logits = tf.cast(q_logits, tf.float32) + tf.einsum("tqk,tk->tq", tf.cast(q_factors, tf.float32), delta)
    out = {"query_loss": maml.task_loss(net, encoded["query_label"], logits, encoded["query_mask"]),
           "query_logits": logits}
    if unadapted_loss:
        labels = tf.concat([encoded["support_label"], encoded["query_label"]], 1)
        mask = tf.concat([encoded["support_mask"], encoded["query_mask"]], 1)
        out["unadapted_loss"] = maml.task_loss(net, labels, tf.concat([s_logits, q_logits], 1), mask)
    return out


def meta_embeddings(net: maml.Network, weights: maml.Weights, support, latest, steps: int, l2,
                    aggregation: str = "latest"):
    """Algorithm 2b with the closed-form solver: per task, δ solved on its recent samples `support` =
    (encoded features [T, S, ...], labels, mask), then the un-adapted meta embedding [e, u0] of its
    `latest` sample (encoded [T, ...]; or pooled over its recent samples, `maml.pool`) with δ added to
    u0. A task with no real recent sample gets the un-adapted embedding (δ = 0). Returns [T, d]."""
    features, labels, mask = support
    seed = tf.zeros([2], tf.int64)
    embs, logits, factors = network_outputs(net, weights, features, seed, False)
    delta = solve(logits, factors, labels, mask, l2, steps)
    last = maml.call_block(net.meta_block, weights.meta, latest, seed, False)
    if aggregation != "latest":
        pooled = tf.vectorized_map(lambda e: maml.pool(e[0], e[1], e[2], aggregation),
                                   (embs, tf.cast(mask, embs.dtype), last))
        last = tf.where(tf.reduce_sum(mask, 1, keepdims=True) > 0, pooled, last)
    k = tf.shape(delta)[-1]
    shift = tf.concat([tf.zeros(tf.stack([tf.shape(delta)[0], tf.shape(last)[-1] - k]), tf.float32), delta], -1)
    return tf.cast(last, tf.float32) + shift
