"""`IDEmbeddingMetaBlock`: a per-task ID embedding whose inner loop adapts only the task's own row."""

from __future__ import annotations

import keras
import tensorflow as tf

from limaml_tf.api_export import limaml_export
from limaml_tf.blocks.base import TaskParameterizedMetaBlock
from limaml_tf.blocks.feature_embedding import as_features
from limaml_tf.spec import Feature


@limaml_export
class IDEmbeddingMetaBlock(TaskParameterizedMetaBlock):
    """Meta embedding = base + table[id(task)]: a learned per-task ID embedding.

    `feature` is the categorical feature whose values are the task keys (its vocabulary: the tasks
    seen in training). Row 0 of the table (id 0: a key outside the vocabulary, i.e. a task never seen
    in training) is held at zero, so an unseen task starts from `base`, the population prior; `base`
    is trained by every task, so MAML meta-learns it as the init for new tasks. The inner loop adapts
    only the task's own row (a [d] vector), never the whole table, and the table's gradient stays
    sparse (`tf.IndexedSlices`).

    >>> import limaml_tf as lt
    >>> user = lt.Feature("user_id", "categorical", vocabulary=("u1", "u2"))
    >>> block = IDEmbeddingMetaBlock(user, output_dim=4)
    >>> block({"user_id": tf.constant([1, 2, 0])}).shape
    TensorShape([3, 4])
    """

    def __init__(self, feature: Feature | dict, output_dim: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.feature = as_features([feature])[0]
        if self.feature.kind != "categorical":
            raise ValueError(f"IDEmbeddingMetaBlock: feature {self.feature.name!r} must be categorical")
        self.task_feature = self.feature.name
        self.output_dim = output_dim

    def build(self, input_shape=None):
        self.base = self.add_weight((self.output_dim,), initializer="zeros", name="base")
        # autocast off: under mixed precision a cast would copy the whole table; the rows are cast instead
        self.table = self.add_weight((self.feature.cardinality, self.output_dim), autocast=False,
                                     initializer=keras.initializers.RandomNormal(stddev=0.01), name="table")

    def _rows(self, base, table, ids):
        base = tf.convert_to_tensor(base)
        known = tf.cast(ids > 0, base.dtype)[..., None]
        return base + tf.cast(tf.gather(table, ids), base.dtype) * known

    def call(self, inputs):
        # `.value` is the backend variable: tf.gather on it is a sparse read (on the Keras variable it
        # would read the whole table, and the optimizer's row update would then copy it)
        return self._rows(self.base, self.table.value, inputs[self.feature.name])

    def task_parameters(self, weights, task_ids):
        base, table = weights
        return [self._rows(base, table, task_ids)]

    def call_with_task_parameters(self, params, features):
        n = tf.shape(features[self.feature.name])[0]
        return tf.tile(params[0][None, :], [n, 1])

    def get_config(self):
        return {**super().get_config(), "feature": self.feature.to_dict(), "output_dim": self.output_dim}
