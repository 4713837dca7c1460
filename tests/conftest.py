import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import pytest  # noqa: E402

import limaml_tf as lt  # noqa: E402


@pytest.fixture(scope="session")
def synthetic():
    """A small synthetic data set and its fitted spec (session-wide: read-only)."""
    df, spec = lt.make_synthetic(num_tasks=40, mean_samples_per_task=30, seed=3)
    return df, spec.fit(df)


def tiny_blocks(spec, activation="tanh", output_dim=3):
    meta = lt.MLPMetaBlock(spec.meta_features, output_dim=output_dim, hidden_units=(4,), embedding_dim=2,
                           activation=activation)
    glob = lt.MLPGlobalBlock(spec.other_features, hidden_units=(5,), embedding_dim=2, activation=activation)
    return meta, glob


@pytest.fixture
def float64():
    old, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(old)
    keras.config.set_dtype_policy(old_policy)
