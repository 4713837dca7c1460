"""Local PredictionService: a development / test stand-in for TF Serving, run by `limaml serve`.

Speaks TF Serving's gRPC API — `tensorflow.serving.PredictionService` (Predict, GetModelMetadata) and
`ModelService` (GetModelStatus, HandleReloadConfigRequest) — and behaves like `tensorflow_model_server`
for what our users rely on:

* the models, versions and labels of a `model_config_list`, loaded and warmed up before they serve and
  kept in line with the disk and the config by a poller (`limaml_tf.serving.repository`);
* routing by model name and version number or label (none: the latest loaded), signature by name;
  NOT_FOUND for an unknown model / version, INVALID_ARGUMENT naming the input and the fix for a bad
  request (`limaml_tf.serving.request_checks`), RESOURCE_EXHAUSTED over the request size limit,
  DEADLINE_EXCEEDED when the client's deadline passed before the model ran (the work is skipped).

It runs the exported SavedModel signatures as they are, so whatever it serves, `tensorflow_model_server`
serves the same way. Production: the `tensorflow/serving` container (docs/serving.md).
"""

from __future__ import annotations

import concurrent.futures
import threading

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from limaml_tf.artifacts import SERVING_SIGNATURE
from limaml_tf.serving.repository import ModelRepository, Poller, Servable
from limaml_tf.serving.request_checks import (DEFAULT_MAX_REQUEST_BYTES, RequestError, check_deadline,
                                              request_tensors)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository: ModelRepository, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.repository, self.max_request_bytes = repository, int(max_request_bytes)

    def _servable(self, model_spec, signature_name: str | None = None) -> Servable:
        servable = self.repository.get(model_spec.name,
                                       model_spec.version.value if model_spec.HasField("version") else None,
                                       model_spec.version_label or None)
        if signature_name is not None and signature_name not in servable.signatures:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Serving signature name: {signature_name!r} not found in signature def; model "
                               f"{servable.name!r} version {servable.version} has {sorted(servable.signatures)}")
        return servable

    @staticmethod
    def _fill_spec(out, servable: Servable, signature_name: str | None = None) -> None:
        out.name = servable.name
        out.version.value = servable.version
        if signature_name:
            out.signature_name = signature_name

    def Predict(self, request, context):
        try:
            check_deadline(context)
            size = request.ByteSize()
            if size > self.max_request_bytes:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"request is {size} bytes, over the server's limit of {self.max_request_bytes} "
                                   "(--max-request-bytes): split the batch into smaller requests")
            signature_name = request.model_spec.signature_name or SERVING_SIGNATURE
            servable = self._servable(request.model_spec, signature_name)
            inputs = request_tensors(servable, signature_name, request, self.max_request_bytes)
            outputs = list(servable.signature_defs[signature_name].outputs)
            unknown = sorted(set(request.output_filter) - set(outputs))
            if unknown:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output_filter names unknown output(s) {unknown}; outputs: {sorted(outputs)}")
            check_deadline(context)
            try:
                result = servable.signatures[signature_name](**inputs)
            except (tf.errors.OpError, ValueError, TypeError) as e:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"model rejected the inputs: {e}")
        except RequestError as e:
            context.abort(e.code, str(e))
        response = predict_pb2.PredictResponse()
        self._fill_spec(response.model_spec, servable, signature_name)
        for name in request.output_filter or outputs:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(result[name].numpy()))
        return response

    def GetModelMetadata(self, request, context):
        try:
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"metadata_field must be ['signature_def'] (the only one TF Serving supports), "
                                   f"got {fields}")
            servable = self._servable(request.model_spec)
        except RequestError as e:
            context.abort(e.code, str(e))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._fill_spec(response.model_spec, servable)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for k, v in servable.signature_defs.items():
            sig_map.signature_def[k].CopyFrom(v)
        response.metadata["signature_def"].Pack(sig_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """TF Serving's ModelService: the state of each version, and a new model config applied at run time."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def GetModelStatus(self, request, context):
        spec = request.model_spec
        status = dict(self.repository.status)
        try:
            versions = sorted(v for (name, v) in status if name == spec.name)
            if not versions:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name!r}; "
                                   f"served models: {sorted(self.repository.models)}")
            if spec.version_label:
                versions = [self.repository.get(spec.name, label=spec.version_label).version]
            elif spec.HasField("version"):
                if spec.version.value not in versions:
                    raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {spec.name!r} has no version "
                                       f"{spec.version.value}; known versions: {versions}")
                versions = [spec.version.value]
        except RequestError as e:
            context.abort(e.code, str(e))
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in versions:
            state, error = status[(spec.name, v)]
            entry = response.model_version_status.add(version=v, state=state)
            if error:
                entry.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                entry.status.error_message = error
        return response

    def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        if not request.config.HasField("model_config_list"):
            response.status.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            response.status.error_message = "config must hold a model_config_list"
            return response
        try:
            self.repository.reload_config(request.config)
        except ValueError as e:
            response.status.error_code = grpc.StatusCode.FAILED_PRECONDITION.value[0]
            response.status.error_message = str(e)
        return response


class Server:
    """The running stand-in: the gRPC server, its repository and the poller. `stop(grace)` refuses new
    requests at once and lets those in flight finish for up to `grace` seconds (what SIGTERM does in
    `limaml serve`)."""

    def __init__(self, grpc_server, repository: ModelRepository, poller: Poller, port: int):
        self.grpc, self.repository, self.poller, self.port = grpc_server, repository, poller, port

    def stop(self, grace: float | None = None) -> threading.Event:
        self.poller.stop()
        return self.grpc.stop(grace)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc.wait_for_termination(timeout)


def start_server(base_dir: str | ModelRepository, port: int = 8500, host: str = "127.0.0.1", max_workers: int = 8,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, file_system_poll_wait: float = 1.0,
                 config_poll_wait: float = 0.0):
    """Starts the stand-in on host:port (port 0: a free port) with the aspired versions loaded.
    Returns (Server, port). A Predict request over `max_request_bytes` gets RESOURCE_EXHAUSTED naming the
    limit (gRPC itself refuses messages over twice that). Polling: see `Poller` (0 disables)."""
    if max_request_bytes < 1:
        raise ValueError(f"--max-request-bytes must be >= 1, got {max_request_bytes}: e.g. {DEFAULT_MAX_REQUEST_BYTES}")
    for flag, wait in (("--file_system_poll_wait_seconds", file_system_poll_wait),
                       ("--model_config_file_poll_wait_seconds", config_poll_wait)):
        if not 0 <= wait < float("inf"):
            raise ValueError(f"{flag} must be a number of seconds >= 0 (0: never), got {wait}")
    repository = base_dir if isinstance(base_dir, ModelRepository) else ModelRepository(base_dir)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=[("grpc.max_receive_message_length", 2 * max_request_bytes)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(repository, max_request_bytes), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(repository), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"could not bind {host}:{port}: choose another --port")
    server.start()
    return Server(server, repository, Poller(repository, file_system_poll_wait, config_poll_wait), bound), bound
