"""`TransformerMetaBlock`: a task's previous interactions -> a transformer -> meta embedding
(docs/sequences.md)."""

from __future__ import annotations

import keras
import tensorflow as tf

from limaml_tf.api_export import limaml_export
from limaml_tf.blocks.base import DenseMetaBlock, dense_layers
from limaml_tf.blocks.feature_embedding import FeatureEmbedding, as_features
from limaml_tf.raw_data import SEQUENCE_KINDS


@limaml_export
class TransformerMetaBlock(DenseMetaBlock):
    """The task's previous interactions (sequence features) -> a transformer -> meta embedding.

    Each position j (the j-th most recent earlier interaction; see `limaml_tf.spec`) is the sum of
    the embeddings of its categorical `sequence` values, a linear map of its `numeric_sequence`
    values (e.g. label, log time gap) and a learned embedding of j (recency). `num_layers` pre-norm
    transformer layers (Keras `MultiHeadAttention`, LayerNormalization — per-sample statistics, so
    tasks never mix — and a ReLU feed-forward of width 2 * model_dim) follow; padded positions are
    masked out of the attention keys and of the masked mean pooling, so they change nothing. The
    pooled vector, concatenated with the block's other (non-sequence) features, goes through
    `hidden_units` to the meta embedding: with no sequence features it is the `MLPMetaBlock`.

    All its weights adapt per task, as for `MLPMetaBlock` (the inner loop's `stateless_call`): the
    block is small by default (1 layer, 2 heads, model_dim 16), its weights cost T copies in the
    inner loop, and the adapted attention can re-weight a task's own history, which a head-only
    adaptation could not (docs/sequences.md measures the cost).

    >>> import tensorflow as tf, limaml_tf as lt
    >>> feats = (lt.Feature("seq_item", "sequence", num_bins=50, max_len=4),
    ...          lt.Feature("seq_label", "numeric_sequence", max_len=4), lt.Feature("age", "numeric"))
    >>> x = {"seq_item": tf.constant([[3, 7, 0, 0], [0, 0, 0, 0]]), "seq_label": tf.ones([2, 4]),
    ...      "age": tf.constant([0.5, -1.0])}
    >>> TransformerMetaBlock(feats, output_dim=8)(x).shape
    TensorShape([2, 8])
    """

    def __init__(self, features, output_dim: int = 8, model_dim: int = 16, num_heads: int = 2, num_layers: int = 1,
                 hidden_units=(32,), embedding_dim: int = 4, activation: str = "relu", **kwargs):
        super().__init__(**kwargs)
        features = as_features(features)
        self.sequences = [f for f in features if f.kind in SEQUENCE_KINDS]
        cats = [f for f in self.sequences if f.kind == "sequence"]
        if not cats:
            raise ValueError("TransformerMetaBlock needs a categorical `sequence` feature (e.g. the previous items): "
                             "it marks the real positions of the sequences")
        if len({f.max_len for f in self.sequences}) > 1:
            raise ValueError(f"TransformerMetaBlock: sequences {[(f.name, f.max_len) for f in self.sequences]} have "
                             "different max_len: give them one length (they describe the same interactions)")
        self.max_len = cats[0].max_len
        self.output_dim, self.model_dim, self.num_heads, self.num_layers = output_dim, model_dim, num_heads, num_layers
        self.hidden_units, self.embedding_dim, self.activation = tuple(hidden_units), embedding_dim, activation
        others = [f for f in features if f.kind not in SEQUENCE_KINDS]
        self.inputs_layer = FeatureEmbedding(others, embedding_dim, name="meta_inputs") if others else None
        self.item_embeddings = {f.name: keras.layers.Embedding(f.cardinality, model_dim, name=f"{f.name}_embedding")
                                for f in cats}
        self.numeric = [f.name for f in self.sequences if f.kind == "numeric_sequence"]
        self.numeric_proj = keras.layers.Dense(model_dim, name="numeric_projection") if self.numeric else None
        self.position = keras.layers.Embedding(self.max_len, model_dim, name="position_embedding")
        self.layers_ = [dict(norm1=keras.layers.LayerNormalization(name=f"norm1_{i}"),
                             attention=keras.layers.MultiHeadAttention(num_heads, max(model_dim // num_heads, 1),
                                                                       name=f"attention_{i}"),
                             norm2=keras.layers.LayerNormalization(name=f"norm2_{i}"),
                             ff1=keras.layers.Dense(2 * model_dim, activation="relu", name=f"feed_forward_{i}"),
                             ff2=keras.layers.Dense(model_dim, name=f"feed_forward_out_{i}"))
                        for i in range(num_layers)]
        self.final_norm = keras.layers.LayerNormalization(name="final_norm")
        self.hidden = dense_layers(self.hidden_units, activation, "meta_hidden")
        self.out = keras.layers.Dense(output_dim, name="meta_embedding")

    def encode_sequence(self, inputs):
        """The sequence pooled over its real positions, [B, model_dim]."""
        ids = {n: inputs[n] for n in self.item_embeddings}
        mask = tf.cast(tf.add_n([tf.cast(i > 0, tf.int32) for i in ids.values()]) > 0, self.compute_dtype)
        x = tf.add_n([emb(ids[n]) for n, emb in self.item_embeddings.items()])
        if self.numeric_proj is not None:
            x += self.numeric_proj(tf.stack([tf.cast(inputs[n], self.compute_dtype) for n in self.numeric], -1))
        x = (x + self.position(tf.range(self.max_len))) * mask[..., None]
        keys = tf.cast(mask[:, None, :] * tf.ones_like(mask)[:, :, None], "bool")  # [B, L query, L key]
        for layer in self.layers_:
            h = layer["norm1"](x)
            x = x + layer["attention"](h, h, attention_mask=keys)
            x = x + layer["ff2"](layer["ff1"](layer["norm2"](x)))
        x = self.final_norm(x) * mask[..., None]
        return tf.reduce_sum(x, 1) / tf.maximum(tf.reduce_sum(mask, 1, keepdims=True), 1.0)

    def call(self, inputs):
        x = self.encode_sequence(inputs)
        if self.inputs_layer is not None:
            x = tf.concat([x, self.inputs_layer(inputs)], -1)
        for layer in self.hidden:
            x = layer(x)
        return self.out(x)

    def get_config(self):
        features = self.sequences + (self.inputs_layer.features if self.inputs_layer is not None else [])
        return {**super().get_config(), "features": [f.to_dict() for f in features], "output_dim": self.output_dim,
                "model_dim": self.model_dim, "num_heads": self.num_heads, "num_layers": self.num_layers,
                "hidden_units": self.hidden_units, "embedding_dim": self.embedding_dim, "activation": self.activation}
