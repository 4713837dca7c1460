"""Local PredictionService: a development / test stand-in for TF Serving (`limaml serve`,
whose command is in `limaml_tf.cli.serve`).

Speaks TF Serving's gRPC API (`tensorflow.serving.PredictionService`: Predict, GetModelMetadata) with
its routing (model name -> `<base_dir>/<name>/<version>/`, latest integer version unless the request
names one, signature by name) and status codes (NOT_FOUND for an unknown model / version,
INVALID_ARGUMENT naming the input and the fix for a bad request). It runs the exported SavedModel
signatures as they are, so whatever it serves, `tensorflow_model_server` serves the same way.
Production: the `tensorflow/serving` container (docs/serving.md).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from limaml_tf.artifacts import SERVING_SIGNATURE, model_versions, read_models_config


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class Servable:
    name: str
    version: int
    path: str
    signatures: dict  # signature key -> concrete function
    signature_defs: dict  # signature key -> SignatureDef proto


def _load(name: str, version: int, path: str) -> Servable:
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    graph = next(g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags)
    defs = {k: v for k, v in graph.signature_def.items() if not k.startswith("__")}
    loaded = tf.saved_model.load(path, tags=["serve"])
    return Servable(name, version, path, dict(loaded.signatures), defs)


class ModelRepository:
    """Model directories served from `base_dir`: those listed in its models.config (base paths that do
    not exist here, e.g. the container's /models/<name>, resolve to `<base_dir>/<name>`), else every
    subdirectory holding an integer version. Versions load lazily and are cached."""

    def __init__(self, base_dir: str):
        self.base_dir = os.path.abspath(base_dir)
        if not os.path.isdir(self.base_dir):
            raise FileNotFoundError(f"saved models directory {base_dir!r} does not exist: point --saved-models at the "
                                    "directory holding <name>/<version>/ exports (limaml_tf.export.export_serving)")
        self.model_dirs = self._model_dirs()
        if not self.model_dirs:
            raise FileNotFoundError(f"no models under {self.base_dir}: export one with "
                                    "limaml_tf.export.export_serving (writes <name>/<version>/ and models.config)")
        self._cache: dict[tuple[str, int], Servable] = {}
        self._lock = threading.Lock()

    def _model_dirs(self) -> dict[str, str]:
        config = read_models_config(self.base_dir)
        if config is not None:
            return {c.name: c.base_path if os.path.isdir(c.base_path) else os.path.join(self.base_dir, c.name)
                    for c in config.model_config_list.config}
        return {d: os.path.join(self.base_dir, d) for d in sorted(os.listdir(self.base_dir))
                if model_versions(os.path.join(self.base_dir, d))}

    def get(self, name: str, version: int | None = None) -> Servable:
        if name not in self.model_dirs:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: model {name!r} is not "
                               f"served here; served models: {sorted(self.model_dirs)}")
        versions = model_versions(self.model_dirs[name])
        if not versions:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} has no version under "
                               f"{self.model_dirs[name]}")
        version = versions[-1] if version is None else version
        if version not in versions:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: model {name!r} has no "
                               f"version {version}; available versions: {versions}")
        with self._lock:
            key = (name, version)
            if key not in self._cache:
                self._cache[key] = _load(name, version, os.path.join(self.model_dirs[name], str(version)))
            return self._cache[key]


def _describe(signature_def) -> str:
    return ", ".join(f"{k}: {tf.dtypes.as_dtype(v.dtype).name}"
                     f"{[d.size for d in v.tensor_shape.dim]}" for k, v in sorted(signature_def.inputs.items()))


DEFAULT_MAX_REQUEST_BYTES = 16 << 20


def _request_tensors(servable: Servable, signature_name: str, request,
                     max_values: int = DEFAULT_MAX_REQUEST_BYTES) -> dict[str, tf.Tensor]:
    """Checks the request's inputs against the signature; returns them as tensors. No input is decoded
    before its declared shape fits the signature and holds at most `max_values` values."""
    where = f"signature {signature_name!r} of model {servable.name!r} version {servable.version}"
    sig = servable.signature_defs[signature_name]
    missing = sorted(set(sig.inputs) - set(request.inputs))
    unknown = sorted(set(request.inputs) - set(sig.inputs))
    if missing or unknown:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           (f"missing input(s) {missing}" if missing else "") + ("; " if missing and unknown else "")
                           + (f"unknown input(s) {unknown}" if unknown else "") + f" for {where}; it takes: "
                           f"{_describe(sig)}")
    tensors, batch = {}, {}
    for name, info in sig.inputs.items():
        proto = request.inputs[name]
        want = tf.dtypes.as_dtype(info.dtype)
        if proto.dtype != info.dtype:
            try:
                got = tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else "unset"
            except TypeError:
                got = f"<unknown enum {proto.dtype}>"
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} has dtype {got}, {where} expects {want.name}: send {want.name} values")
        shape = tf.TensorShape([None if d.size < 0 else d.size for d in info.tensor_shape.dim])
        declared = [d.size for d in proto.tensor_shape.dim]
        if proto.tensor_shape.unknown_rank or any(d < 0 for d in declared) or not shape.is_compatible_with(declared):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} has shape {declared}, {where} expects "
                               f"{[d if d is not None else -1 for d in shape.as_list()]} (-1: any size)")
        if np.prod(declared, dtype=float) > max_values:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} declares shape {declared}, over the server's limit of {max_values} "
                               "values per input: split the batch into smaller requests")
        try:
            value = tf.make_ndarray(proto)
        except Exception as e:  # inconsistent shape / content
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} is not a valid TensorProto ({e}): "
                               "build it with tf.make_tensor_proto")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} has NaN/inf values: send finite values (for an unknown task, the "
                               "cold-start meta embedding of the serving metadata)")
        tensors[name] = tf.constant(value, dtype=want)
        batch[name] = value.shape[0] if value.ndim else None
    if len(set(batch.values())) > 1:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"inputs have different batch sizes {batch}: send one row per sample in every input")
    return tensors


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository: ModelRepository, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.repository, self.max_request_bytes = repository, int(max_request_bytes)

    def _servable(self, model_spec, signature_name: str | None = None) -> Servable:
        if model_spec.version_label:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "version labels are not supported by the local "
                               "server: name the version number (model_spec.version) or none for the latest")
        servable = self.repository.get(model_spec.name,
                                       model_spec.version.value if model_spec.HasField("version") else None)
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
            size = request.ByteSize()
            if size > self.max_request_bytes:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"request is {size} bytes, over the server's limit of {self.max_request_bytes} "
                                   "(--max-request-bytes): split the batch into smaller requests")
            signature_name = request.model_spec.signature_name or SERVING_SIGNATURE
            servable = self._servable(request.model_spec, signature_name)
            inputs = _request_tensors(servable, signature_name, request, self.max_request_bytes)
            outputs = list(servable.signature_defs[signature_name].outputs)
            unknown = sorted(set(request.output_filter) - set(outputs))
            if unknown:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output_filter names unknown output(s) {unknown}; outputs: {sorted(outputs)}")
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


def start_server(base_dir: str | ModelRepository, port: int = 8500, host: str = "127.0.0.1", max_workers: int = 4,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
    """Starts the PredictionService on host:port (port 0: a free port). Returns (grpc.Server, port).
    A Predict request over `max_request_bytes` gets RESOURCE_EXHAUSTED naming the limit (gRPC itself
    refuses messages over twice that)."""
    if max_request_bytes < 1:
        raise ValueError(f"--max-request-bytes must be >= 1, got {max_request_bytes}: e.g. {DEFAULT_MAX_REQUEST_BYTES}")
    repository = base_dir if isinstance(base_dir, ModelRepository) else ModelRepository(base_dir)
    for name, model_dir in repository.model_dirs.items():  # load the latest versions now, like TF Serving
        if model_versions(model_dir):
            repository.get(name)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=[("grpc.max_receive_message_length", 2 * max_request_bytes)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(repository, max_request_bytes), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"could not bind {host}:{port}: choose another --port")
    server.start()
    return server, bound
