"""SavedModel artifacts: the adapter used by the embedding refresh (Algorithm 2b).

The adapter holds θ_meta, θ_global, the feature encoder and the feature spec, and
needs no limaml_tf code to run: `tf.saved_model.load(path)` and call

  embed_tasks({"support_<feature>": [T, S, ...] raw, "support_label": [T, S],
               "support_mask": [T, S], "latest_<feature>": [T, ...] raw})
      -> {"meta_embedding": [T, d]}
  cold_start({"<feature>": [B, ...] raw}) -> {"meta_embedding": [B, d]}   (un-adapted)

`k` (steps), `α` (learning rate) and the aggregation are saved config
(assets.extra/limaml_config.json), fixed at export time; export one adapter per setting.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

SPEC_FILE = "feature_spec.json"
CONFIG_FILE = "limaml_config.json"


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yields a temp dir beside `path`; on success it is renamed to `path` (replacing an old one),
    on failure removed, so readers never see a half-written directory."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "x"))
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_extra(export_dir: str, name: str, text: str) -> None:
    extra = os.path.join(export_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    with open(os.path.join(extra, name), "w", encoding="utf-8") as f:
        f.write(text)


def read_extra(export_dir: str, name: str) -> str:
    with open(os.path.join(export_dir, "assets.extra", name), encoding="utf-8") as f:
        return f.read()


def export_adapter(model, path: str, steps: int = 1, learning_rate: float | None = None,
                   aggregation: str = "latest", model_version: str = "1", extra_config: dict | None = None) -> str:
    """Writes the adapter SavedModel for `model` (a LiMAMLModel) to `path`, atomically."""
    spec = model.spec
    lr = model.inner_learning_rate if learning_rate is None else float(learning_rate)
    raw = spec.input_signature
    support_sig = {f"support_{k}": tf.TensorSpec([None, None] + s.shape[1:], s.dtype, name=f"support_{k}")
                   for k, s in raw((None,)).items()}
    latest_sig = {f"latest_{k}": tf.TensorSpec(s.shape, s.dtype, name=f"latest_{k}") for k, s in raw((None,)).items()}
    label_sig = tf.TensorSpec([None, None], tf.float32, name="support_label")
    mask_sig = tf.TensorSpec([None, None], tf.float32, name="support_mask")
    names = [f.name for f in spec.features]

    def embed_tasks(inputs):
        support = model.encode_samples({n: inputs[f"support_{n}"] for n in names}, tf.shape(inputs["support_mask"]))
        latest = model.encoder({n: inputs[f"latest_{n}"] for n in names})
        emb = model.meta_embeddings(support, inputs["support_label"], inputs["support_mask"], latest, steps, lr,
                                    aggregation)
        return {"meta_embedding": tf.cast(emb, tf.float32)}

    def cold_start(inputs):
        return {"meta_embedding": tf.cast(model.embed(model.encoder(inputs)), tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("embed_tasks", tf.function(embed_tasks),
                         input_signature=[{"support_label": label_sig, "support_mask": mask_sig,
                                           **support_sig, **latest_sig}])
    archive.add_endpoint("cold_start", tf.function(cold_start), input_signature=[raw((None,))])
    config = {"steps": int(steps), "learning_rate": lr, "aggregation": aggregation,
              "embedding_dim": int(model.embed(model.encoder(spec.dummy_inputs(1))).shape[-1]),
              "model_version": str(model_version), "tensorflow_version": tf.__version__, **(extra_config or {})}
    with atomic_directory(path) as tmp:
        archive.write_out(tmp, verbose=False)
        write_extra(tmp, SPEC_FILE, spec.to_json())
        write_extra(tmp, CONFIG_FILE, json.dumps(config, indent=1))
    return path
