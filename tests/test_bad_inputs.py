"""The bad-input matrix (tests/bad_input_cases.py): each bad input raises the package's own error
naming the field and the fix, or is handled as documented; docs/reliability.md lists every case."""

from __future__ import annotations

import functools
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests import bad_input_cases
from tests.bad_input_cases import CASES, Case
from tests.serving_helpers import DIM, tiny_model

MAX_REQUEST_BYTES = 64 << 10


class Context:
    """What the cases feed bad inputs to; the model, exports and server are built on first use."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.model, self.spec, self.df = tiny_model()
        self.monkeypatch = None

    @functools.cached_property
    def saved_models(self) -> str:
        from limaml_tf.export import export_serving
        base = str(self.tmp / "saved_models")
        export_serving(self.model, base, "ranker", train_df=self.df)
        return base

    @functools.cached_property
    def adapter(self) -> str:
        from limaml_tf.export import export_adapter
        return export_adapter(self.model, str(self.tmp / "adapter"), "ranker")

    @functools.cached_property
    def interactions_dir(self) -> str:
        d = self.tmp / "interactions"
        d.mkdir()
        self.df.to_parquet(d / "part-0.parquet")
        return str(d)

    @functools.cached_property
    def stub(self):
        from limaml_tf.serving.server import start_server
        self.server, port = start_server(self.saved_models, port=0, max_request_bytes=MAX_REQUEST_BYTES)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def request(self, rows: int) -> predict_pb2.PredictRequest:
        raw = self.spec.raw_arrays(self.df.iloc[np.arange(rows) % len(self.df)])
        raw["meta_embedding"] = np.zeros((rows, DIM), np.float32)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ranker"
        for k, v in raw.items():
            request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
        return request

    def close(self):
        if "stub" in self.__dict__:
            self.channel.close()
            self.server.stop(0)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    context = Context(tmp_path_factory.mktemp("bad_inputs"))
    yield context
    context.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(ctx, case: Case, monkeypatch):
    ctx.monkeypatch = monkeypatch
    if case.error is None:
        case.run(ctx)  # accepted by design: the case checks what happens
        return
    with pytest.raises(case.error) as info:
        case.run(ctx)
    message = info.value.details() if isinstance(info.value, grpc.RpcError) else str(info.value)
    assert case.field in message, f"the message does not name {case.field!r}: {message}"
    assert case.fix in message, f"the message does not say the fix {case.fix!r}: {message}"


def test_the_matrix_is_large_and_ids_are_unique():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert {c.area for c in CASES} >= {"Python API", "CLI", "refresh pipeline", "exporter", "gRPC server"}


def test_reliability_doc_is_current():
    with open(bad_input_cases.DOC, encoding="utf-8") as f:
        assert f.read() == bad_input_cases.render(), "docs/reliability.md is stale: run python -m tests.bad_input_cases"


@pytest.mark.heavy
def test_cli_error_is_one_line_without_traceback_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "limaml_cli", "serve", "--saved-models", "/nonexistent"],
                          capture_output=True, text=True, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("limaml serve: error: saved models directory '/nonexistent' does not exist"), last


def test_traceback_flag_and_environment_show_the_traceback(monkeypatch):
    from limaml_cli import main
    with pytest.raises(FileNotFoundError):
        main(["--traceback", "serve", "--saved-models", "/nonexistent"])
    monkeypatch.setenv("LIMAML_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        main(["serve", "--saved-models", "/nonexistent"])


def test_usage_errors_exit_2(capsys):
    from limaml_cli import main
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "eighty"])
    assert info.value.code == 2 and "limaml serve: error: argument --port" in capsys.readouterr().err
