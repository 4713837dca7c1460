"""What exact training under a `tf.distribute` strategy needs beyond Keras' defaults.

* The loss of a replica is its tasks' losses over the task count of the *global* batch
  (`sum_over_replicas`), so the all-reduced sum of the replicas' gradients is the single-device
  gradient of the global batch.
* Gradient clipping applies to the all-reduced gradient (`clip_global_gradient`): Keras clips each
  replica's share before its all-reduce, which is not the clip of the global gradient.
* Multi-worker logs need a leading axis (`multi_worker_logs`, tensorflow/tensorflow#72388).
"""

from __future__ import annotations

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


def _clips(optimizer) -> bool:
    return bool(optimizer.global_clipnorm or optimizer.clipnorm or optimizer.clipvalue)


def _clip(optimizer, grads):
    """The optimizer's gradient clipping (global norm, per-tensor norm or value), in TF ops."""
    if optimizer.global_clipnorm:
        return tf.clip_by_global_norm(grads, optimizer.global_clipnorm)[0]
    if optimizer.clipnorm:
        return [tf.clip_by_norm(g, optimizer.clipnorm) for g in grads]
    return [tf.clip_by_value(g, -optimizer.clipvalue, optimizer.clipvalue) for g in grads]


def _scale(g, factor):
    if isinstance(g, tf.IndexedSlices):
        return tf.IndexedSlices(g.values * factor, g.indices, g.dense_shape)
    return g * factor


def merge_duplicate_rows(g):
    """An `IndexedSlices` gradient with each row once (summed): a gather's gradient, and an all-reduce of
    sparse gradients, repeat rows, and norms (gradient clipping) must see the summed row. Stays sparse."""
    if not isinstance(g, tf.IndexedSlices):
        return g
    rows, position = tf.unique(g.indices)
    return tf.IndexedSlices(tf.math.unsorted_segment_sum(g.values, position, tf.shape(rows)[0]), rows, g.dense_shape)


def clip_global_gradient(optimizer, grads):
    """Under several replicas with clipping: all-reduce, clip, and hand the optimizer a 1/R share of the
    clipped gradient (its own all-reduce sums the shares back; its clip is then a no-op)."""
    context = replica_context()
    if context is None or not _clips(optimizer):
        return grads
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    grads = _clip(optimizer, [merge_duplicate_rows(g) for g in summed])
    return [_scale(g, 1.0 / context.num_replicas_in_sync) for g in grads]


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
