"""The LiMAML algorithm as pure functions of (network, weights, tensors).

Nothing here knows about Keras training plumbing (optimizers, metrics, distribution strategies):
`LiMAMLModel` calls these functions from its train / test / predict steps, and the adapter export
calls `meta_embeddings` (Algorithm 2b), so each piece of the algorithm exists once.

Vocabulary:
  network  `Network`: the meta block, the global block, whether the global block adapts too
           (entire-network MAML), and the per-sample loss.
  weights  `Weights`: the *values* of the blocks' trainable variables, read once outside the
           vectorized loop (pfor cannot vectorize resource reads), and the Meta-SGD inner rates.
  task     per-task side inputs of the vectorized loop: `id` (the task key encoded by the meta
           block's `task_feature`, 0 when the block has none) and `seed` (int64 [2], see `task_seeds`).
  encoded  an encoded task bundle (`LiMAMLModel.encode_bundle`): support / query feature dicts
           [T, S, ...], `<set>_label`, `<set>_mask` [T, S], `task_id` [T], `task_seed` [T, 2]; with
           several task definitions also the `subtask_*` arrays of `limaml_tf.tasks` (module docstring).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import keras
import tensorflow as tf

from limaml_tf.artifacts import AGGREGATIONS
from limaml_tf.blocks import FEATURES_PART, TaskParameterizedMetaBlock

# A block may draw up to this many random tensors in one forward pass: Keras' SeedGenerator adds 1 to
# the second seed component per draw, and consecutive passes of a task are this far apart.
DRAWS_PER_PASS = 1 << 10


def sigmoid_cross_entropy(labels, logits):
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)


@dataclasses.dataclass(frozen=True)
class Network:
    meta_block: object
    global_block: object
    adapt_global_block: bool = False
    # (labels [N], logits [N]) -> per-sample loss [N], float32
    sample_loss: Callable = sigmoid_cross_entropy
    # positions in the meta block's trainable weights of those a task adapts (None: all of them; head-only
    # adaptation, ANIL: the last layer's)
    adapted_meta: tuple | None = None


class Weights(NamedTuple):
    meta: list
    global_: list
    inner_rates: list | None = None  # Meta-SGD: one rate tensor per adapted parameter (shaped like it)


def masked_mean(values, mask):
    """Mean of `values` over the entries with mask 1, along the last axis (0 where there are none)."""
    mask = tf.cast(mask, values.dtype)
    return tf.reduce_sum(values * mask, -1) / tf.maximum(tf.reduce_sum(mask, -1), 1.0)


def task_loss(net: Network, labels, logits, mask):
    """Masked mean per-sample loss of one task's set; half-precision logits are cast up to float32
    first (mixed precision), as Keras computes losses."""
    if logits.dtype in (tf.float16, tf.bfloat16):
        logits = tf.cast(logits, tf.float32)
    return masked_mean(net.sample_loss(tf.cast(labels, logits.dtype), logits), mask)


def is_seed_state(variable) -> bool:
    return "seed_generator_state" in variable.path


def task_seeds(num_tasks, replica_id=0, num_replicas=1):
    """int64 [T, 2] per-task seed offsets: task t of replica r gets first component t * R + r, so seeds
    are distinct per (task of the whole bundle, replica). Computed before chunking, so a chunked and an
    unchunked run of the same bundle draw the same masks."""
    t = tf.range(tf.cast(num_tasks, tf.int64), dtype=tf.int64)
    first = t * tf.cast(num_replicas, tf.int64) + tf.cast(replica_id, tf.int64)
    return tf.stack([first, tf.zeros_like(first)], axis=1)


def call_block(block, params, inputs, seed, training):
    """block(inputs) with explicit trainable weights; its random layers draw from state + `seed`."""
    non_trainable = [v.value + tf.cast(seed, v.dtype) if is_seed_state(v) else v.value
                     for v in block.non_trainable_variables]
    kwargs = {"training": training} if block._call_has_training_arg else {}
    out, _ = block.stateless_call(params, non_trainable, inputs, **kwargs)
    return out


def call_block_method(block, params, method, *args):
    """block.<method>(*args) with explicit trainable weights (as `call_block`, for a method other than call)."""
    mapping = list(zip(block.trainable_variables, params))
    mapping += [(v, v.value) for v in block.non_trainable_variables]
    with keras.StatelessScope(state_mapping=mapping):
        return getattr(block, method)(*args)


def merge_task_slots(a):
    """[T, S, ...] -> [T * S, ...]: the slots of every task as one batch (blocks run on it with shared weights)."""
    return tf.reshape(a, tf.concat([[-1], tf.shape(a)[2:]], 0))


def with_global_features_part(net: Network, weights: Weights, features):
    """`features` ([T, S, ...] encoded) plus the global block's `features_part`, computed once for all
    tasks and slots, outside the vectorized loop, when the block has one and is not adapted: its value
    is then the same at every inner step (see `limaml_tf.blocks`)."""
    if net.adapt_global_block or not callable(getattr(net.global_block, "features_part", None)):
        return features
    lead = tf.shape(next(iter(features.values())))[:2]
    flat = {k: merge_task_slots(v) for k, v in features.items()}
    part = call_block_method(net.global_block, weights.global_, "features_part", flat)
    return {**features, FEATURES_PART: tf.reshape(part, tf.concat([lead, tf.shape(part)[1:]], 0))}


def _pass_seed(task, forward_pass):
    return task["seed"] + tf.stack([tf.constant(0, tf.int64), tf.cast(forward_pass * DRAWS_PER_PASS, tf.int64)])


def initial_params(net: Network, weights: Weights, task) -> list:
    """The parameters a task adapts, before adaptation: the meta block's weights (or, for a
    `TaskParameterizedMetaBlock`, its small per-task tensors), then the global block's if it adapts."""
    if isinstance(net.meta_block, TaskParameterizedMetaBlock):
        meta = list(task["params"])  # this task's slice of `task_parameters` (gathered outside pfor)
    elif net.adapted_meta is not None:
        meta = [weights.meta[i] for i in net.adapted_meta]
    else:
        meta = list(weights.meta)
    return meta + (list(weights.global_) if net.adapt_global_block else [])


def adapted_param_shapes(net: Network, weights: Weights) -> list:
    """Shapes of the parameters a task adapts (one task's, no leading task axis)."""
    tasks = _tasks(net, weights, tf.zeros([1], tf.int32), tf.zeros([1, 2], tf.int64))
    return [p.shape for p in initial_params(net, weights, tf.nest.map_structure(lambda a: a[0], tasks))]


def split_params(net: Network, params, weights: Weights):
    """(meta-block params, global-block params) of a task's parameter list: with head-only adaptation the
    meta block's whole weight list, its adapted entries taken from `params`."""
    n_meta = len(params) - len(weights.global_) if net.adapt_global_block else len(params)
    meta, global_ = params[:n_meta], (params[n_meta:] if net.adapt_global_block else weights.global_)
    if net.adapted_meta is not None and not isinstance(net.meta_block, TaskParameterizedMetaBlock):
        adapted = dict(zip(net.adapted_meta, meta))
        meta = [adapted.get(i, w) for i, w in enumerate(weights.meta)]
    return meta, global_


def embed(net: Network, meta_params, features, seed, training):
    if isinstance(net.meta_block, TaskParameterizedMetaBlock):
        return net.meta_block.call_with_task_parameters(meta_params, features)
    return call_block(net.meta_block, meta_params, features, seed, training)


def task_logits(net: Network, params, weights: Weights, features, task, forward_pass, training):
    """Logits [N] of one task's samples under its parameters `params`."""
    meta_p, global_p = split_params(net, params, weights)
    seed = _pass_seed(task, forward_pass)
    emb = embed(net, meta_p, features, seed, training)
    logits = call_block(net.global_block, global_p, {**features, "meta_embedding": emb}, seed, training)
    return tf.reshape(logits, [-1])


def adapt(net: Network, weights: Weights, support, task, steps: int, learning_rate, first_order: bool,
          training: bool):
    """One task's inner loop: `steps` SGD steps on its support loss; returns the adapted parameters.

    `support` is (features, labels, mask). `learning_rate` is α (a scalar); with Meta-SGD
    (`weights.inner_rates`) each parameter has its own learned rate tensor instead. A task whose
    support mask is all zero keeps its initial parameters (its gradient is zero)."""
    features, labels, mask = support
    params = initial_params(net, weights, task)
    rates = weights.inner_rates or [learning_rate] * len(params)
    return sgd_steps(lambda p, step: task_loss(net, labels, task_logits(net, p, weights, features, task, step,
                                                                         training), mask),
                     params, rates, steps, first_order)


def sgd_steps(loss_fn, params: list, rates: list, steps: int, first_order: bool) -> list:
    """`steps` SGD steps p <- p - rate * d loss_fn(p, step) / dp (the tape stays differentiable: second
    order through the steps unless `first_order`)."""
    for step in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = loss_fn(params, step)
        grads = [tf.zeros_like(p) if g is None else tf.convert_to_tensor(g)
                 for g, p in zip(tape.gradient(loss, params), params)]
        if first_order:
            grads = [tf.stop_gradient(g) for g in grads]
        params = [p - tf.cast(r, p.dtype) * tf.cast(g, p.dtype) for p, r, g in zip(params, rates, grads)]
    return params


def vectorized(fn, elems, fallback_to_while_loop: bool):
    """`fn` mapped over the tasks (axis 0 of every element of `elems`) by pfor, never a Python loop."""
    return tf.vectorized_map(fn, elems, fallback_to_while_loop=fallback_to_while_loop)


def _set(net: Network, weights: Weights, encoded, name):
    return with_global_features_part(net, weights, encoded[name]), encoded[f"{name}_label"], encoded[f"{name}_mask"]


def _tasks(net: Network, weights: Weights, task_id, seed):
    """The per-task elements of the vectorized loop: id, seed and, for a `TaskParameterizedMetaBlock`,
    its per-task parameters, gathered for all tasks at once from the variables (a sparse read)."""
    task = {"id": task_id, "seed": seed}
    if isinstance(net.meta_block, TaskParameterizedMetaBlock):
        task["params"] = list(net.meta_block.task_parameters(weights.meta, task_id))
    return task


def adapt_and_score(net: Network, weights: Weights, encoded, steps: int, learning_rate, training=False,
                    first_order=False, unadapted_loss=False, fallback_to_while_loop=False) -> dict:
    """Adapts every task of an encoded bundle on its support set and scores its query set.

    Returns {"query_loss": [T], "query_logits": [T, Q]} and, with `unadapted_loss`, "unadapted_loss"
    [T]: the un-adapted network's mean loss over every real sample of the task (support and query),
    the second term of the mixed outer objective."""
    def one_task(elems):
        support, query, task = elems
        params = adapt(net, weights, support, task, steps, learning_rate, first_order, training)
        q_x, q_y, q_m = query
        logits = task_logits(net, params, weights, q_x, task, steps, training)
        out = {"query_loss": task_loss(net, q_y, logits, q_m), "query_logits": logits}
        if unadapted_loss:
            out["unadapted_loss"] = _unadapted_loss(net, weights, support, query, task, steps + 1, training)
        return out

    return vectorized(one_task, (_set(net, weights, encoded, "support"), _set(net, weights, encoded, "query"),
                                  _tasks(net, weights, encoded["task_id"], encoded["task_seed"])),
                      fallback_to_while_loop)


def _unadapted_loss(net, weights, support, query, task, forward_pass, training):
    params = initial_params(net, weights, task)
    features = {k: tf.concat([support[0][k], query[0][k]], 0) for k in support[0]}
    labels, mask = tf.concat([support[1], query[1]], 0), tf.concat([support[2], query[2]], 0)
    return task_loss(net, labels, task_logits(net, params, weights, features, task, forward_pass, training), mask)


def meta_embeddings(net: Network, weights: Weights, support, latest, task_id, steps: int, learning_rate,
                    aggregation: str = "latest", definition: str | None = None):
    """Algorithm 2b: per task, adapt the meta block on its recent samples `support` = (encoded features
    [T, S, ...], labels [T, S], mask [T, S]) with `steps` SGD steps, then embed. Returns [T, d].

    aggregation: "latest" (the adapted meta block on the task's latest sample, `latest`: encoded
    [T, ...]; the paper's choice), or "mean" / "max" / "cosine" pooling of the adapted embeddings of
    all real recent samples ("cosine": weights max(cos(e_j, e_latest), 0)). A task with no real recent
    sample gets the un-adapted embedding of `latest` (cold start).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    features, labels, mask = support
    seeds = task_seeds(tf.shape(mask)[0])

    def one_task(elems):
        s_x, s_y, s_m, last, task = elems
        if definition is None:
            params = adapt(net, weights, (s_x, s_y, s_m), task, steps, learning_rate, True, False)
            meta_p, _ = split_params(net, params, weights)
            embed_fn = lambda p, x, seed, training: embed(net, p, x, seed, training)  # noqa: E731
        else:
            meta_p = adapt_definition(net, weights, definition, (s_x, s_y, s_m), task["seed"], steps, learning_rate,
                                      True, False)
            block = net.meta_block.blocks[definition]
            embed_fn = lambda p, x, seed, training: call_block(block, p, x, seed, training)  # noqa: E731
        last_emb = embed_fn(meta_p, tf.nest.map_structure(lambda a: a[None], last), task["seed"], False)[0]
        if aggregation == "latest":
            return last_emb
        embs = embed_fn(meta_p, s_x, task["seed"], False)
        return tf.where(tf.reduce_sum(s_m) > 0, pool(embs, s_m, last_emb, aggregation), last_emb)

    features = with_global_features_part(net, weights, features)
    elems = (features, labels, mask, latest, _tasks(net, weights, task_id, seeds))
    return vectorized(one_task, elems, False)


def pool(embs, mask, latest_emb, aggregation: str):
    """Pools a task's sample embeddings [S, d] with mask [S]: "mean", "max" or "cosine" (weights
    max(cos(e_j, latest_emb), 0))."""
    m = tf.cast(mask, embs.dtype)[:, None]
    if aggregation == "mean":
        return tf.reduce_sum(embs * m, 0) / tf.maximum(tf.reduce_sum(m), 1.0)
    if aggregation == "max":
        return tf.reduce_max(tf.where(m > 0, embs, tf.cast(-1e30, embs.dtype)), 0)
    cos = tf.reduce_sum(tf.math.l2_normalize(embs, -1) * tf.math.l2_normalize(latest_emb, -1), -1)
    w = tf.maximum(cos, 0.0) * m[:, 0]
    return tf.reduce_sum(embs * w[:, None], 0) / tf.maximum(tf.reduce_sum(w), 1e-12)


# -- several task definitions (limaml_tf.definitions.MetaBlocks) --------------------------------------

def definition_logits(net: Network, weights: Weights, meta_by_definition: dict, features, seed, forward_pass,
                      training):
    """Logits [N]: the global block on `features` and every definition's meta embedding (its block under
    `meta_by_definition[d]`), concatenated in sorted definition order."""
    seed = _pass_seed({"seed": seed}, forward_pass)
    blocks = net.meta_block
    emb = tf.concat([call_block(blocks.blocks[d], meta_by_definition[d], features, seed, training)
                     for d in blocks.names], -1)
    logits = call_block(net.global_block, weights.global_, {**features, "meta_embedding": emb}, seed, training)
    return tf.reshape(logits, [-1])


def adapt_definition(net: Network, weights: Weights, definition: str, support, seed, steps: int, learning_rate,
                     first_order: bool, training: bool) -> list:
    """One task of `definition`: `steps` SGD steps of that definition's meta block on the task's support
    loss of the whole network, the other definitions' blocks and the global block held as they are.
    Returns the block's adapted weights. The refresh (Algorithm 2b) adapts the same way."""
    features, labels, mask = support
    meta = net.meta_block.split(weights.meta)
    params = meta[definition]
    rates = ([learning_rate] * len(params) if not weights.inner_rates
             else net.meta_block.split(weights.inner_rates)[definition])
    return sgd_steps(lambda p, step: task_loss(net, labels, definition_logits(
        net, weights, {**meta, definition: p}, features, seed, step, training), mask), params, rates, steps, first_order)


def _subtasks(encoded, definition: str):
    """(support index [T, M, R], support mask [T, M, R], query index [T, Q]) of `definition`'s tasks in the
    bundle; the primary definition (no `subtask_*` arrays) has one sub-task per task: the task itself."""
    if definition in encoded.get("subtask_query_index", {}):
        return (encoded["subtask_support_index"][definition], encoded["subtask_support_mask"][definition],
                encoded["subtask_query_index"][definition])
    s_m, q_m = encoded["support_mask"], encoded["query_mask"]
    t, s = tf.shape(s_m)[0], tf.shape(s_m)[1]
    index = tf.broadcast_to(tf.range(s)[None, None, :], tf.stack([t, 1, s]))
    return index, tf.ones_like(s_m)[:, None, :], tf.zeros(tf.shape(q_m), tf.int32)


def adapt_and_score_definitions(net: Network, weights: Weights, encoded, steps: int, learning_rate, training=False,
                                first_order=False, unadapted_loss=False, fallback_to_while_loop=False) -> dict:
    """`adapt_and_score` with several task definitions (`MetaBlocks`).

    Per definition d, every task of d in the bundle (one per primary task for the primary definition; the
    sub-tasks of the others) adapts d's block on its own support set (`adapt_definition`), vectorized over
    the [T * M] (task, sub-task) pairs; its adapted block embeds the primary task's query samples. Each
    query sample then reads, per definition, the embedding of its own task of that definition, and the
    global block scores it on their concatenation. Returns what `adapt_and_score` does."""
    support = _set(net, weights, encoded, "support")
    q_x, q_y, q_m = _set(net, weights, encoded, "query")
    seeds = encoded["task_seed"]
    per_definition = []
    for i, d in enumerate(net.meta_block.names):
        index, sub_mask, q_index = _subtasks(encoded, d)
        m = tf.shape(index)[1]
        gather = lambda a: merge_task_slots(tf.gather(a, index, batch_dims=1))  # noqa: E731  [T, S, ...] -> [T*M, R, ...]
        sub_support = (tf.nest.map_structure(gather, support[0]), gather(support[1]),
                       gather(support[2]) * merge_task_slots(tf.cast(sub_mask, support[2].dtype)))
        repeat = lambda a: merge_task_slots(tf.repeat(a[:, None], m, axis=1))  # noqa: E731  [T, ...] -> [T*M, ...]
        sub_query = tf.nest.map_structure(repeat, q_x)
        # distinct random streams per (task, definition, sub-task); the primary's are the task's own
        primary = d not in encoded.get("subtask_query_index", {})
        offset = tf.zeros([m], tf.int64) if primary else tf.cast(i * 4096 + 1 + tf.range(m), tf.int64) * (1 << 32)
        sub_seeds = merge_task_slots(seeds[:, None, :] + tf.stack([tf.zeros_like(offset), offset], 1)[None])
        block = net.meta_block.blocks[d]

        def one_subtask(elems, d=d, block=block):
            sup, query_x, seed = elems
            params = adapt_definition(net, weights, d, sup, seed, steps, learning_rate, first_order, training)
            return call_block(block, params, query_x, _pass_seed({"seed": seed}, steps), training)

        emb = vectorized(one_subtask, (sub_support, sub_query, sub_seeds), fallback_to_while_loop)  # [T*M, Q, d]
        emb = tf.reshape(emb, tf.stack([tf.shape(q_m)[0], m, tf.shape(q_m)[1], tf.shape(emb)[-1]]))
        emb = tf.transpose(emb, [0, 2, 1, 3])  # [T, Q, M, d]
        per_definition.append(tf.gather(emb, q_index[..., None], batch_dims=2)[:, :, 0])  # [T, Q, d]
    embeddings = tf.concat(per_definition, -1)

    def score(elems):
        query_x, emb, y, mask, seed, sup = elems
        logits = call_block(net.global_block, weights.global_, {**query_x, "meta_embedding": emb},
                            _pass_seed({"seed": seed}, steps), training)
        logits = tf.reshape(logits, [-1])
        out = {"query_loss": task_loss(net, y, logits, mask), "query_logits": logits}
        if unadapted_loss:
            task = {"id": tf.zeros([], tf.int32), "seed": seed}
            out["unadapted_loss"] = _unadapted_loss(net, weights, sup, (query_x, y, mask), task, steps + 1, training)
        return out

    return vectorized(score, (q_x, embeddings, q_y, q_m, seeds, support), fallback_to_while_loop)
