"""Serving + adapter SavedModels: layout, metadata, atomicity, and fresh-process / C++ parity."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from limaml_tf import export as ex
from limaml_tf.artifacts import read_adapter
from tests import cpp_load_check as load_check
from limaml_tf.serving.repository import ModelRepository
from limaml_tf.tasks import split_tasks
from tests.serving_helpers import DIM, keras_probability, request_rows, tiny, tiny_model  # noqa: F401 (fixture)


def _export(model, spec, df, base, steps=2):
    path = ex.export_serving(model, base, "ranker", train_df=df)
    adapter = ex.export_adapter(model, base, "ranker", version=1, steps=steps, learning_rate=0.3)
    return model, spec, df, base, path, adapter


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny):
    return _export(*tiny, str(tmp_path_factory.mktemp("saved_models")))


@pytest.fixture(scope="module")
def exported_sequences(tmp_path_factory):
    """A TransformerMetaBlock over sequence features: the adapter adapts it, serving takes the sequences."""
    return _export(*tiny_model(sequences=True), str(tmp_path_factory.mktemp("saved_models_seq")), steps=1)


def test_layout_metadata_and_models_config(exported):
    model, spec, df, base, path, _ = exported
    assert path == os.path.join(base, "ranker", "1")
    extra = os.listdir(os.path.join(path, "assets.extra"))
    assert {ex.SPEC_FILE, ex.SERVING_METADATA_FILE, ex.WARMUP_FILE} <= set(extra)
    loaded_spec, meta = ex.load_serving_metadata(path)
    assert loaded_spec == spec
    assert meta["tensorflow_version"] == tf.__version__ and meta["embedding_dim"] == DIM and meta["version"] == 1
    assert meta["training_data_range"]["rows"] == len(df)
    assert float(meta["training_data_range"]["end"]) == pytest.approx(df["timestamp"].max())
    # cold start = mean un-adapted embedding of each training task's latest sample
    latest = df.sort_values("timestamp").groupby("user_id").tail(1)
    expected = model.embed(model.encoder({k: tf.constant(v) for k, v in spec.raw_arrays(latest).items()}))
    np.testing.assert_allclose(meta["cold_start_embedding"], np.mean(expected, 0), rtol=1e-5, atol=1e-6)

    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(open(os.path.join(base, ex.MODELS_CONFIG)).read(), config)
    (entry,) = config.model_config_list.config  # the adapter is not a TF Serving model
    assert (entry.name, entry.base_path, entry.model_platform) == ("ranker", "/models/ranker", "tensorflow")

    # warm-up records: PredictionLogs whose requests carry exactly the signature's inputs
    sig = tf.saved_model.load(path).signatures["serving_default"]
    names = set(sig.structured_input_signature[1])
    assert names == {f.name for f in spec.features} | {"meta_embedding"}
    assert set(sig.structured_outputs) == {"probability"}
    records = list(tf.data.TFRecordDataset(os.path.join(path, "assets.extra", ex.WARMUP_FILE)).as_numpy_iterator())
    assert len(records) == 2
    for record in records:
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        assert set(request.inputs) == names and request.model_spec.signature_name == "serving_default"
        out = sig(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})["probability"]
        assert np.all((out.numpy() > 0) & (out.numpy() < 1))


def test_served_graph_holds_only_the_global_block(exported):
    model, *_, path, _ = exported
    saved = sorted(tuple(shape) for name, shape in tf.train.list_variables(os.path.join(path, "variables", "variables"))
                   if name.startswith("variables/"))
    assert saved == sorted(tuple(w.shape) for w in model.global_block.weights)
    assert sum(np.prod(s) for s in saved) < sum(np.prod(w.shape) for w in model.weights)  # θ_meta left out


def test_versions_are_integers_and_never_overwritten(exported, tmp_path):
    model, _, df, *_ = exported
    base = str(tmp_path)
    assert ex.export_serving(model, base, "m").endswith(os.path.join("m", "1"))
    assert ex.export_serving(model, base, "m").endswith(os.path.join("m", "2"))
    with pytest.raises(FileExistsError, match="next free: 3"):
        ex.export_serving(model, base, "m", version=2)
    assert ex.model_versions(os.path.join(base, "m")) == [1, 2]


def test_adapter_export_takes_the_serving_exports_arguments(exported, tmp_path):
    """export_serving and export_adapter take (model, base_dir, model_name, version) and return the version
    directory they wrote; the adapter sits beside the served model and records its version."""
    model, *_ = exported
    base = str(tmp_path)
    serving = ex.export_serving(model, base, "m", version=4)
    adapter = ex.export_adapter(model, base, "m", version=4, steps=1)
    assert serving == os.path.join(base, "m", "4") and adapter == os.path.join(base, "m_adapter", "4")
    assert read_adapter(adapter)[1]["model_version"] == "4"
    assert ex.export_adapter(model, base, "m") == os.path.join(base, "m_adapter", "5")  # the next free version
    with pytest.raises(FileExistsError, match="next free: 6"):
        ex.export_adapter(model, base, "m", version=4)
    with pytest.raises(ValueError, match="positive integer"):
        ex.export_adapter(model, base, "m", version=0)


def test_half_written_export_is_never_visible(exported, tmp_path, monkeypatch):
    model, *_ = exported
    base = str(tmp_path)
    ex.export_serving(model, base, "m")
    config_before = open(os.path.join(base, ex.MODELS_CONFIG)).read()
    seen = {}
    real_write_extra = ex.write_extra

    def crash_midway(export_dir, name, text):
        real_write_extra(export_dir, name, text)  # the SavedModel itself is complete in the temp dir
        seen["listing"] = sorted(os.listdir(os.path.join(base, "m")))
        seen["versions"] = ex.model_versions(os.path.join(base, "m"))
        seen["served"] = ModelRepository(base).get("m").version
        raise OSError("disk full")

    monkeypatch.setattr(ex, "write_extra", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        ex.export_serving(model, base, "m")
    assert any(d.startswith(".2.tmp-") for d in seen["listing"])  # it was being written...
    assert seen["versions"] == [1] and seen["served"] == 1  # ...but was invisible to the server
    assert sorted(os.listdir(os.path.join(base, "m"))) == ["1"]  # and is gone after the failure
    assert open(os.path.join(base, ex.MODELS_CONFIG)).read() == config_before


FRESH_PROCESS = textwrap.dedent("""
    import sys, numpy as np, tensorflow as tf
    serving_dir, adapter_dir, inputs_path, out_path = sys.argv[1:]
    data = dict(np.load(inputs_path, allow_pickle=True))
    def part(prefix):
        return {k[len(prefix):]: tf.constant(v) for k, v in data.items() if k.startswith(prefix)}
    serving = tf.saved_model.load(serving_dir).signatures["serving_default"]
    adapter = tf.saved_model.load(adapter_dir)
    out = {"probability": serving(**part("serve/"))["probability"].numpy(),
           "embedding": adapter.embed_tasks(part("adapt/"))["meta_embedding"].numpy(),
           "cold_start": adapter.cold_start(part("cold/"))["meta_embedding"].numpy()}
    assert "limaml_tf" not in sys.modules  # the artifacts need no package code
    np.savez(out_path, **out)
""")


@pytest.mark.heavy
@pytest.mark.parametrize("which", ["exported", "exported_sequences"])
def test_fresh_process_matches_keras(which, request, tmp_path):
    model, spec, df, _, path, adapter = request.getfixturevalue(which)
    raw = request_rows(spec, df)
    tasks = split_tasks(df, spec, max_samples_per_task=8).arrays
    tasks["support_mask"][1] = 0  # a task with no recent samples: cold start
    adapt = ex.adapter_inputs(tasks)
    cold = {k: v for k, v in raw.items() if k != "meta_embedding"}
    inputs = {**{f"serve/{k}": v for k, v in raw.items()}, **{f"adapt/{k}": v for k, v in adapt.items()},
              **{f"cold/{k}": v for k, v in cold.items()}}
    np.savez(tmp_path / "in.npz", **inputs)
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    env = {**os.environ, "PYTHONPATH": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(script), path, adapter, str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], env=env, cwd=str(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")

    np.testing.assert_allclose(out["probability"], keras_probability(model, raw), rtol=1e-5, atol=1e-6)
    support = model.encode_samples({n: tf.constant(v) for n, v in tasks["support"].items()},
                                   tasks["support_mask"].shape)
    latest = model.encoder({n: tf.constant(adapt[f"latest_{n}"]) for n in tasks["support"]})
    with open(os.path.join(adapter, "assets.extra", ex.CONFIG_FILE)) as f:
        steps = json.load(f)["steps"]  # 2; 1 for the transformer model (its export traces faster)
    want = model.meta_embeddings(support, tasks["support_label"], tasks["support_mask"], latest, steps, 0.3).numpy()
    np.testing.assert_allclose(out["embedding"], want, rtol=1e-4, atol=1e-5)
    unadapted = model.embed(latest).numpy()
    np.testing.assert_allclose(out["embedding"][1], unadapted[1], rtol=1e-5, atol=1e-6)
    assert np.abs(out["embedding"][0] - unadapted[0]).max() > 1e-4  # adaptation changed a real task
    np.testing.assert_allclose(out["cold_start"], model.embed(model.encoder({k: tf.constant(v) for k, v in
                                                                             cold.items()})), rtol=1e-5, atol=1e-6)
    # the meta features and the meta embedding both reach the served output
    assert np.abs(out["probability"] - keras_probability(model, {**raw, "meta_embedding": 0 * raw["meta_embedding"]})
                  ).max() > 1e-4


@pytest.mark.heavy
@pytest.mark.parametrize("which", ["exported", "exported_sequences"])
def test_cpp_loader_runs_the_export(which, request, require_tool):
    require_tool(load_check.compiler(), "a C++ compiler (g++ / clang++, or $CXX)", "scripts/system_deps.sh")
    model, spec, df, _, path, _ = request.getfixturevalue(which)
    # cache the binary between runs (keyed by the source and the TF version); CI builds it once
    key = f"{tf.__version__}-{hashlib.sha256(open(load_check.SOURCE, 'rb').read()).hexdigest()[:16]}"
    binary = os.path.join(str(request.config.cache.mkdir("load_check")), f"load_check-{key}")
    if not os.path.exists(binary):
        load_check.build(binary + ".tmp")
        os.replace(binary + ".tmp", binary)
    raw = request_rows(spec, df)
    out = load_check.run(binary, path, raw)
    np.testing.assert_allclose(out["probability"], keras_probability(model, raw), rtol=1e-5, atol=1e-6)
    with open(os.path.join(path, "assets.extra", ex.SERVING_METADATA_FILE)) as f:
        assert json.load(f)["tensorflow_version"] == tf.__version__
