"""Sequence features and the transformer meta block: causal builder (no future / query label leaks),
spec kinds and their errors, in-graph encoding, padding, the meta-gradient against the per-task loop,
save/load. (Export to the serving model / adapter and the C++ loader: tests/test_serving_export.py.)"""

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import limaml_tf as lt
from limaml_tf.features import FeatureEncoder
from limaml_tf.sequences import add_sequences, previous_rows
from limaml_tf.raw_data import FeatureError
from limaml_tf.spec import Feature, FeatureSpec
from test_meta_gradients import _max_rel_err, reference_meta_gradients

L = 4


def _rows():
    """Two users; u1 has two ratings tied on time (t=20)."""
    return pd.DataFrame({"user": ["u1"] * 5 + ["u2"] * 2, "t": [10, 20, 20, 30, 40, 5, 6],
                         "item": ["a", "b", "c", "d", "e", "f", "g"], "label": [1, 0, 1, 1, 0, 0, 1]})


def test_builder_is_causal_most_recent_first_and_ties_see_nothing_of_each_other():
    df = add_sequences(_rows(), "user", "t", {"seq_item": "item"}, max_len=3, label="label",
                       label_name="seq_label", gap_name="seq_gap")
    assert df["seq_item"].tolist() == [[], ["a"], ["a"], ["c", "b", "a"], ["d", "c", "b"], [], ["f"]]
    assert df["seq_label"].tolist()[3] == [1.0, 0.0, 1.0]
    np.testing.assert_allclose(df["seq_gap"][3], np.log1p(np.array([10, 10, 20]) / 86400.0))
    with pytest.raises(FeatureError, match="sorted by"):
        previous_rows(_rows().iloc[::-1], "user", "t", 3)


def test_query_rows_see_support_only_and_no_query_label_leaks():
    """Per-user protocols: support rows see earlier support rows; query rows see every support row of
    their task (even a later one) and never a query row, so changing query labels changes no sequence."""
    df = _rows()
    is_support = np.array([1, 0, 1, 0, 1, 1, 0], bool)  # u1's row at t=40 is support, later than its queries
    out = add_sequences(df, "user", "t", {"seq_item": "item"}, 5, label="label", label_name="seq_label",
                        gap_name="seq_gap", is_support=is_support)
    assert out["seq_item"].tolist() == [[], ["e", "c", "a"], ["a"], ["e", "c", "a"], ["c", "a"], [], ["f"]]
    assert out["seq_gap"][1][0] < 0  # the later support row: a negative gap
    flipped = df.assign(label=np.where(is_support, df["label"], 1 - df["label"]))
    again = add_sequences(flipped, "user", "t", {"seq_item": "item"}, 5, label="label", label_name="seq_label",
                          is_support=is_support)
    assert again["seq_label"].tolist() == out["seq_label"].tolist()
    # and no row ever sees itself or a strictly later support row of its own (support rows)
    prev = previous_rows(df, "user", "t", 5, is_support)
    t = df["t"].to_numpy()
    for i in np.flatnonzero(is_support):
        assert all(t[j] < t[i] and is_support[j] for j in prev[i] if j >= 0)


def test_movielens_split_sequences_obey_the_support_rule():
    from limaml_tf.movielens import with_sequences

    rng = np.random.default_rng(0)
    n = 40
    df = pd.DataFrame({"user_id": ["1"] * 25 + ["2"] * 15, "timestamp": np.r_[np.sort(rng.integers(0, 99, 25)),
                                                                             np.sort(rng.integers(0, 99, 15))],
                       "movie_id": rng.integers(0, 9, n).astype(str), "label": rng.integers(0, 2, n)})
    is_support = rng.random(n) < 0.6
    seq = with_sequences(df, 6, is_support)
    leaked = with_sequences(df.assign(label=np.where(is_support, df["label"], 7)), 6, is_support)
    assert all(7.0 not in s for s in leaked["seq_label"]) and leaked["seq_label"].tolist() == seq["seq_label"].tolist()


def _seq_spec(vocab=("a", "b", "c")):
    return FeatureSpec("user", "t", "label", (Feature("seq_item", "sequence", vocabulary=vocab, max_len=L),
                                              Feature("seq_label", "numeric_sequence", max_len=L)), ())


def test_spec_kinds_round_trip_encode_and_fit():
    df = pd.DataFrame({"user": ["u", "u"], "t": [1, 2], "label": [0, 1], "seq_item": [[], ["z", "b"]],
                       "seq_label": [[], [1.0, 3.0]]})
    spec = _seq_spec().fit(df)
    assert FeatureSpec.from_json(spec.to_json()) == spec
    assert (spec.feature("seq_label").mean, spec.feature("seq_label").std) == pytest.approx((2.0, np.sqrt(2)))
    raw = spec.raw_arrays(df)
    assert raw["seq_item"].tolist() == [["", "", "", ""], ["z", "b", "", ""]]
    assert raw["seq_label"].dtype == np.float32 and raw["seq_label"].tolist()[1] == [1.0, 3.0, 0.0, 0.0]
    enc = FeatureEncoder(spec)({k: tf.constant(v) for k, v in raw.items()})
    # 0 = padding, 1 = a real value outside the vocabulary ("z"), vocabulary from 2 ("b" -> 3)
    assert enc["seq_item"].numpy().tolist() == [[0, 0, 0, 0], [1, 3, 0, 0]]
    assert spec.feature("seq_item").cardinality == 5


@pytest.mark.parametrize("column, value, match", [
    ("seq_label", [1.0, 2.0, 3.0], "describe the same interactions"),
    ("seq_item", ["a"] * (L + 1), "more than its max_len"),
    ("seq_item", ["a", ""], "non-empty strings"),
    ("seq_label", [np.nan, 1.0], "finite numbers"),
    ("seq_label", "x|y", "finite numbers"),
])
def test_bad_sequences_name_the_field_and_the_fix(column, value, match):
    df = pd.DataFrame({"user": ["u"], "t": [1], "label": [0], "seq_item": [["a", "b"]], "seq_label": [[1.0, 0.0]]})
    df.at[0, column] = value
    with pytest.raises(FeatureError, match=match) as err:
        _seq_spec().validate(df)
    assert column in str(err.value)


def test_numeric_sequence_needs_a_categorical_sequence_and_blocks_check_their_inputs():
    spec = FeatureSpec("user", "t", "label", (Feature("seq_label", "numeric_sequence", max_len=L),), ())
    df = pd.DataFrame({"user": ["u"], "t": [1], "label": [0], "seq_label": [[1.0]]})
    with pytest.raises(FeatureError, match="no categorical `sequence`"):
        spec.validate(df)
    with pytest.raises(ValueError, match="needs a categorical `sequence`"):
        lt.TransformerMetaBlock(spec.meta_features)
    with pytest.raises(ValueError, match="TransformerMetaBlock"):
        lt.MLPMetaBlock(_seq_spec().meta_features)


def _block(seed=0):
    keras.utils.set_random_seed(seed)
    feats = (*_seq_spec().meta_features, Feature("age", "numeric"))
    return lt.TransformerMetaBlock(feats, output_dim=3, model_dim=8, hidden_units=(4,))


def test_padded_positions_change_nothing():
    block = _block()
    ids = tf.constant([[2, 3, 0, 0], [4, 0, 0, 0], [0, 0, 0, 0]])
    x = {"seq_item": ids, "seq_label": tf.constant(np.random.default_rng(0).normal(size=(3, L)), tf.float32),
         "age": tf.constant([0.1, 0.2, 0.3])}
    out = block(x)
    noisy = {**x, "seq_label": tf.where(ids > 0, x["seq_label"], 50.0)}  # anything at padded positions
    np.testing.assert_allclose(block(noisy), out, atol=1e-6)
    longer = {**x, "seq_item": tf.constant([[2, 3, 0, 0], [4, 1, 0, 0], [0, 0, 0, 0]])}  # one more real item
    assert np.abs(block(longer)[1] - out[1]).max() > 1e-4
    np.testing.assert_allclose(block(longer)[::2], out[::2], atol=1e-6)  # rows are independent


@pytest.fixture(scope="module")
def seq_data():
    df, spec = lt.make_synthetic(num_tasks=12, num_items=20, mean_samples_per_task=10, seed=4)
    df = df.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    df = add_sequences(df, "user_id", "timestamp", {"seq_item": "item_id"}, L, label="label",
                       label_name="seq_label", gap_name="seq_gap")
    seqs = (Feature("seq_item", "sequence", num_bins=16, max_len=L),
            Feature("seq_label", "numeric_sequence", max_len=L), Feature("seq_gap", "numeric_sequence", max_len=L))
    spec = FeatureSpec(spec.task_key, spec.timestamp, spec.label, spec.meta_features + seqs, spec.other_features)
    return df, spec.fit(df)


def _seq_model(spec, **kw):
    keras.utils.set_random_seed(1)
    meta = lt.TransformerMetaBlock(spec.meta_features, output_dim=3, model_dim=4, hidden_units=(), embedding_dim=2)
    glob = lt.MLPGlobalBlock(spec.other_features, hidden_units=(4,), embedding_dim=2, activation="tanh")
    return lt.LiMAMLModel(meta, glob, spec, inner_learning_rate=0.7, **kw)


@pytest.mark.heavy
def test_transformer_meta_gradient_matches_per_task_loop(seq_data):
    """Second order through attention, layer norm and the sequence embeddings, vectorized over tasks
    (n = 1; more steps run the same loop, tested with the MLP block in test_meta_gradients.py)."""
    df, spec = seq_data
    bundle = next(lt.split_tasks(df, spec, max_samples_per_task=8).batches(5))
    model = _seq_model(spec)
    loss, grads, _, _ = model.compute_gradients(bundle)
    ref_loss, ref_grads = reference_meta_gradients(model, bundle, 1, 0.7, False)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    paths = [v.path for v in model.trainable_variables]
    key_bias = paths.index(next(p for p in paths if p.endswith("attention_0/key/bias")))
    # softmax is invariant to the key bias: its gradient is 0 up to rounding, compared in absolute terms
    assert float(tf.reduce_max(tf.abs(grads[key_bias]))) < 1e-7
    rest = [i for i in range(len(paths)) if i != key_bias]
    assert _max_rel_err([grads[i] for i in rest], [ref_grads[i] for i in rest]) < 1e-4
    attention = [grads[i] for i in rest if "attention" in paths[i]]
    assert attention and all(float(tf.reduce_max(tf.abs(g))) > 0 for g in attention)


def test_save_load_round_trip(seq_data, tmp_path):
    df, spec = seq_data
    model = _seq_model(spec)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert json.dumps(loaded.meta_block.get_config(), sort_keys=True) == \
        json.dumps(model.meta_block.get_config(), sort_keys=True)
    raw = {k: tf.constant(v) for k, v in spec.raw_arrays(df.iloc[:6]).items()}
    np.testing.assert_allclose(loaded.embed(loaded.encoder(raw)), model.embed(model.encoder(raw)), rtol=1e-6)
    np.testing.assert_allclose(loaded(raw), model(raw), rtol=1e-6)


def test_serving_client_pads_sequences_and_rejects_bad_numbers():
    from limaml_tf.serving.client import ServingError, request_inputs

    spec = _seq_spec()
    out = request_inputs(spec, {"seq_item": [["a", "b"], []], "seq_label": [[1.0, 0.0], []]})
    assert out["seq_item"].tolist() == [["a", "b", "", ""], ["", "", "", ""]]
    assert out["seq_label"].dtype == np.float32 and out["seq_label"].tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    dense = request_inputs(spec, {"seq_item": np.array([["a", ""]]), "seq_label": np.array([[0.5, 0.0]])})
    assert dense["seq_label"].shape == (1, L)
    with pytest.raises(ServingError, match="seq_label"):
        request_inputs(spec, {"seq_item": [["a"]], "seq_label": [[np.nan]]})
