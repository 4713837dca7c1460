"""`FeatureEmbedding`: a block's encoded input features as one dense vector."""

from __future__ import annotations

import keras
import tensorflow as tf

from limaml_tf.api_export import limaml_export
from limaml_tf.spec import Feature
from limaml_tf.raw_data import SEQUENCE_KINDS


def as_features(features) -> list[Feature]:
    """`Feature`s, or their `to_dict()` form (a block's config), as `Feature`s."""
    return [f if isinstance(f, Feature) else Feature(**{**f, "vocabulary": tuple(f["vocabulary"])
                                                         if f.get("vocabulary") else None})
            for f in features]


@limaml_export
class FeatureEmbedding(keras.layers.Layer):
    """Encoded features -> one dense vector: embeddings of categorical / multi-valued features
    (multi-valued mean-pooled over non-padding ids) concatenated with the numeric values.

    >>> import tensorflow as tf, limaml_tf as lt
    >>> feats = (lt.Feature("age", "numeric"), lt.Feature("country", "categorical", num_bins=10))
    >>> x = {"age": tf.constant([0.5, -1.0]), "country": tf.constant([3, 0])}
    >>> FeatureEmbedding(feats, embedding_dim=4)(x).shape  # 1 numeric + a 4-d embedding
    TensorShape([2, 5])
    """

    def __init__(self, features, embedding_dim: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.features = as_features(features)
        seqs = [f.name for f in self.features if f.kind in SEQUENCE_KINDS]
        if seqs:
            raise ValueError(f"{self.name}: feature(s) {seqs} are sequences: read them with a TransformerMetaBlock, "
                             "or leave them out of this block's features")
        self.embedding_dim = embedding_dim
        self.embeddings = {
            f.name: keras.layers.Embedding(f.cardinality, embedding_dim, name=f"{f.name}_embedding")
            for f in self.features if f.kind != "numeric"
        }

    def build(self, input_shape=None):
        pass  # sub-layers build on their first call (the model calls every block once at construction)

    @property
    def output_dim(self) -> int:
        return sum(1 if f.kind == "numeric" else self.embedding_dim for f in self.features)

    def call(self, inputs):
        parts = []
        for f in self.features:
            x = inputs[f.name]
            if f.kind == "numeric":
                parts.append(tf.reshape(tf.cast(x, self.compute_dtype), [-1, 1]))
            elif f.kind == "categorical":
                parts.append(self.embeddings[f.name](x))
            else:
                mask = tf.cast(x > 0, self.compute_dtype)[..., None]
                summed = tf.reduce_sum(self.embeddings[f.name](x) * mask, axis=-2)
                parts.append(summed / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0))
        return tf.concat(parts, axis=-1)

    def get_config(self):
        return {**super().get_config(), "features": [f.to_dict() for f in self.features],
                "embedding_dim": self.embedding_dim}
