"""What exact training under a `tf.distribute` strategy needs beyond Keras' defaults.

* The loss of a replica is its tasks' losses over the task count of the *global* batch
  (`sum_over_replicas`), so the all-reduced sum of the replicas' gradients is the single-device
  gradient of the global batch.
* The gradients are summed over replicas in one packed all-reduce (`all_reduce_gradients`) and applied
  in cross-replica context (`apply_summed_gradients`), where Keras' optimizer neither all-reduces them
  again nor clips a replica's share (its clip is then the clip of the global gradient).
* Multi-worker logs need a leading axis (`multi_worker_logs`, tensorflow/tensorflow#72388).
"""

from __future__ import annotations

import math

import tensorflow as tf


def replica_context():
    """The replica context of a multi-replica step, else None."""
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def replica_id_and_count():
    """(this replica's id, number of replicas) as tensors; (0, 1) outside a multi-replica step."""
    context = replica_context()
    if context is None:
        return tf.constant(0, tf.int64), tf.constant(1, tf.int64)
    return (tf.cast(context.replica_id_in_sync_group, tf.int64),
            tf.constant(context.num_replicas_in_sync, tf.int64))


def num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def sum_over_replicas(value):
    context = replica_context()
    return value if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def merge_duplicate_rows(g):
    """An `IndexedSlices` gradient with each row once (summed): a gather's gradient, and an all-reduce of
    sparse gradients, repeat rows, and norms (gradient clipping) must see the summed row. Stays sparse."""
    if not isinstance(g, tf.IndexedSlices):
        return g
    rows, position = tf.unique(g.indices)
    return tf.IndexedSlices(tf.math.unsorted_segment_sum(g.values, position, tf.shape(rows)[0]), rows, g.dense_shape)


# Tables up to this many values (1 MB of float32) have their sparse gradient exchanged dense, packed with
# the rest: one all-reduce of the whole model (~2 ms for 1 MB on 2 CPU workers over loopback) costs less
# than the round trips of an all-gather per table (~1-1.5 ms each, 2-3 per table).
DENSE_EXCHANGE_VALUES = 1 << 18


def all_reduce_gradients(context, grads, variables):
    """The sum over replicas of every replica's gradients, in one all-reduce: dense gradients and the
    sparse ones of small tables (made dense) flattened into one vector. Sparse gradients of larger tables
    are all-gathered (rows of several replicas merged), so no [rows, d] tensor of a large table appears."""
    dense = [i for i, (g, v) in enumerate(zip(grads, variables))
             if not isinstance(g, tf.IndexedSlices) or math.prod(v.shape) <= DENSE_EXCHANGE_VALUES]
    sparse = [i for i in range(len(grads)) if i not in dense]
    out = list(grads)
    if dense:
        parts = [_dense(grads[i], variables[i]) for i in dense]
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat([tf.reshape(p, [-1]) for p in parts], 0))
        for i, part, piece in zip(dense, parts, tf.split(summed, [p.shape.num_elements() for p in parts])):
            out[i] = tf.reshape(piece, part.shape)
    if sparse:
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in sparse])
        for i, g in zip(sparse, summed):
            out[i] = merge_duplicate_rows(g)
    return out


def _dense(g, variable):
    if isinstance(g, tf.IndexedSlices):
        return tf.math.unsorted_segment_sum(g.values, g.indices, variable.shape[0])
    return g


def apply_summed_gradients(optimizer, grads, variables):
    """Applies gradients already summed over replicas (`all_reduce_gradients`). Keras' optimizer would
    all-reduce them again (`_all_reduce_sum_gradients` of its TensorFlow backend): this optimizer's is made
    the identity, for good (replicas of one process trace concurrently; without a strategy it is the identity
    anyway). Its clip, if any, then clips the global gradient."""
    inner = optimizer
    while hasattr(inner, "inner_optimizer"):  # a LossScaleOptimizer applies through its inner optimizer
        inner = inner.inner_optimizer
    if not hasattr(inner, "_all_reduce_sum_gradients"):
        raise NotImplementedError(f"{type(inner).__name__} under a tf.distribute strategy: only Keras' "
                                  "TensorFlow-backend optimizers are supported")
    object.__setattr__(inner, "_all_reduce_sum_gradients", list)  # (Keras' __setattr__ would track it)
    optimizer.apply_gradients(zip(grads, variables))


def multi_worker_logs(logs: dict) -> dict:
    """Keras 3 reduces a multi-worker step's logs with reduce("MEAN", axis=0), which fails on scalars
    (tensorflow/tensorflow#72388): give them a leading axis."""
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {k: v[None] for k, v in logs.items()}
    return logs


def add_gradients(a, b):
    """Sum of two gradients of one variable; `tf.IndexedSlices` stay sparse (their rows are concatenated)."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, tf.IndexedSlices) and isinstance(b, tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([a.values, b.values], 0), tf.concat([a.indices, b.indices], 0),
                                a.dense_shape)
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)
