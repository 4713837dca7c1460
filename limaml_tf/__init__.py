"""limaml-tf: personalize deep recommender models with meta learning (LiMAML, KDD 2024)."""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from limaml_tf.blocks import (DCNGlobalBlock, FeatureEmbedding, IDEmbeddingMetaBlock,  # noqa: E402
                              MLPGlobalBlock, MLPMetaBlock)
from limaml_tf.features import Feature, FeatureEncoder, FeatureError, FeatureSpec  # noqa: E402
from limaml_tf.model import LiMAMLModel, VanillaModel  # noqa: E402
from limaml_tf.synthetic import make_synthetic  # noqa: E402
from limaml_tf.tasks import TaskSet, paired_tasks, split_tasks, time_split  # noqa: E402

__version__ = "0.1.0"
__all__ = ["DCNGlobalBlock", "Feature", "FeatureEmbedding", "FeatureEncoder", "FeatureError", "FeatureSpec",
           "IDEmbeddingMetaBlock", "LiMAMLModel", "MLPGlobalBlock", "MLPMetaBlock", "TaskSet", "VanillaModel",
           "make_synthetic", "paired_tasks", "split_tasks", "time_split"]
