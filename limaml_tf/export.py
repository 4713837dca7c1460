"""SavedModel artifacts: the adapter used by the embedding refresh (Algorithm 2b), and the
global block served by TF Serving (`export_serving`).

The adapter holds θ_meta, θ_global, the feature encoder and the feature spec, and
needs no limaml_tf code to run: `tf.saved_model.load(path)` and call

  embed_tasks({"task_key": [T] string, "support_<feature>": [T, S, ...] raw, "support_label": [T, S],
               "support_mask": [T, S], "latest_<feature>": [T, ...] raw})
      -> {"meta_embedding": [T, d]}
  cold_start({"<feature>": [B, ...] raw}) -> {"meta_embedding": [B, d]}   (un-adapted)

(`limaml_tf.artifacts.adapter_inputs` packs `embed_tasks`' inputs from a task bundle.)
With several task definitions (a dict meta block) there is one adapter per definition
(`export_adapter(..., definition=d)`): its spec has that definition's column as `task_key`, so the
refresh groups by it unchanged, `d` is its embedding size and its config names the definition.
`k` (steps), `α` (learning rate) and the aggregation are saved config
(assets.extra/limaml_config.json), fixed at export time; export one adapter per setting.
File names, readers and the models.config writer are in `limaml_tf.artifacts` (no Keras).
"""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

# The artifact contract lives in limaml_tf.artifacts (no Keras); re-exported here for callers of the exporter.
from limaml_tf.artifacts import (AGGREGATIONS, COLD_START, CONFIG_FILE, EMBED_TASKS, EMBEDDING_INPUT,  # noqa: F401
                                 EXTRA_DIR, MODELS_CONFIG, OUTPUT, SERVING_METADATA_FILE, SERVING_SIGNATURE,
                                 SPEC_FILE, WARMUP_FILE, adapter_inputs, atomic_directory, model_versions,
                                 read_extra, read_serving_metadata, write_extra, write_models_config)

load_serving_metadata = read_serving_metadata  # (FeatureSpec, metadata dict) of a serving export


def embedding_dim(model, definition: str | None = None) -> int:
    """Size of the meta embedding the global block reads (all definitions'), or of one definition's."""
    return int(model.embed_definition(model.encoder(model.spec.dummy_inputs(1)), definition).shape[-1])


def definition_layout(model) -> dict | None:
    """Several task definitions: {definition: {"task_key": column, "embedding_dim": d, "offset": o}}, the
    slice [o, o + d) of the served `meta_embedding` (sorted definition order); None with one meta block."""
    names = getattr(model.meta_block, "names", None)
    if names is None:
        return None
    layout, offset = {}, 0
    for d in names:
        dim = embedding_dim(model, d)
        layout[d] = {"task_key": model.spec.definitions[d], "embedding_dim": dim, "offset": offset}
        offset += dim
    return layout


def adapter_name(model_name: str, definition: str | None = None) -> str:
    """The adapter's directory name beside the served model `model_name`: `<model_name>_adapter`, or
    `<model_name>_adapter_<definition>` for one of several task definitions."""
    return f"{model_name}_adapter" + (f"_{definition}" if definition is not None else "")


def version_path(base_dir: str, model_name: str, version: int | None) -> str:
    """`<base_dir>/<model_name>/<version>/`, `version` the next integer when None; refuses a version
    that is not a positive integer or that exists (TF Serving may be serving it)."""
    model_dir = os.path.join(base_dir, model_name)
    existing = model_versions(model_dir)
    version = (existing[-1] + 1 if existing else 1) if version is None else version
    if isinstance(version, bool) or int(version) != version or version < 1:
        raise ValueError(f"version must be a positive integer (TF Serving version directory), got {version!r}")
    path = os.path.join(model_dir, str(int(version)))
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists: TF Serving may be serving it; export a new version "
                              f"(next free: {max(existing, default=0) + 1})")
    return path


def export_adapter(model, base_dir: str = "saved_models", model_name: str = "limaml", version: int | None = None,
                   steps: int = 1, learning_rate: float | None = None, aggregation: str = "latest",
                   extra_config: dict | None = None, definition: str | None = None) -> str:
    """Exports the adapter SavedModel of `model` (a LiMAMLModel), the refresh pipeline's artifact, beside
    the served model `model_name`: `<base_dir>/<model_name>_adapter/<version>/` (`adapter_name`), written
    atomically; the same arguments as `export_serving`, so one `version` ties the two. Returns the path.
    With several task definitions, `definition` names the one whose tasks the adapter embeds (one adapter
    per definition, `<model_name>_adapter_<definition>/`)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    layout = definition_layout(model)
    if layout is not None and definition not in layout:
        raise ValueError(f"export_adapter(definition={definition!r}): the model has meta blocks for the task "
                         f"definitions {sorted(layout)}; export one adapter per definition (definition=...)")
    model._check_definition(definition)
    spec = model.spec if definition is None else model.spec.for_definition(definition)
    lr = model.inner_learning_rate if learning_rate is None else float(learning_rate)
    raw = spec.input_signature
    support_sig = {f"support_{k}": tf.TensorSpec([None, None] + s.shape[1:], s.dtype, name=f"support_{k}")
                   for k, s in raw((None,)).items()}
    latest_sig = {f"latest_{k}": tf.TensorSpec(s.shape, s.dtype, name=f"latest_{k}") for k, s in raw((None,)).items()}
    label_sig = tf.TensorSpec([None, None], tf.float32, name="support_label")
    mask_sig = tf.TensorSpec([None, None], tf.float32, name="support_mask")
    key_sig = tf.TensorSpec([None], tf.string, name="task_key")
    names = [f.name for f in spec.features]

    def embed_tasks(inputs):
        support = model.encode_samples({n: inputs[f"support_{n}"] for n in names}, tf.shape(inputs["support_mask"]))
        latest = model.encoder({n: inputs[f"latest_{n}"] for n in names})
        emb = model.meta_embeddings(support, inputs["support_label"], inputs["support_mask"], latest, steps, lr,
                                    aggregation, task_key=inputs["task_key"], definition=definition)
        return {"meta_embedding": tf.cast(emb, tf.float32)}

    def cold_start(inputs):
        return {"meta_embedding": tf.cast(model.embed_definition(model.encoder(inputs), definition), tf.float32)}

    archive = keras.export.ExportArchive()
    for part in (model.encoder, model.meta_block, model.global_block, model.ridge):  # not the model: its
        if part is not None:  # cached adapt_and_predict tf.functions (int-keyed dict) cannot be saved
            archive.track(part)
    archive.add_endpoint(EMBED_TASKS, tf.function(embed_tasks),
                         input_signature=[{"task_key": key_sig, "support_label": label_sig, "support_mask": mask_sig,
                                           **support_sig, **latest_sig}])
    archive.add_endpoint(COLD_START, tf.function(cold_start), input_signature=[raw((None,))])
    path = version_path(base_dir, adapter_name(model_name, definition), version)
    config = {"steps": int(steps), "learning_rate": lr, "aggregation": aggregation, "inner_solver": model.inner_solver,
              "embedding_dim": embedding_dim(model, definition),
              "model_version": os.path.basename(path), "tensorflow_version": tf.__version__,
              **({"definition": definition} if definition is not None else {}), **(extra_config or {})}
    with atomic_directory(path) as tmp:
        archive.write_out(tmp, verbose=False)
        write_extra(tmp, SPEC_FILE, spec.to_json())
        write_extra(tmp, CONFIG_FILE, json.dumps(config, indent=1))
    return path


# -- serving artifact (TF Serving) ---------------------------------------------------------------

def serving_signature(spec, dim: int) -> dict[str, tf.TensorSpec]:
    """The named, typed inputs of `serving_default`: every raw feature of the spec (dense; multi-valued
    padded with "") plus `meta_embedding` float32 [batch, dim] (omitted when dim == 0)."""
    sig = spec.input_signature((None,))
    if dim:
        sig[EMBEDDING_INPUT] = tf.TensorSpec([None, dim], tf.float32, name=EMBEDDING_INPUT)
    return sig


def _cold_start_embedding(model, train_df) -> list[float]:
    """Fallback for a task the embedding store has no row for: the mean un-adapted meta embedding of
    every training task's latest sample (population prior); without data, the embedding of an
    all-missing sample."""
    if train_df is None or len(train_df) == 0:
        raw = model.spec.dummy_inputs(1)
    else:
        from limaml_tf.tasks import keep_most_recent
        latest = keep_most_recent(train_df, model.spec, 1)
        raw = {k: tf.constant(v) for k, v in model.spec.raw_arrays(latest).items()}
    emb = model.embed(model.encoder(raw))
    return [float(x) for x in tf.reduce_mean(tf.cast(emb, tf.float32), 0).numpy()]


def _data_range(spec, train_df) -> dict | None:
    if train_df is None or len(train_df) == 0:
        return None
    t = train_df[spec.timestamp]
    return {"column": spec.timestamp, "start": str(t.min()), "end": str(t.max()), "rows": int(len(train_df)),
            "tasks": int(train_df[spec.task_key].nunique())}


def _default_warmup_inputs(spec, train_df, dim: int, cold_start: list[float]) -> dict:
    """Warm-up rows: the first training rows (or an all-missing row) with the cold-start embedding."""
    source = spec.raw_arrays(train_df.iloc[:8]) if train_df is not None and len(train_df) else \
        {k: v.numpy() for k, v in spec.dummy_inputs(1).items()}
    inputs = dict(source)
    if dim:
        n = len(next(iter(source.values())))
        inputs[EMBEDDING_INPUT] = np.tile(np.asarray(cold_start, np.float32), (n, 1))
    return inputs


def warmup_records(spec, inputs: dict, model_name: str, batch_sizes=(1, 8)) -> list[bytes]:
    """Serialized PredictionLog records (one PredictRequest per batch size) cut from `inputs`, a dict
    of numpy arrays in the signature's format; TF Serving replays them when it loads the version."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    n = len(next(iter(inputs.values())))
    records = []
    for b in batch_sizes:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = SERVING_SIGNATURE
        for name, value in inputs.items():
            rows = value[np.arange(b) % n]
            request.inputs[name].CopyFrom(tf.make_tensor_proto(rows.astype(object) if rows.dtype == object
                                                               else rows))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log.SerializeToString())
    return records


def export_serving(model, base_dir: str = "saved_models", model_name: str = "limaml", version: int | None = None,
                   train_df=None, warmup_inputs: dict | None = None, serving_root: str = "/models",
                   extra_metadata: dict | None = None) -> str:
    """Exports the global block (+ in-graph feature encoder) of `model` for TF Serving.

    Writes `<base_dir>/<model_name>/<version>/` atomically (`version`: next integer when None; an
    existing version is never overwritten) with signature `serving_default`: raw features + 
    `meta_embedding` -> `probability` [batch]. assets.extra holds the feature spec, metadata (TF version
    — the serving image must be at least as new —, embedding dim, version, training data range,
    cold-start embedding) and warm-up requests. Updates `<base_dir>/models.config`. Returns the path.
    """
    spec = model.spec
    dim = embedding_dim(model)
    path = version_path(base_dir, model_name, version)
    version = int(os.path.basename(path))
    signature = serving_signature(spec, dim)

    def serve(inputs):
        encoded = model.encoder({f.name: inputs[f.name] for f in spec.features})
        emb = inputs[EMBEDDING_INPUT] if dim else tf.zeros([tf.shape(inputs[spec.features[0].name])[0], 0])
        logits = model.global_logits(encoded, tf.cast(emb, model.compute_dtype))
        return {OUTPUT: tf.cast(tf.sigmoid(logits), tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(model.encoder)
    archive.track(model.global_block)  # θ_global only: the meta block is not part of the served graph
    archive.add_endpoint(SERVING_SIGNATURE, tf.function(serve), input_signature=[signature])

    cold_start = _cold_start_embedding(model, train_df)
    metadata = {"model_name": model_name, "version": version, "signature": SERVING_SIGNATURE,
                "inputs": {k: {"dtype": s.dtype.name, "shape": s.shape.as_list()} for k, s in signature.items()},
                "output": OUTPUT, "embedding_dim": dim, "cold_start_embedding": cold_start,
                **({"definitions": definition_layout(model)} if definition_layout(model) else {}),
                "training_data_range": _data_range(spec, train_df),
                "tensorflow_version": tf.__version__, "keras_version": keras.__version__,
                "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra_metadata or {})}
    if warmup_inputs is None:
        warmup_inputs = _default_warmup_inputs(spec, train_df, dim, cold_start)
    with atomic_directory(path) as tmp:
        archive.write_out(tmp, verbose=False)
        write_extra(tmp, SPEC_FILE, spec.to_json())
        write_extra(tmp, SERVING_METADATA_FILE, json.dumps(metadata, indent=1))
        with tf.io.TFRecordWriter(os.path.join(tmp, EXTRA_DIR, WARMUP_FILE)) as writer:
            for record in warmup_records(spec, warmup_inputs, model_name):
                writer.write(record)
    write_models_config(base_dir, model_name, serving_root)
    return path


def export_model(model, saved_models: str = "saved_models", model_name: str = "limaml", train_df=None,
                 steps: int | None = None, aggregation: str = "latest") -> tuple[str, str]:
    """What a trained model ships as: the serving export `<saved_models>/<model_name>/<v>/` (+ models.config)
    and its adapter `<saved_models>/<model_name>_adapter/<v>/` (model_version v; `steps` default: the
    model's eval_steps). Returns both paths. With several task definitions: one adapter per definition,
    `<saved_models>/<model_name>_adapter_<definition>/<v>/`, and the second value is {definition: path}."""
    serving_path = export_serving(model, saved_models, model_name, train_df=train_df)
    adapter = dict(version=int(os.path.basename(serving_path)), aggregation=aggregation,
                   steps=model.eval_steps if steps is None else steps)
    layout = definition_layout(model)
    if layout is None:
        return serving_path, export_adapter(model, saved_models, model_name, **adapter)
    return serving_path, {d: export_adapter(model, saved_models, model_name, definition=d, **adapter) for d in layout}
