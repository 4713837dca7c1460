"""`VanillaModel`: the plain baseline on the same blocks, data and evaluation as `LiMAMLModel`."""

from __future__ import annotations

import tensorflow as tf

from limaml_tf import distribute, maml
from limaml_tf.api_export import limaml_export
from limaml_tf.model import LiMAMLModel
from limaml_tf.tasks import SETS


@limaml_export
class VanillaModel(LiMAMLModel):
    """The same blocks trained by plain gradient descent on every real sample of the task batch
    (support and query); the meta embedding is the un-adapted meta block's output. Evaluation
    adapts per task only if `eval_steps` > 0 (the "vanilla + fine-tune" baseline).

    >>> import keras, limaml_tf as lt
    >>> df, spec = lt.make_synthetic(num_tasks=20, mean_samples_per_task=16, seed=0)
    >>> spec = spec.fit(df)
    >>> model = lt.VanillaModel(lt.MLPMetaBlock(spec.meta_features), lt.MLPGlobalBlock(spec.other_features),
    ...                         spec, eval_steps=2, eval_learning_rate=0.1)  # vanilla + fine-tune
    >>> model.compile(optimizer="adam")
    >>> _ = model.fit(lt.split_tasks(df, spec).dataset(tasks_per_batch=8), epochs=1, verbose=0)
    """

    def __init__(self, meta_block, global_block, spec, eval_steps: int = 0, **kwargs):
        super().__init__(meta_block, global_block, spec, eval_steps=eval_steps, **kwargs)

    def normalizer(self, encoded):
        """Real samples (support and query) in the global batch."""
        count = sum(tf.reduce_sum(encoded[f"{n}_mask"]) for n in SETS)
        return tf.maximum(distribute.sum_over_replicas(count), 1.0)

    def objective(self, chunk, normalizer, training=True, jit=None):
        """Every real sample through the un-adapted network: (summed loss / normalizer, query logits)."""
        total, logits = 0.0, None
        for name in SETS:
            mask = chunk[f"{name}_mask"]
            flat = {k: maml.merge_task_slots(v) for k, v in chunk[name].items()}
            out = self.global_logits(flat, self.embed(flat, training), training)
            per_sample = self.network.sample_loss(tf.cast(tf.reshape(chunk[f"{name}_label"], [-1]), tf.float32),
                                                  tf.cast(out, tf.float32))
            total += tf.reduce_sum(per_sample * tf.cast(tf.reshape(mask, [-1]), tf.float32))
            logits = tf.reshape(out, tf.shape(mask))
        return tf.cast(total, self.variable_dtype) / tf.cast(normalizer, self.variable_dtype), logits
