"""Serving client: raw request features + task keys -> meta embeddings from the embedding store ->
`PredictRequest` (official `tensorflow_serving.apis` protos) -> TF Serving over gRPC -> probabilities.

The embedding store is anything with

    get_embeddings(task_keys: list[str]) -> (embeddings float32 [n, d], found bool [n])

(the Feast-backed store in `limaml_tf.feature_store`, or `InMemoryEmbeddingStore`). A key the store
has no row for gets the cold-start embedding shipped with the model (serving metadata).

A model with several task definitions (serving metadata "definitions") takes task keys per definition,
`predict(features, {"user": [...], "user_x_genre": [...]})`, fetched in one store lookup with

    get_definition_embeddings({definition: task_keys}) -> {definition: (embeddings [n, d_def], found [n])}

each definition's missing keys get that definition's slice of the cold-start embedding, and the
request's `meta_embedding` is their concatenation in sorted definition order.
No Keras and no model code: the client reads the export's spec and metadata (`limaml_tf.artifacts`).
"""

from __future__ import annotations

from typing import Protocol

import grpc
import numpy as np
import pandas as pd
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from limaml_tf.artifacts import EMBEDDING_INPUT, OUTPUT, SERVING_SIGNATURE, read_serving_metadata, store_key
from limaml_tf.raw_data import FeatureError, multi_values_to_array, numeric_sequence_to_array
from limaml_tf.spec import FeatureSpec


class ServingError(FeatureError):
    """A request the model cannot serve: the message names the field and the fix."""


class EmbeddingLookup(Protocol):
    def get_embeddings(self, task_keys: list[str]) -> tuple[np.ndarray, np.ndarray]: ...


class InMemoryEmbeddingStore:
    """Dict-backed embedding store (tests, demos): same contract as the Feast-backed store.
    `definitions` ({definition: size}): a store of several task definitions' embeddings (`put(...,
    definition=d)`, `get_definition_embeddings`)."""

    def __init__(self, dim: int, definitions: dict | None = None):
        self.dim = int(dim)
        self.definitions = {d: int(n) for d, n in (definitions or {}).items()}
        self._rows: dict[str, np.ndarray] = {}

    def put(self, task_keys, embeddings, definition: str | None = None) -> None:
        if definition is not None and definition not in self.definitions:
            raise ServingError(f"definition {definition!r} is not one of this store's {sorted(self.definitions)}")
        dim = self.dim if definition is None else self.definitions[definition]
        embeddings = np.asarray(embeddings, np.float32).reshape(len(task_keys), -1)
        if embeddings.shape[1] != dim:
            raise ServingError(f"meta embeddings have size {embeddings.shape[1]}, this store holds size {dim}: "
                               "put the embeddings of the model this store serves (or make a store of that size)")
        bad = ~np.isfinite(embeddings).all(1)
        if bad.any():
            raise ServingError(f"meta embeddings of task keys {[str(k) for k, b in zip(task_keys, bad) if b][:5]} "
                               "have NaN/inf: recompute them (check the adapter's inputs) before storing")
        self._rows.update({store_key(definition, k): e.copy() for k, e in zip(task_keys, embeddings)})

    def get_embeddings(self, task_keys: list[str], definition: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(task_keys), self.dim if definition is None else self.definitions[definition]), np.float32)
        found = np.zeros(len(task_keys), bool)
        for i, k in enumerate(task_keys):
            row = self._rows.get(store_key(definition, k))
            if row is not None:
                out[i], found[i] = row, True
        return out, found

    def get_definition_embeddings(self, task_keys: dict) -> dict:
        return {d: self.get_embeddings(list(keys), d) for d, keys in task_keys.items()}


def _column(value) -> np.ndarray:
    if isinstance(value, pd.Series):
        arr = value.to_numpy()
    else:
        try:
            arr = np.asarray(value)
        except ValueError:  # ragged lists (multi-valued): one object per sample
            arr = np.empty(len(value), object)
            arr[:] = list(value)
    return arr[None] if arr.ndim == 0 else arr


def _strings(name: str, kind: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind in "iu":  # integer ids: same text as training's astype(str)
        return arr.astype(str).astype(object)
    if arr.dtype.kind in "US" or (arr.dtype == object and all(isinstance(v, (str, bytes)) for v in arr.ravel())):
        return arr.astype(object)
    example = next((v for v in arr.ravel() if not isinstance(v, (str, bytes))), arr.ravel()[:1])
    raise ServingError(f"{kind} feature {name!r} got {arr.dtype} values (e.g. {example!r}): send strings "
                       "(\"\" for missing)")


def request_inputs(spec: FeatureSpec, features) -> dict[str, np.ndarray]:
    """Validates raw request features (dict of per-sample arrays / lists, or a DataFrame) against the spec
    and returns the dense arrays `serving_default` takes. A scalar numeric / categorical value is a batch
    of 1; multi-valued features are per-sample lists, "a|b" strings, or [n, width] string arrays."""
    if isinstance(features, pd.DataFrame):
        features = {c: features[c] for c in features.columns}
    missing = [f.name for f in spec.features if f.name not in features]
    if missing:
        raise ServingError(f"request is missing feature(s) {missing}: send every feature of the model's spec "
                           f"{[f.name for f in spec.features]} (\"\" or 0.0 when unknown)")
    out = {}
    for f in spec.features:
        arr = _column(features[f.name])
        if f.kind == "numeric":
            if arr.dtype.kind not in "biuf":
                raise ServingError(f"numeric feature {f.name!r} got {arr.dtype} values: send numbers (float)")
            arr = arr.astype(np.float32)
            if arr.ndim != 1:
                raise ServingError(f"numeric feature {f.name!r} must be one value per sample, got shape {arr.shape}")
            if not np.isfinite(arr).all():
                raise ServingError(f"numeric feature {f.name!r} has NaN/inf: fill it (e.g. with the training mean)")
        elif f.kind == "numeric_sequence":
            arr = _numeric_sequence(f, arr)
        elif f.kind == "categorical":
            if arr.ndim != 1:
                raise ServingError(f"categorical feature {f.name!r} must be one value per sample, got shape "
                                   f"{arr.shape}")
            arr = _strings(f.name, f.kind, arr)
        else:
            if arr.ndim == 2:
                arr = _strings(f.name, f.kind, arr)[:, :f.max_len]
                arr = np.pad(arr, [(0, 0), (0, f.max_len - arr.shape[1])], constant_values="")
            elif arr.ndim == 1:
                arr = multi_values_to_array(pd.Series(arr), f.max_len)  # lists or "a|b", as in training
            else:
                raise ServingError(f"multi-valued feature {f.name!r} must be [batch, values], got shape {arr.shape}")
        out[f.name] = arr
    sizes = {k: len(v) for k, v in out.items()}
    if len(set(sizes.values())) > 1:
        raise ServingError(f"features have different numbers of samples {sizes}: send one value per sample for each")
    return out


def _numeric_sequence(f, arr: np.ndarray) -> np.ndarray:
    """[batch, values] numbers or one list per sample -> [batch, max_len] float32 padded with 0.0."""
    try:
        if arr.ndim == 2 and arr.dtype.kind in "biuf":
            arr = arr.astype(np.float32)[:, :f.max_len]
            arr = np.pad(arr, [(0, 0), (0, f.max_len - arr.shape[1])])
        elif arr.ndim == 1:
            arr = numeric_sequence_to_array(pd.Series(list(arr)), f.max_len)
        else:
            raise ValueError
        if not np.isfinite(arr).all():
            raise ValueError
    except (TypeError, ValueError):
        raise ServingError(f"numeric_sequence feature {f.name!r} must be [batch, values] finite numbers (or one "
                           "list per sample, most recent first), padded with 0.0") from None
    return arr


class ServingClient:
    """Predicts through TF Serving (or `limaml serve`) with each request's meta embedding from `lookup`."""

    def __init__(self, target: str, spec: FeatureSpec, embedding_dim: int, cold_start_embedding,
                 lookup: EmbeddingLookup, model_name: str = "limaml", version: int | str | None = None,
                 signature_name: str = SERVING_SIGNATURE, timeout: float = 10.0, definitions: dict | None = None):
        """`version`: a version number, a version label of models.config ("stable", "canary"), or None
        (the latest served version). `definitions`: the serving metadata's layout of several task
        definitions ({definition: {"embedding_dim", "offset", ...}}), None for one."""
        self.spec, self.dim, self.lookup = spec, int(embedding_dim), lookup
        self.definitions = dict(sorted((definitions or {}).items()))
        self.cold_start = np.asarray(cold_start_embedding, np.float32).reshape(-1)
        if self.cold_start.shape != (self.dim,):
            raise ServingError(f"cold-start embedding has size {self.cold_start.size}, expected {self.dim}")
        self.model_name, self.version, self.signature_name, self.timeout = model_name, version, signature_name, timeout
        self.channel = grpc.insecure_channel(target)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    @classmethod
    def from_export(cls, export_dir: str, target: str, lookup: EmbeddingLookup, **kwargs) -> "ServingClient":
        """Client configured from a serving export's assets.extra (spec, embedding size, cold start)."""
        spec, meta = read_serving_metadata(export_dir)
        kwargs.setdefault("model_name", meta["model_name"])
        kwargs.setdefault("definitions", meta.get("definitions"))
        return cls(target, spec, meta["embedding_dim"], meta["cold_start_embedding"], lookup, **kwargs)

    def definition_embeddings(self, task_keys: dict) -> tuple[np.ndarray, dict]:
        """Several task definitions: ({definition: keys} -> meta embeddings [n, d] (the definitions'
        concatenated in sorted order), {definition: found [n]}), from one store lookup; a definition's
        missing keys get its slice of the cold-start embedding."""
        if not isinstance(task_keys, dict) or set(task_keys) != set(self.definitions):
            got = sorted(task_keys) if isinstance(task_keys, dict) else type(task_keys).__name__
            raise ServingError(f"model {self.model_name!r} reads the task definitions {list(self.definitions)}: send "
                               f"task_keys as {{definition: keys}} for each of them (got {got})")
        keys = {d: [str(k) for k in task_keys[d]] for d in self.definitions}
        sizes = {d: len(k) for d, k in keys.items()}
        if len(set(sizes.values())) != 1:
            raise ServingError(f"task keys per definition have different lengths {sizes}: send one key per sample "
                               "for each definition")
        if not hasattr(self.lookup, "get_definition_embeddings"):
            raise ServingError(f"embedding lookup {type(self.lookup).__name__} has no get_definition_embeddings: "
                               "use limaml_tf.feature_store.EmbeddingStore or InMemoryEmbeddingStore(definitions=...)")
        looked_up = self.lookup.get_definition_embeddings(keys)
        parts, found = [], {}
        for d, layout in self.definitions.items():
            o, dim = int(layout["offset"]), int(layout["embedding_dim"])
            emb, found[d] = self._checked(keys[d], *looked_up[d], dim, self.cold_start[o:o + dim],
                                          f" of definition {d!r}")
            parts.append(emb)
        return np.concatenate(parts, 1), found

    def embeddings(self, task_keys) -> tuple[np.ndarray, np.ndarray]:
        """(meta embeddings [n, d], found [n]) with the cold-start embedding for keys the store lacks.
        Several task definitions: `definition_embeddings`."""
        if self.definitions:
            return self.definition_embeddings(task_keys)
        if isinstance(task_keys, dict):
            raise ServingError(f"model {self.model_name!r} has one task definition: send one task key per sample, "
                               "not a dict")
        keys = [str(k) for k in task_keys]
        emb, found = self.lookup.get_embeddings(keys)
        return self._checked(keys, emb, found, self.dim, self.cold_start, "")

    def _checked(self, keys, emb, found, dim, cold_start, what):
        emb, found = np.asarray(emb), np.asarray(found)
        if emb.ndim != 2 or emb.shape[0] != len(keys) or found.shape != (len(keys),):
            raise ServingError(f"embedding lookup returned shapes {emb.shape} / {found.shape} for {len(keys)} keys"
                               f"{what}: expected ({len(keys)}, {dim}) float32 and ({len(keys)},) bool")
        if emb.shape[1] != dim:
            raise ServingError(f"embedding lookup returned meta embeddings{what} of size {emb.shape[1]}, model "
                               f"{self.model_name!r} expects {dim}: the store holds another model's embeddings; "
                               "refresh it with this model's adapter")
        if found.dtype != bool or emb.dtype.kind != "f":
            raise ServingError(f"embedding lookup returned dtypes {emb.dtype} / {found.dtype}: expected float32 / bool")
        emb = np.where(found[:, None], emb.astype(np.float32), cold_start[None, :])
        if not np.isfinite(emb).all():
            raise ServingError("embedding lookup returned NaN/inf embeddings for keys "
                               f"{[k for k, ok in zip(keys, np.isfinite(emb).all(1)) if not ok][:5]}: recompute them")
        return emb, found

    def build_request(self, features, task_keys) -> predict_pb2.PredictRequest:
        inputs = request_inputs(self.spec, features)
        n = len(next(iter(inputs.values())))
        if isinstance(task_keys, dict):
            keys = {d: [k] if isinstance(k, str) else list(k) for d, k in task_keys.items()}
            counts = {len(k) for k in keys.values()}
        else:
            keys = [task_keys] if isinstance(task_keys, str) else list(task_keys)
            counts = {len(keys)}
        if counts != {n}:
            got = " / ".join(map(str, sorted(counts)))
            raise ServingError(f"got {got} task keys for {n} samples: send one task key per sample")
        if self.dim:
            inputs[EMBEDDING_INPUT] = self.embeddings(keys)[0]
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = self.signature_name
        if isinstance(self.version, str) and not self.version.isdigit():
            request.model_spec.version_label = self.version
        elif self.version is not None:
            request.model_spec.version.value = int(self.version)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.append(OUTPUT)
        return request

    def predict(self, features, task_keys) -> np.ndarray:
        """Probabilities [n] for the samples in `features`, sample i belonging to task `task_keys[i]`.
        gRPC failures raise `grpc.RpcError` (status code + the server's message)."""
        response = self.stub.Predict(self.build_request(features, task_keys), timeout=self.timeout)
        return tf.make_ndarray(response.outputs[OUTPUT])

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
