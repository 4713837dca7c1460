"""What every block shares: the block contract, the base classes and helpers.

The contract (any Keras layer or model can be a block):

* a **meta block** is called on the dict of *encoded* features (see
  `limaml_tf.features`) of a batch of samples and returns the meta embedding,
  shape [batch, d]. It reads whatever keys it needs (usually the meta features).
* a **global block** is called on the same dict plus the key `"meta_embedding"`
  and returns logits, shape [batch] or [batch, 1]. It may also define
  `features_part(inputs)`: its work that does not read the meta embedding (a
  deterministic function of the other features and its weights); `call` then
  accepts that result under the key `FEATURES_PART` instead of recomputing it.
  The inner loop computes it once per task batch rather than once per inner step
  (`MLPGlobalBlock`: the feature embeddings and their share of the first layer).

During the inner loop the model adapts *all trainable weights* of the meta block
per task, through `stateless_call`. A meta block whose weights are mostly a large
table (an ID embedding) can instead adapt only a small per-task tensor by
subclassing `TaskParameterizedMetaBlock` (see `IDEmbeddingMetaBlock`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from limaml_tf.blocks.feature_embedding import FeatureEmbedding

FEATURES_PART = "__global_features_part__"  # input key of a precomputed `features_part` (see above)


def dense_layers(units, activation, name):
    """One Dense layer per entry of `units`, named `{name}_{i}`."""
    return [keras.layers.Dense(u, activation=activation, name=f"{name}_{i}") for i, u in enumerate(units)]


class DenseMetaBlock(keras.layers.Layer):
    """What the dense meta blocks share (`MLPMetaBlock`, `TransformerMetaBlock`): their sub-layers build on
    their first call, and their last layer `out` gives the meta embedding — the `head` that
    `LiMAMLModel(head_only=True)` adapts per task (ANIL)."""

    def build(self, input_shape=None):
        pass  # sub-layers build on their first call (the model calls every block once at construction)

    @property
    def head(self):
        return self.out


class TaskParameterizedMetaBlock(keras.layers.Layer):
    """Base class of a meta block that adapts a small per-task tensor instead of all its weights.

    The inner loop calls two pure functions instead of `stateless_call`:

      task_parameters(weights, task_ids) -> list of tensors [T, ...]: every task's adapted parameters
      call_with_task_parameters(params, features) -> [batch, d]   (one task's params, no leading T)

    `task_parameters` runs once per batch, outside the vectorized per-task loop, on all T task ids
    at once; `weights` are the `.value`s of `self.trainable_variables` (a backend variable where
    autocast is off, as for a large table: not a dense read), so a gather from the table is a sparse
    read and the table's gradient stays a `tf.IndexedSlices` of the batch's rows. `task_ids` [T] are
    the tasks' keys (the bundle's `task_key`) encoded by the spec feature named `task_feature` — read
    from the task itself, so a task with an empty support set still finds its row.
    """

    task_feature: str = ""

    def task_parameters(self, weights, task_ids):
        raise NotImplementedError

    def call_with_task_parameters(self, params, features):
        raise NotImplementedError


class GlobalBlockBase(keras.layers.Layer):
    """Base class of the global blocks: a `FeatureEmbedding` of the other features, concatenated
    with the meta embedding by `_inputs`."""

    def __init__(self, features, embedding_dim: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = embedding_dim
        self.inputs_layer = FeatureEmbedding(features, embedding_dim, name="global_inputs")

    def build(self, input_shape=None):
        pass  # sub-layers build on their first call (the model calls every block once at construction)

    def _inputs(self, inputs):
        return tf.concat([self.inputs_layer(inputs), tf.cast(inputs["meta_embedding"], self.compute_dtype)], -1)

    def get_config(self):
        return {**super().get_config(), "features": [f.to_dict() for f in self.inputs_layer.features],
                "embedding_dim": self.embedding_dim}


def check_no_batchnorm(block, role: str):
    """Refuses BatchNormalization in an adapted block (per-task adaptation needs per-sample statistics)."""
    for layer in block._flatten_layers(include_self=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            raise ValueError(
                f"the {role} contains BatchNormalization layer {layer.name!r}: its batch statistics would mix "
                "the tasks of a batch during per-task adaptation. Use keras.layers.LayerNormalization "
                "(per-sample statistics) instead.")
