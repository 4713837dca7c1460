"""Meta blocks and global blocks (see `limaml_tf.blocks.transformer` for the contract)."""

from limaml_tf.blocks.transformer import (FEATURES_PART, DCNGlobalBlock, FeatureEmbedding, IDEmbeddingMetaBlock,
                                          MLPGlobalBlock, MLPMetaBlock, TaskParameterizedMetaBlock,
                                          TransformerMetaBlock, check_no_batchnorm)

__all__ = ["FEATURES_PART", "DCNGlobalBlock", "FeatureEmbedding", "IDEmbeddingMetaBlock", "MLPGlobalBlock",
           "MLPMetaBlock", "TaskParameterizedMetaBlock", "TransformerMetaBlock", "check_no_batchnorm"]
