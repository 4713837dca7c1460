"""The MLP blocks: `MLPMetaBlock` (meta features -> meta embedding) and `MLPGlobalBlock`
([other features, meta embedding] -> logit)."""

from __future__ import annotations

import keras
import tensorflow as tf

from limaml_tf.api_export import limaml_export
from limaml_tf.blocks.base import FEATURES_PART, DenseMetaBlock, GlobalBlockBase, dense_layers
from limaml_tf.blocks.feature_embedding import FeatureEmbedding


@limaml_export
class MLPMetaBlock(DenseMetaBlock):
    """Meta features -> MLP -> meta embedding of size `output_dim`.

    >>> import tensorflow as tf, limaml_tf as lt
    >>> feats = (lt.Feature("age", "numeric"), lt.Feature("country", "categorical", num_bins=10))
    >>> x = {"age": tf.constant([0.5, -1.0]), "country": tf.constant([3, 0])}
    >>> MLPMetaBlock(feats, output_dim=8, hidden_units=(16,))(x).shape
    TensorShape([2, 8])
    """

    def __init__(self, features, output_dim: int = 8, hidden_units=(32,), embedding_dim: int = 4,
                 activation: str = "relu", **kwargs):
        super().__init__(**kwargs)
        self.output_dim, self.hidden_units = output_dim, tuple(hidden_units)
        self.embedding_dim, self.activation = embedding_dim, activation
        self.inputs_layer = FeatureEmbedding(features, embedding_dim, name="meta_inputs")
        self.hidden = dense_layers(self.hidden_units, activation, "meta_hidden")
        self.out = keras.layers.Dense(output_dim, name="meta_embedding")

    def call(self, inputs):
        x = self.inputs_layer(inputs)
        for layer in self.hidden:
            x = layer(x)
        return self.out(x)

    def get_config(self):
        return {**super().get_config(), "features": [f.to_dict() for f in self.inputs_layer.features],
                "output_dim": self.output_dim, "hidden_units": self.hidden_units,
                "embedding_dim": self.embedding_dim, "activation": self.activation}


@limaml_export
class MLPGlobalBlock(GlobalBlockBase):
    """[other features, meta embedding] -> MLP -> logit.

    >>> import tensorflow as tf, limaml_tf as lt
    >>> feats = (lt.Feature("age", "numeric"), lt.Feature("country", "categorical", num_bins=10))
    >>> x = {"age": tf.constant([0.5, -1.0]), "country": tf.constant([3, 0])}
    >>> MLPGlobalBlock(feats, hidden_units=(16,))({**x, "meta_embedding": tf.zeros([2, 8])}).shape
    TensorShape([2, 1])
    """

    def __init__(self, features, hidden_units=(64, 32), embedding_dim: int = 8, activation: str = "relu",
                 dropout: float = 0.0, **kwargs):
        super().__init__(features, embedding_dim, **kwargs)
        self.hidden_units, self.activation, self.dropout = tuple(hidden_units), activation, dropout
        self.hidden = dense_layers(self.hidden_units, activation, "global_hidden")
        self.drop = keras.layers.Dropout(dropout) if dropout else None
        self.logit = keras.layers.Dense(1, name="logit")

    def _first(self):
        return (self.hidden or [self.logit])[0]

    def _build_first(self, embedding):
        """The first layer is never called as a layer (its matmul is split): built here, once."""
        first = self._first()
        if not first.built:
            first.build((None, self.inputs_layer.output_dim + embedding.shape[-1]))

    def features_part(self, inputs):
        """The first layer's pre-activation from the other features alone (bias included): the
        first layer is split as [features, meta embedding] @ kernel = features @ kernel[:F] +
        embedding @ kernel[F:], so its larger part does not depend on the meta embedding."""
        first, width = self._first(), self.inputs_layer.output_dim
        kernel = tf.cast(first.kernel[:width], self.compute_dtype)
        return tf.matmul(self.inputs_layer(inputs), kernel) + tf.cast(first.bias, self.compute_dtype)

    def call(self, inputs, training=False):
        embedding = tf.cast(inputs["meta_embedding"], self.compute_dtype)
        self._build_first(embedding)
        first, width = self._first(), self.inputs_layer.output_dim
        part = inputs[FEATURES_PART] if FEATURES_PART in inputs else self.features_part(inputs)
        x = first.activation(part + tf.matmul(embedding, tf.cast(first.kernel[width:], self.compute_dtype)))
        for i, layer in enumerate(self.hidden):
            if i:
                x = layer(x)
            if self.drop is not None:
                x = self.drop(x, training=training)
        return self.logit(x) if self.hidden else x

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units, "activation": self.activation,
                "dropout": self.dropout}
