"""gRPC path: official tensorflow_serving stubs against the local PredictionService; client validation."""

from __future__ import annotations

import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from limaml_tf import export as ex
from limaml_cli import build_parser
from limaml_tf.serving import InMemoryEmbeddingStore, ServingClient, ServingError
from limaml_tf.serving.server import start_server
from tests.serving_helpers import DIM, keras_probability, request_rows, tiny, tiny_model  # noqa: F401


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny):
    model, spec, df = tiny
    other, _, _ = tiny_model(seed=1)  # version 2: different weights
    base = str(tmp_path_factory.mktemp("saved_models"))
    path = ex.export_serving(model, base, "ranker", train_df=df)
    ex.export_serving(other, base, "ranker", train_df=df)
    ex.write_models_config(base, "ranker", versions=[1, 2])  # both served (the default: the latest only)
    server, port = start_server(base, port=0)
    store = InMemoryEmbeddingStore(DIM)
    client = ServingClient.from_export(path, f"127.0.0.1:{port}", store, version=1)
    yield model, other, spec, df, path, store, client
    client.close()
    server.stop(0)


def test_round_trip_with_store_and_cold_start(served):
    model, _, spec, df, path, store, client = served
    raw = request_rows(spec, df)
    features = {k: v for k, v in raw.items() if k != "meta_embedding"}
    keys = ["a", "b", "a", "new", "c", "b"]
    rng = np.random.default_rng(3)
    rows = {k: rng.normal(size=DIM).astype(np.float32) for k in ("a", "b", "c")}
    store.put(list(rows), np.stack(list(rows.values())))
    cold = np.asarray(ex.load_serving_metadata(path)[1]["cold_start_embedding"], np.float32)
    expected_emb = np.stack([rows.get(k, cold) for k in keys])

    emb, found = client.embeddings(keys)
    np.testing.assert_array_equal(found, [k != "new" for k in keys])
    np.testing.assert_allclose(emb, expected_emb)
    got = client.predict(features, keys)
    want = keras_probability(model, {**features, "meta_embedding": expected_emb})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a DataFrame request (multi-valued as "a|b" strings) gives the same numbers
    frame = df.iloc[:6].assign(segment=features["segment"], item_tags=["", *df["item_tags"].iloc[1:6]])
    np.testing.assert_allclose(client.predict(frame, keys), got, rtol=1e-6)


def test_version_routing_and_metadata(served):
    model, other, spec, df, _, _, client = served
    raw = request_rows(spec, df)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ranker"  # no version: the latest (2)
    for k, v in raw.items():
        request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    response = client.stub.Predict(request)
    assert response.model_spec.version.value == 2 and response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probability"]), keras_probability(other, raw),
                               rtol=1e-5, atol=1e-6)
    request.model_spec.version.value = 1
    np.testing.assert_allclose(tf.make_ndarray(client.stub.Predict(request).outputs["probability"]),
                               keras_probability(model, raw), rtol=1e-5, atol=1e-6)

    meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_request.model_spec.name = "ranker"
    meta = client.stub.GetModelMetadata(meta_request)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    assert meta.model_spec.version.value == 2 and list(sig_map.signature_def) == ["serving_default"]
    assert {k: v.dtype for k, v in sig.inputs.items()} == {
        **{f.name: (tf.float32 if f.kind == "numeric" else tf.string).as_datatype_enum for f in spec.features},
        "meta_embedding": tf.float32.as_datatype_enum}
    assert [d.size for d in sig.inputs["meta_embedding"].tensor_shape.dim] == [-1, DIM]
    assert list(sig.outputs) == ["probability"]


def _rpc_error(client, request, method="Predict"):
    with pytest.raises(grpc.RpcError) as info:
        getattr(client.stub, method)(request)
    return info.value.code(), info.value.details()


MALFORMED = {
    "missing input": (lambda r: r.inputs.pop("hour"), grpc.StatusCode.INVALID_ARGUMENT, "missing input(s) ['hour']"),
    "unknown input": (lambda r: r.inputs["hours"].CopyFrom(tf.make_tensor_proto([1.0] * 6)),
                      grpc.StatusCode.INVALID_ARGUMENT, "unknown input(s) ['hours']"),
    "wrong dtype": (lambda r: r.inputs["hour"].CopyFrom(tf.make_tensor_proto(np.array(["x"] * 6, object))),
                    grpc.StatusCode.INVALID_ARGUMENT, "input 'hour' has dtype string"),
    "wrong embedding size": (lambda r: r.inputs["meta_embedding"].CopyFrom(tf.make_tensor_proto(
        np.zeros((6, DIM + 1), np.float32))), grpc.StatusCode.INVALID_ARGUMENT, f"expects [-1, {DIM}]"),
    "batch mismatch": (lambda r: r.inputs["hour"].CopyFrom(tf.make_tensor_proto(np.zeros(5, np.float32))),
                       grpc.StatusCode.INVALID_ARGUMENT, "different batch sizes"),
    "NaN": (lambda r: r.inputs["hour"].CopyFrom(tf.make_tensor_proto(np.full(6, np.nan, np.float32))),
            grpc.StatusCode.INVALID_ARGUMENT, "'hour' has NaN"),
    "unknown signature": (lambda r: setattr(r.model_spec, "signature_name", "predict"),
                          grpc.StatusCode.INVALID_ARGUMENT, "'predict' not found"),
    "unknown version": (lambda r: r.model_spec.version.__setattr__("value", 7), grpc.StatusCode.NOT_FOUND,
                        "no version 7; available versions: [1, 2]"),
    "unknown model": (lambda r: setattr(r.model_spec, "name", "rankr"), grpc.StatusCode.NOT_FOUND, "'rankr'"),
    "unknown output": (lambda r: r.output_filter.append("score"), grpc.StatusCode.INVALID_ARGUMENT, "['score']"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_are_rejected(served, case):
    _, _, spec, df, _, _, client = served
    request = client.build_request({k: v for k, v in request_rows(spec, df).items() if k != "meta_embedding"},
                                    ["a"] * 6)
    corrupt, code, message = MALFORMED[case]
    corrupt(request)
    got_code, details = _rpc_error(client, request)
    assert got_code == code and message in details, details


def test_metadata_request_validation(served):
    client = served[-1]
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["everything"])
    request.model_spec.name = "ranker"
    code, details = _rpc_error(client, request, "GetModelMetadata")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "signature_def" in details


def test_client_rejects_bad_requests_before_sending(served):
    _, _, spec, df, path, _, client = served
    features = {k: v for k, v in request_rows(spec, df).items() if k != "meta_embedding"}
    with pytest.raises(ServingError, match=r"missing feature\(s\) \['hour'\]"):
        client.predict({k: v for k, v in features.items() if k != "hour"}, ["a"] * 6)
    with pytest.raises(ServingError, match="numeric feature 'hour' got <U"):
        client.predict({**features, "hour": ["1"] * 6}, ["a"] * 6)
    with pytest.raises(ServingError, match="categorical feature 'item_id' got float64"):
        client.predict({**features, "item_id": np.arange(6) * 1.5}, ["a"] * 6)
    with pytest.raises(ServingError, match="different numbers of samples"):
        client.predict({**features, "hour": np.zeros(5)}, ["a"] * 6)
    with pytest.raises(ServingError, match="got 2 task keys for 6 samples"):
        client.predict(features, ["a", "b"])
    wrong_store = InMemoryEmbeddingStore(DIM + 2)
    with pytest.raises(ServingError, match=f"size {DIM + 2}, model 'ranker' expects {DIM}"):
        ServingClient.from_export(path, "127.0.0.1:1", wrong_store).predict(features, ["a"] * 6)
    # integer categorical ids are sent as their text (like training's astype(str))
    assert client.build_request({**features, "item_id": np.arange(6)}, ["a"] * 6).inputs["item_id"].string_val[1] \
        == b"1"


def test_serve_subcommand_is_registered():
    args = build_parser().parse_args(["serve", "--saved-models", "x", "--port", "0"])
    assert (args.command, args.saved_models, args.port) == ("serve", "x", 0)


@pytest.mark.heavy
def test_demo_serves_one_user_through_grpc(tmp_path, capsys, tiny):
    from limaml_cli.demo import export_models, serve_one_user
    from limaml_tf.tasks import time_split

    model, spec, df = tiny
    train_df, valid_df, test_df = time_split(df, spec)
    saved_models = str(tmp_path / "saved_models")
    serving_path, adapter_path = export_models(model, saved_models, "limaml", train_df)
    assert (serving_path, adapter_path) == (os.path.join(saved_models, "limaml", "1"),
                                            os.path.join(saved_models, "limaml_adapter", "1"))
    out = serve_one_user(saved_models, serving_path, model, spec, valid_df, test_df, adapter_path=adapter_path)
    assert out["found"] and out["probability"] == pytest.approx(out["keras_probability"], abs=1e-6)
    assert abs(out["probability"] - out["cold_start_probability"]) > 1e-5  # the store's embedding mattered
    assert "gRPC Predict -> probability" in capsys.readouterr().out
