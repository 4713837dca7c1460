"""Shared fixtures for the serving tests: a tiny model whose global block reads every feature
(meta features included) and a vocabulary feature (lookup table inside the exported graph)."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from limaml_tf import DCNGlobalBlock, LiMAMLModel, MLPMetaBlock, make_synthetic
from limaml_tf.tasks import split_tasks

DIM = 4


def tiny_model(seed: int = 0, dim: int = DIM):
    keras.utils.set_random_seed(seed)
    df, spec = make_synthetic(num_tasks=24, num_items=20, mean_samples_per_task=12, seed=seed)
    segment = dataclasses.replace(spec.meta_features[0], vocabulary=tuple(f"s{i}" for i in range(4)))
    spec = dataclasses.replace(spec, meta_features=(segment,) + spec.meta_features[1:]).fit(df)
    model = LiMAMLModel(MLPMetaBlock(spec.meta_features, output_dim=dim, hidden_units=(8,)),
                        DCNGlobalBlock(spec.features, num_cross_layers=1, hidden_units=(8,), embedding_dim=4),
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
    raw["meta_embedding"] = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return raw


def keras_probability(model, raw: dict) -> np.ndarray:
    return model({k: tf.constant(v) for k, v in raw.items()}).numpy()
