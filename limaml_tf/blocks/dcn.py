"""`DCNGlobalBlock`: a DCN-v2 global block (keras-rs `FeatureCross` layers, then an MLP)."""

from __future__ import annotations

import keras

from limaml_tf.api_export import limaml_export
from limaml_tf.blocks.base import GlobalBlockBase, dense_layers


@limaml_export
class DCNGlobalBlock(GlobalBlockBase):
    """DCN-v2: [other features, meta embedding] -> keras-rs FeatureCross layers -> MLP -> logit.

    >>> import tensorflow as tf, limaml_tf as lt
    >>> feats = (lt.Feature("age", "numeric"), lt.Feature("country", "categorical", num_bins=10))
    >>> x = {"age": tf.constant([0.5, -1.0]), "country": tf.constant([3, 0])}
    >>> DCNGlobalBlock(feats, num_cross_layers=2)({**x, "meta_embedding": tf.zeros([2, 8])}).shape
    TensorShape([2, 1])
    """

    def __init__(self, features, num_cross_layers: int = 2, projection_dim: int | None = None,
                 hidden_units=(64, 32), embedding_dim: int = 8, **kwargs):
        super().__init__(features, embedding_dim, **kwargs)
        import keras_rs

        self.num_cross_layers, self.projection_dim = num_cross_layers, projection_dim
        self.hidden_units = tuple(hidden_units)
        self.cross = [keras_rs.layers.FeatureCross(projection_dim=projection_dim, name=f"cross_{i}")
                      for i in range(num_cross_layers)]
        self.hidden = dense_layers(self.hidden_units, "relu", "global_hidden")
        self.logit = keras.layers.Dense(1, name="logit")

    def call(self, inputs):
        x0 = x = self._inputs(inputs)
        for layer in self.cross:
            x = layer(x0, x)
        for layer in self.hidden:
            x = layer(x)
        return self.logit(x)

    def get_config(self):
        return {**super().get_config(), "num_cross_layers": self.num_cross_layers,
                "projection_dim": self.projection_dim, "hidden_units": self.hidden_units}
