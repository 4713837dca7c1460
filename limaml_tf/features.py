"""The in-graph feature encoder built from the spec (`limaml_tf.spec`).

The encoder turns *raw* values (floats, strings, lists of strings padded with
"") into model-ready tensors inside the TensorFlow graph, so that a serving
client sends raw values and no feature is re-declared by hand anywhere.

Encoded values:
  numeric       float, standardized with the stats stored in the spec.
  categorical   int32 id in [0, num_bins]; 0 = missing / out of vocabulary.
  multi_valued  int32 ids [.., max_len]; 0 = padding / missing.
  sequence      int32 ids [.., max_len]; 0 = padding, 1 = a value outside the vocabulary (a real
                past interaction all the same), 2.. = the vocabulary (hashed: 1..num_bins).
  numeric_sequence  float [.., max_len], standardized; padded positions carry no meaning (a
                block masks them with the categorical `sequence` of the same length).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from limaml_tf.api_export import limaml_export
from limaml_tf.raw_data import FeatureError
from limaml_tf.spec import Feature, FeatureSpec


@limaml_export
class FeatureEncoder(keras.layers.Layer):
    """Raw feature dict -> encoded dict (see module docstring). No trainable weights."""

    def __init__(self, spec: FeatureSpec | dict, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.spec = spec if isinstance(spec, FeatureSpec) else FeatureSpec.from_dict(spec)
        self._tables = {}
        for f in self.spec.features:
            if f.vocabulary:
                first = 2 if f.kind == "sequence" else 1  # a sequence keeps id 1 for unknown values
                init = tf.lookup.KeyValueTensorInitializer(
                    tf.constant(list(f.vocabulary)), tf.range(first, len(f.vocabulary) + first, dtype=tf.int64))
                self._tables[f.name] = tf.lookup.StaticHashTable(init, default_value=first - 1)

    def _ids(self, f: Feature, x: tf.Tensor) -> tf.Tensor:
        if x.dtype != tf.string:
            x = tf.strings.as_string(x)
        if f.vocabulary:
            ids = self._tables[f.name].lookup(x)
        else:
            ids = tf.strings.to_hash_bucket_fast(x, f.num_bins) + 1
        return tf.cast(tf.where(tf.equal(x, ""), tf.zeros_like(ids), ids), tf.int32)

    def encode_feature(self, name: str, values) -> tf.Tensor:
        """Encodes raw `values` of one categorical feature (e.g. task keys by an ID feature) -> int32 ids."""
        f = self.spec.feature(name)
        if f.kind != "categorical":
            raise FeatureError(f"feature {name!r} is {f.kind}: only a categorical feature encodes task keys")
        return self._ids(f, tf.convert_to_tensor(values))

    def call(self, inputs: dict) -> dict:
        out = {}
        for f in self.spec.features:
            if f.name not in inputs:
                raise FeatureError(f"input is missing feature {f.name!r}")
            x = inputs[f.name]
            if f.is_numeric:
                x = tf.cast(x, self.compute_dtype)
                out[f.name] = (x - f.mean) / f.std
            else:
                out[f.name] = self._ids(f, x)
        return out

    def compute_output_spec(self, inputs):  # keep Keras' symbolic tracing away from the lookup tables
        return {f.name: keras.KerasTensor(inputs[f.name].shape, "int32" if not f.is_numeric else self.compute_dtype)
                for f in self.spec.features}

    def get_config(self):
        return {**super().get_config(), "spec": self.spec.to_dict()}
