"""Meta blocks and global blocks.

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

from limaml_tf.features import Feature
from limaml_tf.spec import SEQUENCE_KINDS

FEATURES_PART = "__global_features_part__"  # input key of a precomputed `features_part` (see above)


def _as_features(features) -> list[Feature]:
    return [f if isinstance(f, Feature) else Feature(**{**f, "vocabulary": tuple(f["vocabulary"])
                                                         if f.get("vocabulary") else None})
            for f in features]


@keras.saving.register_keras_serializable("limaml_tf")
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
        self.features = _as_features(features)
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


def _mlp(units, activation, name):
    return [keras.layers.Dense(u, activation=activation, name=f"{name}_{i}") for i, u in enumerate(units)]


@keras.saving.register_keras_serializable("limaml_tf")
class MLPMetaBlock(keras.layers.Layer):
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
        self.hidden = _mlp(self.hidden_units, activation, "meta_hidden")
        self.out = keras.layers.Dense(output_dim, name="meta_embedding")

    def build(self, input_shape=None):
        pass  # sub-layers build on their first call (the model calls every block once at construction)

    def call(self, inputs):
        x = self.inputs_layer(inputs)
        for layer in self.hidden:
            x = layer(x)
        return self.out(x)

    def get_config(self):
        return {**super().get_config(), "features": [f.to_dict() for f in self.inputs_layer.features],
                "output_dim": self.output_dim, "hidden_units": self.hidden_units,
                "embedding_dim": self.embedding_dim, "activation": self.activation}


@keras.saving.register_keras_serializable("limaml_tf")
class TransformerMetaBlock(keras.layers.Layer):
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
        features = _as_features(features)
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
        self.hidden = _mlp(self.hidden_units, activation, "meta_hidden")
        self.out = keras.layers.Dense(output_dim, name="meta_embedding")

    def build(self, input_shape=None):
        pass  # sub-layers build on their first call (the model calls every block once at construction)

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


class TaskParameterizedMetaBlock(keras.layers.Layer):
    """Base class of a meta block that adapts a small per-task tensor instead of all its weights.

    The inner loop calls two pure functions instead of `stateless_call`:

      task_parameters(weights, task_ids) -> list of tensors [T, ...]: every task's adapted parameters
      call_with_task_parameters(params, features) -> [batch, d]   (one task's params, no leading T)

    `task_parameters` runs once per batch, outside the vectorized per-task loop, on all T task ids
    at once; `weights` are the `.value`s of `self.trainable_variables` (a backend variable where
    autocast is off, as for a large table: not a dense read), so a gather from the table is a sparse read and the table's gradient stays a `tf.IndexedSlices` of the batch's
    rows. `task_ids` [T] are the tasks' keys (the bundle's `task_key`) encoded by the spec feature
    named `task_feature` — read from the task itself, so a task with an empty support set still finds
    its row.
    """

    task_feature: str = ""

    def task_parameters(self, weights, task_ids):
        raise NotImplementedError

    def call_with_task_parameters(self, params, features):
        raise NotImplementedError


@keras.saving.register_keras_serializable("limaml_tf")
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
        self.feature = _as_features([feature])[0]
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


class _GlobalBlockBase(keras.layers.Layer):
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


@keras.saving.register_keras_serializable("limaml_tf")
class MLPGlobalBlock(_GlobalBlockBase):
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
        self.hidden = _mlp(self.hidden_units, activation, "global_hidden")
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


@keras.saving.register_keras_serializable("limaml_tf")
class DCNGlobalBlock(_GlobalBlockBase):
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
        self.hidden = _mlp(self.hidden_units, "relu", "global_hidden")
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


def check_no_batchnorm(block, role: str):
    """Refuses BatchNormalization in an adapted block (per-task adaptation needs per-sample statistics)."""
    for layer in block._flatten_layers(include_self=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            raise ValueError(
                f"the {role} contains BatchNormalization layer {layer.name!r}: its batch statistics would mix "
                "the tasks of a batch during per-task adaptation. Use keras.layers.LayerNormalization "
                "(per-sample statistics) instead.")
