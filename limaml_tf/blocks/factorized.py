"""`FactorizedGlobalBlock`: any global block plus a factorized task x item term."""

from __future__ import annotations

import keras
import tensorflow as tf

from limaml_tf.api_export import limaml_export
from limaml_tf.blocks.feature_embedding import FeatureEmbedding


@limaml_export
class FactorizedGlobalBlock(keras.layers.Layer):
    """logit = global_block(features, e) + <u, item_factors(features)>, the meta embedding being [e, u]
    with u its last `factor_dim` entries (the task's vector) and e the rest (read by `global_block`).

    The logit is affine in u, so a task's u can be solved in closed form on its support set
    (`LiMAMLModel(inner_solver="ridge")`): the meta block then gives the prior [e, u0] and the solver
    the task's u. An MLP over concatenated inputs learns such a product poorly (Rendle et al., RecSys
    2020), and with it an adapted task re-ranks items instead of mostly shifting its bias. The item
    tower (embeddings of `item_features`, then a linear map to `factor_dim`) reads no meta embedding.

    >>> import tensorflow as tf, limaml_tf as lt
    >>> item = (lt.Feature("item", "categorical", num_bins=10),)
    >>> block = FactorizedGlobalBlock(lt.MLPGlobalBlock(item, hidden_units=(8,)), item, factor_dim=4)
    >>> block({"item": tf.constant([1, 2]), "meta_embedding": tf.zeros([2, 6])}).shape
    TensorShape([2, 1])
    """

    def __init__(self, global_block, item_features, factor_dim: int = 8, embedding_dim: int = 8, **kwargs):
        super().__init__(**kwargs)
        if isinstance(global_block, dict):
            global_block = keras.saving.deserialize_keras_object(global_block)
        if int(factor_dim) < 1:
            raise ValueError(f"factor_dim must be an integer >= 1, got {factor_dim!r}")
        self.global_block = global_block
        self.factor_dim, self.embedding_dim = int(factor_dim), int(embedding_dim)
        self.item_inputs = FeatureEmbedding(item_features, self.embedding_dim, name="item_inputs")
        self.item_tower = keras.layers.Dense(self.factor_dim, name="item_factors")

    def build(self, input_shape=None):
        pass  # sub-layers build on their first call (the model calls every block once at construction)

    def item_factors(self, inputs):
        """[N, factor_dim]: the items' vectors that the task's vector u is dotted with."""
        return self.item_tower(self.item_inputs(inputs))

    def call(self, inputs, training=False):
        embedding = tf.cast(inputs["meta_embedding"], self.compute_dtype)
        if embedding.shape[-1] is not None and embedding.shape[-1] < self.factor_dim:
            raise ValueError(f"the meta embedding has {embedding.shape[-1]} entries, fewer than factor_dim = "
                             f"{self.factor_dim}: make the meta block's output_dim at least factor_dim (its last "
                             "factor_dim entries are the task's vector)")
        rest, task_vector = embedding[..., :-self.factor_dim], embedding[..., -self.factor_dim:]
        kwargs = {"training": training} if self.global_block._call_has_training_arg else {}
        logit = self.global_block({**inputs, "meta_embedding": rest}, **kwargs)
        logit = tf.reshape(tf.cast(logit, self.compute_dtype), [-1, 1])
        return logit + tf.reduce_sum(task_vector * self.item_factors(inputs), -1, keepdims=True)

    def get_config(self):
        return {**super().get_config(), "global_block": keras.saving.serialize_keras_object(self.global_block),
                "item_features": [f.to_dict() for f in self.item_inputs.features], "factor_dim": self.factor_dim,
                "embedding_dim": self.embedding_dim}
