"""Local PredictionService: a development / test stand-in for TF Serving (`limaml serve`,
whose command is in `limaml_tf.cli.serve`).

Speaks TF Serving's gRPC API — `tensorflow.serving.PredictionService` (Predict, GetModelMetadata) and
`ModelService` (GetModelStatus, HandleReloadConfigRequest) — and behaves like `tensorflow_model_server`
for what our users rely on:

* models come from a `model_config_list` (models.config: name, base path, version policy `latest` /
  `all` / `specific`, version labels such as `stable` / `canary`), or, without one, every subdirectory
  holding integer versions (latest version each);
* the aspired versions are loaded (and warmed up with the export's warm-up requests) before they serve; `refresh()` (the poller: `file_system_poll_wait`
  for new version directories, `config_poll_wait` to re-read the config file) loads new ones, then
  unloads those no longer aspired; a request that already holds a version finishes on it;
* routing by model name and version number or label (none: the latest loaded), signature by name;
  NOT_FOUND for an unknown model / version, INVALID_ARGUMENT naming the input and the fix for a bad
  request, RESOURCE_EXHAUSTED over the request size limit, DEADLINE_EXCEEDED when the client's deadline
  passed before the model ran (the work is skipped).

It runs the exported SavedModel signatures as they are, so whatever it serves, `tensorflow_model_server`
serves the same way. Production: the `tensorflow/serving` container (docs/serving.md).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from limaml_tf.artifacts import (EXTRA_DIR, MODELS_CONFIG, SERVING_SIGNATURE, WARMUP_FILE, model_versions,
                                read_models_config)

log = logging.getLogger(__name__)
State = get_model_status_pb2.ModelVersionStatus.State


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
    servable = Servable(name, version, path, dict(loaded.signatures), defs)
    warmup = os.path.join(path, EXTRA_DIR, WARMUP_FILE)
    if os.path.exists(warmup):  # as TF Serving does: the first real requests do not pay for tracing
        for record in tf.data.TFRecordDataset(warmup).as_numpy_iterator():
            request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
            signature = request.model_spec.signature_name or SERVING_SIGNATURE
            servable.signatures[signature](**_request_tensors(servable, signature, request))
    return servable


@dataclasses.dataclass(frozen=True)
class Model:
    """One model's served state; replaced as a whole on every change (requests read a snapshot)."""
    directory: str
    policy: model_server_config_pb2.ModelConfig | None  # its model_version_policy and version_labels
    versions: dict  # version -> Servable (loaded, serving)
    labels: dict  # label -> version


def aspired(policy, versions: list[int]) -> list[int]:
    """The versions TF Serving's version policy serves among those on disk (default: the latest one)."""
    if policy is None or not policy.HasField("model_version_policy"):
        return versions[-1:]
    which = policy.model_version_policy.WhichOneof("policy_choice")
    if which == "all":
        return versions
    if which == "specific":
        return sorted(set(versions) & set(policy.model_version_policy.specific.versions))
    return versions[-max(1, policy.model_version_policy.latest.num_versions):]


class ModelRepository:
    """The models served from `base_dir` and their loaded versions (see the module docstring).

    `config_file`: a model_config_list (default `<base_dir>/models.config` when it exists). Base paths
    that do not exist here (the container's /models/<name>) resolve to `<base_dir>/<name>`."""

    def __init__(self, base_dir: str, config_file: str | None = None):
        self.base_dir = os.path.abspath(base_dir)
        if not os.path.isdir(self.base_dir):
            raise FileNotFoundError(f"saved models directory {base_dir!r} does not exist: point --saved-models at the "
                                    "directory holding <name>/<version>/ exports (limaml_tf.export.export_serving)")
        default = os.path.join(self.base_dir, MODELS_CONFIG)
        self.config_file = config_file or (default if os.path.exists(default) else None)
        if config_file and not os.path.isfile(config_file):
            raise FileNotFoundError(f"--model_config_file {config_file!r} does not exist: give a model_config_list "
                                    "file (export_serving writes saved_models/models.config)")
        self.models: dict[str, Model] = {}
        self.status: dict[tuple[str, int], tuple[int, str]] = {}  # (model, version) -> (State, error or "")
        self._config = None
        self._lock = threading.Lock()  # one refresh at a time; requests never take it
        self.reload_config()
        if not self.model_dirs:
            raise FileNotFoundError(f"no models under {self.base_dir}: export one with "
                                    "limaml_tf.export.export_serving (writes <name>/<version>/ and models.config)")

    @property
    def model_dirs(self) -> dict[str, str]:
        return {name: m.directory for name, m in self.models.items()}

    # -- configuration -----------------------------------------------------------------------------
    def _read_config(self):
        if self.config_file is None:
            return None
        directory, name = os.path.split(self.config_file)
        if name == MODELS_CONFIG:
            return read_models_config(directory)
        from google.protobuf import text_format
        config = model_server_config_pb2.ModelServerConfig()
        with open(self.config_file, encoding="utf-8") as f:
            text_format.Parse(f.read(), config)
        return config

    def reload_config(self, config=None) -> None:
        """Applies `config` (a ModelServerConfig; default: the config file, re-read) and loads what it
        aspires: models added are loaded, models removed are unloaded. Version labels naming a version
        that is not loaded are refused (ValueError after the rest is applied; that model keeps its labels)."""
        self._config = self._read_config() if config is None else config
        self.refresh()

    def _entries(self) -> dict[str, model_server_config_pb2.ModelConfig | None]:
        if self._config is not None:
            return {c.name: c for c in self._config.model_config_list.config}
        return {d: None for d in sorted(os.listdir(self.base_dir))
                if not d.startswith(".") and model_versions(os.path.join(self.base_dir, d))}

    def _directory(self, name: str, entry) -> str:
        if entry is not None and os.path.isdir(entry.base_path):
            return entry.base_path
        return os.path.join(self.base_dir, name)

    def refresh(self) -> None:
        """Brings the loaded versions in line with the disk and the config: loads the aspired versions not
        loaded yet, then swaps in the new state and drops the versions no longer aspired (a request
        holding one finishes on it)."""
        with self._lock:
            entries = self._entries()
            new, errors = {}, []
            for name, entry in entries.items():
                directory = self._directory(name, entry)
                old = self.models.get(name)
                loaded = {}
                for version in aspired(entry, model_versions(directory)):
                    servable = old.versions.get(version) if old else None
                    if servable is None and self.status.get((name, version), (0, ""))[1]:
                        continue  # failed to load before (versions do not change): not retried every poll
                    loaded[version] = servable or self._load(name, version, os.path.join(directory, str(version)))
                loaded = {v: s for v, s in loaded.items() if s is not None}
                if not loaded and old is not None:  # availability first: a broken new version does not
                    loaded = old.versions  # take the served ones down
                labels = dict(entry.version_labels) if entry is not None else {}
                missing = {k: v for k, v in labels.items() if v not in loaded}
                if missing:
                    errors.append(f"model {name!r}: version label(s) {missing} name versions that are not "
                                  f"available (loaded: {sorted(loaded)}): label only loaded versions")
                    labels = old.labels if old else {}
                new[name] = Model(directory, entry, loaded, labels)
            for name, model in self.models.items():
                for version in set(model.versions) - set(new.get(name, Model("", None, {}, {})).versions):
                    self.status[(name, version)] = (State.END, "")
            self.models = new  # one assignment: requests see the old or the new state
            for name, model in new.items():
                for version in model.versions:
                    self.status[(name, version)] = (State.AVAILABLE, "")
        if errors:
            raise ValueError("; ".join(errors))

    def _load(self, name: str, version: int, path: str) -> Servable | None:
        self.status[(name, version)] = (State.LOADING, "")
        try:
            servable = _load(name, version, path)
        except Exception as e:  # a version that cannot load is reported, the others serve
            log.error("loading %s version %d from %s failed: %s", name, version, path, e)
            self.status[(name, version)] = (State.END, f"{type(e).__name__}: {e}")
            return None
        return servable

    # -- requests ----------------------------------------------------------------------------------
    def get(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        model = self.models.get(name)
        if model is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: model {name!r} is not "
                               f"served here; served models: {sorted(self.models)}")
        if not model.versions:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} has no version loaded (directory "
                               f"{model.directory}): export one, or check GetModelStatus for load errors")
        if label:
            if label not in model.labels:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {label!r} for model {name!r}; its labels: "
                                   f"{model.labels or 'none'} (set version_labels in models.config)")
            version = model.labels[label]
        version = max(model.versions) if version is None else version
        servable = model.versions.get(version)
        if servable is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: model {name!r} has no "
                               f"version {version}; available versions: {sorted(model.versions)}")
        return servable


class Poller:
    """Calls `repository.refresh()` every `file_system_poll_wait` seconds and re-reads the config file
    every `config_poll_wait` seconds (0: never), like tensorflow_model_server's flags of the same names."""

    def __init__(self, repository: ModelRepository, file_system_poll_wait: float = 1.0, config_poll_wait: float = 0.0):
        self.repository, self.fs_wait, self.config_wait = repository, file_system_poll_wait, config_poll_wait
        self._stop = threading.Event()
        self._thread = None
        if self.fs_wait > 0 or self.config_wait > 0:
            self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)
            self._thread.start()

    def _run(self):
        tick = min(w for w in (self.fs_wait, self.config_wait) if w > 0)
        next_fs = next_config = time.monotonic()
        while not self._stop.wait(tick / 2):
            now = time.monotonic()
            try:
                if self.config_wait > 0 and now >= next_config + self.config_wait:
                    next_config = next_fs = now
                    self.repository.reload_config()
                elif self.fs_wait > 0 and now >= next_fs + self.fs_wait:
                    next_fs = now
                    self.repository.refresh()
            except Exception as e:  # a bad config or version: the current state keeps serving
                log.error("model poll: %s", e)

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


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


def _check_deadline(context) -> None:
    """DEADLINE_EXCEEDED, without running the model, when the client's deadline has passed (e.g. while
    the request waited for a worker thread)."""
    time_remaining = getattr(context, "time_remaining", None)
    remaining = time_remaining() if time_remaining is not None else None
    if remaining is not None and remaining <= 0:
        raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline passed before the model ran: "
                           "give it a longer deadline (timeout) or send fewer requests at once")


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
            _check_deadline(context)
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
            _check_deadline(context)
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
