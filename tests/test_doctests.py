"""The runnable examples in the public classes' docstrings (LiMAMLModel, VanillaModel, every block)."""

import doctest

import pytest

import limaml_tf.blocks.dcn
import limaml_tf.blocks.feature_embedding
import limaml_tf.blocks.id_embedding
import limaml_tf.blocks.mlp
import limaml_tf.blocks.transformer
import limaml_tf.model
import limaml_tf.vanilla

MODULES = [limaml_tf.blocks.dcn, limaml_tf.blocks.feature_embedding, limaml_tf.blocks.id_embedding,
           limaml_tf.blocks.mlp, limaml_tf.blocks.transformer, limaml_tf.model, limaml_tf.vanilla]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
