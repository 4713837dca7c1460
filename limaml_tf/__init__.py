"""limaml-tf: personalize deep recommender models with meta learning (LiMAML, KDD 2024).

`import limaml_tf` is cheap and has no side effects: it sets no environment variable (Keras 3's
default backend is TensorFlow) and imports neither Keras nor TensorFlow until a name below is
used (`limaml_tf.LiMAMLModel`, `from limaml_tf import make_synthetic`, ...). The Keras-free parts
(`limaml_tf.spec`, `limaml_tf.artifacts`, `limaml_tf.tasks`) can so be imported by Beam workers
and the serving client without loading the model code.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_EXPORTS = {
    "DCNGlobalBlock": "limaml_tf.blocks",
    "FeatureEmbedding": "limaml_tf.blocks",
    "IDEmbeddingMetaBlock": "limaml_tf.blocks",
    "MLPGlobalBlock": "limaml_tf.blocks",
    "MLPMetaBlock": "limaml_tf.blocks",
    "TransformerMetaBlock": "limaml_tf.blocks",
    "add_sequences": "limaml_tf.sequences",
    "Feature": "limaml_tf.spec",
    "FeatureError": "limaml_tf.spec",
    "FeatureSpec": "limaml_tf.spec",
    "FeatureEncoder": "limaml_tf.features",
    "LiMAMLModel": "limaml_tf.model",
    "MetaBlocks": "limaml_tf.definitions",
    "VanillaModel": "limaml_tf.vanilla",
    "make_synthetic": "limaml_tf.synthetic",
    "TaskSet": "limaml_tf.tasks",
    "paired_tasks": "limaml_tf.tasks",
    "split_tasks": "limaml_tf.tasks",
    "time_split": "limaml_tf.tasks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'limaml_tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
