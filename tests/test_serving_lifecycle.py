"""The serving stand-in's life cycle, as TF Serving's: versions and models come and go with the file
system and models.config (requests in flight finish), version labels, GetModelStatus, per-request
deadlines, graceful stop on SIGTERM, and a short load test with a version deployed halfway."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from limaml_tf import export as ex
from limaml_tf.serving.server import PredictionServicer, start_server
from tests.serving_helpers import DIM, request_rows, tiny, tiny_model  # noqa: F401

State = get_model_status_pb2.ModelVersionStatus.State


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny):
    """Two versions of "ranker" (different weights) exported once; tests copy them where they need."""
    model, spec, df = tiny
    root = tmp_path_factory.mktemp("exports")
    ex.export_serving(model, str(root), "ranker", train_df=df)
    ex.export_serving(tiny_model(seed=1)[0], str(root), "ranker", train_df=df)
    return root / "ranker", spec, df


def deploy(exports, base, version: int) -> None:
    """A version directory appears in one rename, as export_serving writes it."""
    (base / "ranker").mkdir(parents=True, exist_ok=True)
    shutil.copytree(exports[0] / str(version), base / "ranker" / f".{version}.staging")
    os.rename(base / "ranker" / f".{version}.staging", base / "ranker" / str(version))


def saved_models_with(exports, tmp_path, version: int):
    """A fresh model base directory serving `version` of "ranker"."""
    base = tmp_path / "saved_models"
    deploy(exports, base, version)
    return base


def predict_request(spec, df, label=None, version=None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ranker"
    if label:
        request.model_spec.version_label = label
    if version:
        request.model_spec.version.value = version
    for k, v in request_rows(spec, df).items():
        request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    return request


def wait_for(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Slow:
    """Wraps a servable's signature: each call blocks until `release` is set; counts calls."""

    def __init__(self, fn):
        self.fn, self.calls, self.entered, self.release = fn, 0, threading.Event(), threading.Event()

    def __call__(self, **inputs):
        self.calls += 1
        self.entered.set()
        self.release.wait(30)
        return self.fn(**inputs)


def slow_down(server, version: int) -> Slow:
    servable = server.repository.models["ranker"].versions[version]
    slow = servable.signatures["serving_default"] = Slow(servable.signatures["serving_default"])
    return slow


def test_reload_versions_labels_status_and_in_flight_requests(exports, tmp_path):
    _, spec, df = exports
    base = saved_models_with(exports, tmp_path, 1)
    ex.write_models_config(str(base), "ranker")  # the default policy: the latest version
    server, port = start_server(str(base), port=0, file_system_poll_wait=0.05, config_poll_wait=0.2)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
    model_service = model_service_pb2_grpc.ModelServiceStub(channel)

    def states():
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "ranker"
        try:
            return {s.version: s.state for s in model_service.GetModelStatus(request).model_version_status}
        except grpc.RpcError as e:
            return e.code()

    def served_version(**kw):
        return predict(predict_request(spec, df, **kw), timeout=30).model_spec.version.value

    try:
        assert states() == {1: State.AVAILABLE} and served_version() == 1
        # a request in flight on version 1 while version 2 is deployed and version 1 unloaded
        slow = slow_down(server, 1)
        in_flight = predict.future(predict_request(spec, df), timeout=30)
        assert slow.entered.wait(30)
        deploy(exports, base, 2)
        wait_for(lambda: states() == {1: State.END, 2: State.AVAILABLE}, "version 2 loaded, version 1 unloaded")
        assert served_version() == 2
        with pytest.raises(grpc.RpcError) as info:
            served_version(version=1)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "available versions: [2]" in info.value.details()
        slow.release.set()
        assert in_flight.result().model_spec.version.value == 1  # finished on the version it started on

        # version labels in models.config, picked up by the config poll
        ex.write_models_config(str(base), "ranker", versions=[1, 2], labels={"stable": 1, "canary": 2})
        wait_for(lambda: states() == {1: State.AVAILABLE, 2: State.AVAILABLE}, "both versions served")
        wait_for(lambda: server.repository.models["ranker"].labels == {"stable": 1, "canary": 2}, "labels")
        assert served_version(label="stable") == 1 and served_version(label="canary") == 2
        with pytest.raises(grpc.RpcError) as info:
            served_version(label="beta")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'beta'" in info.value.details()
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name, request.model_spec.version_label = "ranker", "canary"
        assert [s.version for s in model_service.GetModelStatus(request).model_version_status] == [2]

        # ReloadConfig: a label naming a version that is not served is refused
        config = model_server_config_pb2.ModelServerConfig()
        entry = config.model_config_list.config.add(name="ranker", base_path=str(base / "ranker"),
                                                    model_platform="tensorflow")
        entry.model_version_policy.specific.versions.append(2)
        entry.version_labels["stable"] = 1
        reply = model_service.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config))
        assert reply.status.error_code != 0 and "not available" in reply.status.error_message

        # the model removed from models.config: unloaded
        (base / "models.config").write_text("model_config_list {}\n")
        wait_for(lambda: "ranker" not in server.repository.models, "the model unloaded")
        with pytest.raises(grpc.RpcError) as info:
            served_version()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert states() == {1: State.END, 2: State.END}
    finally:
        channel.close()
        server.stop(0)


def test_deadline_passed_before_the_model_ran(exports, tmp_path):
    _, spec, df = exports
    base = saved_models_with(exports, tmp_path, 2)
    server, port = start_server(str(base), port=0, max_workers=1, file_system_poll_wait=0)
    slow = slow_down(server, 2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
            first = predict.future(predict_request(spec, df), timeout=30)
            assert slow.entered.wait(30)
            with pytest.raises(grpc.RpcError) as info:  # waits for the only worker thread, past its deadline
                predict(predict_request(spec, df), timeout=0.3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            slow.release.set()
            assert first.result().model_spec.version.value == 2
            time.sleep(0.2)  # the queued request reaches the worker: its deadline has passed
            assert slow.calls == 1  # ...so the model never ran for it

        class Expired:  # the servicer's own check, without gRPC's: DEADLINE_EXCEEDED, model not run
            def time_remaining(self):
                return -0.1

            def abort(self, code, details):
                raise RuntimeError(code, details)

        with pytest.raises(RuntimeError) as info:
            PredictionServicer(server.repository).Predict(predict_request(spec, df), Expired())
        assert info.value.args[0] == grpc.StatusCode.DEADLINE_EXCEEDED and "deadline" in info.value.args[1]
        assert slow.calls == 1
    finally:
        server.stop(0)


def test_sigterm_stops_gracefully_after_requests_in_flight(exports, tmp_path, capsys):
    """`limaml serve` gets a real SIGTERM while a request is in flight: the request finishes, the server
    refuses new ones and the command returns 0."""
    from limaml_cli.serve import serve

    _, spec, df = exports
    base = saved_models_with(exports, tmp_path, 1)
    seen = {}

    def client(server):
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
            slow = slow_down(server, 1)
            in_flight = predict.future(predict_request(spec, df), timeout=30)
            assert slow.entered.wait(30)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)
            slow.release.set()
            seen["in_flight"] = in_flight.result().model_spec.version.value
            time.sleep(0.3)
            try:
                predict(predict_request(spec, df), timeout=5)
            except grpc.RpcError as e:
                seen["after"] = e.code()

    args = argparse.Namespace(saved_models=str(base), model_config_file=None, host="127.0.0.1", port=0,
                              max_request_bytes=1 << 20, fs_poll_wait=0, config_poll_wait=0, grace_seconds=10)
    threads = []
    assert serve(args, ready=lambda s: threads.append(threading.Thread(target=client, args=(s,))) or
                 threads[0].start()) == 0
    threads[0].join(30)
    assert seen == {"in_flight": 1, "after": grpc.StatusCode.UNAVAILABLE}
    out = capsys.readouterr().out
    assert "SIGTERM: stopping" in out and out.rstrip().endswith("[serve] stopped")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored


def test_short_load_with_a_version_deployed_halfway(exports, tmp_path):
    """benchmarks/serving_latency.py's load test, small: no request fails while version 2 replaces 1."""
    from benchmarks.serving_latency import load_test

    _, spec, df = exports
    base = saved_models_with(exports, tmp_path, 1)
    server, port = start_server(str(base), port=0, file_system_poll_wait=0.05)
    try:
        out = load_test(f"127.0.0.1:{port}", predict_request(spec, df), clients=4, per_client=40,
                        deploy=lambda: deploy(exports, base, 2),
                        deployed=lambda: sorted(server.repository.models["ranker"].versions) == [2], warmup=1)
    finally:
        server.stop(0)
    assert out["errors"] == 0 and out["all"]["requests"] >= 160 and out["during_reload"]["requests"] > 0, out
    assert set(out["answers"]) == {"version 1", "version 2"}, out["answers"]
    assert np.isfinite(out["all"]["p99_ms"])


def test_a_version_that_fails_to_load_is_reported_and_the_served_one_stays(exports, tmp_path):
    _, spec, df = exports
    base = saved_models_with(exports, tmp_path, 1)
    server, port = start_server(str(base), port=0, file_system_poll_wait=0)
    try:
        (base / "ranker" / "2").mkdir()
        (base / "ranker" / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
        server.repository.refresh()
        assert server.repository.status[("ranker", 2)][0] == State.END and server.repository.status[("ranker", 2)][1]
        assert server.repository.get("ranker").version == 1  # still served
    finally:
        server.stop(0)


def test_version_policy():
    from limaml_tf.serving.repository import aspired

    config = model_server_config_pb2.ModelConfig(name="m")
    assert aspired(None, [1, 3, 4]) == [4] and aspired(config, [1, 3, 4]) == [4]
    config.model_version_policy.latest.num_versions = 2
    assert aspired(config, [1, 3, 4]) == [3, 4]
    config.model_version_policy.specific.versions.extend([1, 2])
    assert aspired(config, [1, 3, 4]) == [1]
    config.model_version_policy.all.SetInParent()
    assert aspired(config, [1, 3, 4]) == [1, 3, 4]
