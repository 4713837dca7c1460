"""Shared fixtures for the serving tests: a tiny model whose global block reads every feature
(meta features included) and a vocabulary feature (lookup table inside the exported graph)."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from limaml_tf import DCNGlobalBlock, LiMAMLModel, MLPMetaBlock, TransformerMetaBlock, make_synthetic
from limaml_tf.sequences import add_sequences
from limaml_tf.raw_data import SEQUENCE_KINDS
from limaml_tf.spec import Feature
from limaml_tf.tasks import split_tasks

DIM = 4


def tiny_model(seed: int = 0, dim: int = DIM, sequences: bool = False):
    """With `sequences`, the meta block is a TransformerMetaBlock over the task's previous 3 interactions
    (item ids with a vocabulary, labels, time gaps) and the segment / activity features."""
    keras.utils.set_random_seed(seed)
    df, spec = make_synthetic(num_tasks=24, num_items=20, mean_samples_per_task=12, seed=seed)
    segment = dataclasses.replace(spec.meta_features[0], vocabulary=tuple(f"s{i}" for i in range(4)))
    meta = (segment,) + spec.meta_features[1:]
    if sequences:
        df = df.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
        df = add_sequences(df, "user_id", "timestamp", {"seq_item": "item_id"}, 3, label="label",
                           label_name="seq_label", gap_name="seq_gap")
        meta += (Feature("seq_item", "sequence", vocabulary=tuple(f"i{i}" for i in range(15)), max_len=3),
                 Feature("seq_label", "numeric_sequence", max_len=3), Feature("seq_gap", "numeric_sequence", max_len=3))
    spec = dataclasses.replace(spec, meta_features=meta).fit(df)
    block = (TransformerMetaBlock(spec.meta_features, output_dim=dim, model_dim=8, hidden_units=(8,)) if sequences
             else MLPMetaBlock(spec.meta_features, output_dim=dim, hidden_units=(8,)))
    flat = [f for f in spec.features if f.kind not in SEQUENCE_KINDS]  # the global block reads every other feature
    model = LiMAMLModel(block, DCNGlobalBlock(flat, num_cross_layers=1, hidden_units=(8,), embedding_dim=4),
                        spec, inner_learning_rate=0.5)
    return model, spec, df


@pytest.fixture(scope="session")
def tiny():
    """(model, spec, df), shared by the serving test modules; the model has run adapt_and_predict, which
    caches tf.functions on it (exports must cope with that)."""
    model, spec, df = tiny_model()
    model.adapt_and_predict(split_tasks(df, spec, max_samples_per_task=8).arrays)
    return model, spec, df


def request_rows(spec, df, n: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Raw rows incl. an unseen vocabulary value (s5), missing values ("") and a random embedding."""
    raw = spec.raw_arrays(df.iloc[:n])
    raw["segment"] = np.array(["s0", "s5", "", "s3", "s1", "s2"][:n], dtype=object)
    raw["item_tags"][0] = ["", "", ""]
    if "seq_item" in raw:
        raw["seq_item"][1] = ["i99", "", ""]  # a real past item outside the vocabulary
    raw["meta_embedding"] = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return raw


def keras_probability(model, raw: dict) -> np.ndarray:
    return model({k: tf.constant(v) for k, v in raw.items()}).numpy()
