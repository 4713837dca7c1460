"""The model repository of the local PredictionService (`limaml_tf.serving.server`): which models and
versions it serves, how they load, and the poller that keeps them in line with the disk and the config.

* models come from a `model_config_list` (models.config: name, base path, version policy `latest` /
  `all` / `specific`, version labels such as `stable` / `canary`), or, without one, every subdirectory
  holding integer versions (latest version each);
* the aspired versions are loaded (and warmed up with the export's warm-up requests) before they serve;
  `refresh()` (run by the `Poller`: `file_system_poll_wait` for new version directories,
  `config_poll_wait` to re-read the config file) loads new ones, then unloads those no longer aspired;
  a request that already holds a version finishes on it;
* `get` routes by model name and version number or label (none: the latest loaded).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from limaml_tf.artifacts import (EXTRA_DIR, MODELS_CONFIG, SERVING_SIGNATURE, WARMUP_FILE, model_versions,
                                read_models_config)
from limaml_tf.serving.request_checks import RequestError, request_tensors

log = logging.getLogger(__name__)
State = get_model_status_pb2.ModelVersionStatus.State


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
            servable.signatures[signature](**request_tensors(servable, signature, request))
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

