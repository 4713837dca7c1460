"""Meta blocks and global blocks, one per module; `limaml_tf.blocks.base` states the contract a block
follows (any Keras layer or model can be one).

* meta blocks: `MLPMetaBlock` (mlp), `TransformerMetaBlock` (transformer: the task's previous
  interactions), `IDEmbeddingMetaBlock` (id_embedding: a per-task ID embedding);
* global blocks: `MLPGlobalBlock` (mlp), `DCNGlobalBlock` (dcn), `FactorizedGlobalBlock` (factorized: any global
  block plus a task x item term, what the closed-form solver adapts);
* `FeatureEmbedding` (feature_embedding): the encoded features as one dense vector, the blocks' input layer.
"""

from limaml_tf.blocks.base import FEATURES_PART, TaskParameterizedMetaBlock, check_no_batchnorm
from limaml_tf.blocks.dcn import DCNGlobalBlock
from limaml_tf.blocks.factorized import FactorizedGlobalBlock
from limaml_tf.blocks.feature_embedding import FeatureEmbedding
from limaml_tf.blocks.id_embedding import IDEmbeddingMetaBlock
from limaml_tf.blocks.mlp import MLPGlobalBlock, MLPMetaBlock
from limaml_tf.blocks.transformer import TransformerMetaBlock

__all__ = ["FEATURES_PART", "DCNGlobalBlock", "FactorizedGlobalBlock", "FeatureEmbedding", "IDEmbeddingMetaBlock", "MLPGlobalBlock",
           "MLPMetaBlock", "TaskParameterizedMetaBlock", "TransformerMetaBlock", "check_no_batchnorm"]
