"""How a task adapts, beyond MAML's SGD steps on every meta weight: the checks of `LiMAMLModel`'s
`inner_solver` / `head_only` options and the learned L2 weight of the closed-form solver."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from limaml_tf import closed_form
from limaml_tf.api_export import limaml_export
from limaml_tf.blocks import TaskParameterizedMetaBlock
from limaml_tf.definitions import is_multi

INNER_SOLVERS = ("sgd", "ridge")


@limaml_export
class RidgeL2(keras.layers.Layer):
    """λ of the closed-form solver, λ = softplus(w) > 0 with w learned (initialised so that λ = `initial`).
    A layer of its own, so that exports track it beside the blocks."""

    def __init__(self, initial: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        initial = float(initial)
        if not math.isfinite(initial) or initial <= 0:
            raise ValueError(f"ridge_l2 must be a finite number > 0 (the solver's initial L2 weight), got {initial!r}")
        self.initial = initial
        raw = initial + math.log(-math.expm1(-initial))  # softplus⁻¹(initial), stable for small and large values
        self.raw = self.add_weight(shape=(), initializer=keras.initializers.Constant(raw), name="raw")
        self.built = True  # never called as a layer: its one weight exists from the start

    @property
    def l2(self):
        return tf.nn.softplus(self.raw)

    def get_config(self):
        return {**super().get_config(), "initial": self.initial}


def head_positions(meta_block) -> tuple[int, ...]:
    """Positions, in `meta_block.trainable_variables`, of the weights of its last layer `meta_block.head`."""
    head = getattr(meta_block, "head", None)
    if not isinstance(head, keras.layers.Layer):
        raise ValueError(f"head_only=True adapts the meta block's last layer: {type(meta_block).__name__} has no "
                         "`head` attribute naming it (a Keras layer of the block, e.g. `self.head = self.out`)")
    ids = {id(v) for v in head.trainable_variables}
    positions = tuple(i for i, v in enumerate(meta_block.trainable_variables) if id(v) in ids)
    if not positions:
        raise ValueError(f"head_only=True: the head layer {head.name!r} of {type(meta_block).__name__} has no "
                         "trainable weight of the block")
    return positions


def check_options(model, meta_dim: int) -> tuple[int, ...] | None:
    """Checks `model.inner_solver` / `model.head_only` against its built blocks (`meta_dim`: the width of
    the meta embedding); returns the positions of the meta weights a task adapts (None: all of them)."""
    if model.inner_solver not in INNER_SOLVERS:
        raise ValueError(f"inner_solver must be one of {INNER_SOLVERS}, got {model.inner_solver!r}")
    special = model.inner_solver != "sgd" or model.head_only
    if special and (is_multi(model.meta_block) or isinstance(model.meta_block, TaskParameterizedMetaBlock)):
        raise ValueError(f"inner_solver={model.inner_solver!r}, head_only={model.head_only}: supported for one dense "
                         "meta block (e.g. MLPMetaBlock, TransformerMetaBlock); not with several task definitions or "
                         "a per-task-parameter block (IDEmbeddingMetaBlock)")
    if model.inner_solver == "ridge":
        if model.head_only or model.first_order or model.learn_inner_learning_rate:
            raise ValueError("inner_solver='ridge' solves the task's vector exactly: head_only, first_order and "
                             "learn_inner_learning_rate do not apply; leave them at their defaults")
        closed_form.check_network(model.network, meta_dim)
        return None
    return head_positions(model.meta_block) if model.head_only else None
