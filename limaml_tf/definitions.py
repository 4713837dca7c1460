"""Several task definitions at once: one meta block per definition (e.g. a user, a user x genre).

`LiMAMLModel(meta_block={"user": ..., "user_x_genre": ...}, ...)` wraps the dict in `MetaBlocks`:
called as a layer it returns the un-adapted meta embeddings of every definition concatenated in
sorted definition order — the `"meta_embedding"` the global block reads (so any global block works
unchanged; the serving signature keeps one `meta_embedding` input of the summed size). The inner
loop (`limaml_tf.maml.adapt_and_score_definitions`) adapts each definition's block on its own
tasks' support sets. See docs/task_definitions.md.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from limaml_tf.api_export import limaml_export
from limaml_tf.blocks import TaskParameterizedMetaBlock


@limaml_export
class MetaBlocks(keras.layers.Layer):
    """{definition: meta block} -> the blocks' embeddings concatenated in sorted definition order."""

    def __init__(self, blocks: dict, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(blocks, dict) or not blocks:
            raise ValueError("meta_block as a dict must map each task definition to a meta block, e.g. "
                             "{'user': MLPMetaBlock(...), 'user_x_genre': MLPMetaBlock(...)}")
        for d, block in blocks.items():
            if isinstance(block, TaskParameterizedMetaBlock):
                raise ValueError(f"meta block of definition {d!r}: a TaskParameterizedMetaBlock (ID embedding) is "
                                 "not supported with several task definitions yet; use an MLP-style meta block")
        self.names = sorted(blocks)
        self.blocks = {d: blocks[d] for d in self.names}  # tracked by Keras (sorted order)

    def build(self, input_shape=None):
        pass  # the blocks build on their first call

    def call(self, inputs, training=False):
        return tf.concat([self._call(self.blocks[d], inputs, training) for d in self.names], -1)

    @staticmethod
    def _call(block, inputs, training):
        return block(inputs, training=training) if block._call_has_training_arg else block(inputs)

    def split(self, params) -> dict:
        """A flat list of this layer's trainable values (its `trainable_variables` order) -> {definition: list}."""
        owner = self._owners()
        variables = self.trainable_variables
        if len(variables) != len(params):
            raise ValueError(f"MetaBlocks.split: {len(params)} values for {len(variables)} variables")
        out = {d: [] for d in self.names}
        for v, p in zip(variables, params):
            out[owner[id(v)]].append(p)
        return out

    def join(self, params_by_definition: dict) -> list:
        """The inverse of `split`: {definition: list} -> a flat list in `trainable_variables` order."""
        owner = self._owners()
        taken = {d: iter(params_by_definition[d]) for d in self.names}
        return [next(taken[owner[id(v)]]) for v in self.trainable_variables]

    def _owners(self) -> dict:
        """id(trainable variable) -> the definition whose block holds it."""
        return {id(v): d for d in self.names for v in self.blocks[d].trainable_variables}

    def get_config(self):
        return {**super().get_config(),
                "blocks": {d: keras.saving.serialize_keras_object(b) for d, b in self.blocks.items()}}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["blocks"] = {d: keras.saving.deserialize_keras_object(b) for d, b in config["blocks"].items()}
        return cls(**config)


def is_multi(block) -> bool:
    return isinstance(block, MetaBlocks)
