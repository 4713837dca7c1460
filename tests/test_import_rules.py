"""Import rules, each checked in a fresh interpreter:

* `import limaml_tf` has no side effects on the environment and imports neither Beam, Feast nor gRPC
  (nor, being lazy, Keras or TensorFlow);
* no library module imports the CLI (`limaml_cli`) or the pipelines (`beam_pipelines`);
* code that runs on a Beam worker (the pipelines, the RunInference handler) and the serving client
  import neither Keras nor the model code — they import with Keras made unimportable;
* the adapter SavedModel loads and runs with Keras made unimportable. TensorFlow itself imports Keras
  when it is imported (tensorflow/__init__.py eagerly imports `keras.src.optimizers` when Keras 3 is
  installed); loading the SavedModel imports no further Keras module.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from limaml_tf.export import export_adapter
from limaml_tf.tasks import recent_tasks
from tests.serving_helpers import tiny  # noqa: F401 (fixture)

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER_MODULES = ["beam_pipelines.adapter_handler", "beam_pipelines.refresh_stages", "beam_pipelines.interactions",
                  "beam_pipelines.row_checks", "beam_pipelines.shuffle", "beam_pipelines.sinks",
                  "beam_pipelines.runner", "beam_pipelines.refresh_embeddings", "beam_pipelines.build_training_data",
                  "limaml_tf.serving.client", "limaml_tf.serving.server", "limaml_tf.serving.repository",
                  "limaml_tf.serving.request_checks", "limaml_tf.artifacts", "limaml_tf.tfrecords"]
MODEL_MODULES = ["limaml_tf.model", "limaml_tf.blocks", "limaml_tf.features", "limaml_tf.export"]
PRELUDE = textwrap.dedent("""
    import json, sys
    def keras_modules():
        return sorted(m for m, v in sys.modules.items() if v is not None and (m == "keras" or m.startswith("keras.")))
""")
BLOCK_KERAS = 'sys.modules["keras"] = None  # `import keras` now raises ImportError\n'


def run_fresh(code: str, *args, env_drop=("KERAS_BACKEND",)) -> dict:
    """Runs `code` in a fresh interpreter from the repository root; returns the JSON it prints last."""
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", PRELUDE + code, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_limaml_tf_has_no_side_effects():
    out = run_fresh("""
import os
before = dict(os.environ)
import limaml_tf
print(json.dumps({"modules": sorted(m for m in ("beam_pipelines", "apache_beam", "feast", "grpc", "keras",
                                               "tensorflow", "limaml_tf.model", "limaml_cli") if m in sys.modules),
                  "env_changed": sorted(set(os.environ.items()) ^ set(before.items())),
                  "keras_backend": os.environ.get("KERAS_BACKEND")}))
""")
    assert out == {"modules": [], "env_changed": [], "keras_backend": None}


def test_public_names_still_import_lazily():
    import limaml_tf as lt

    assert len(lt.__all__) >= 16 and all(getattr(lt, n) is not None for n in lt.__all__)
    assert lt.LiMAMLModel.__module__ == "limaml_tf.model" and "LiMAMLModel" in dir(lt)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lt.nope


PUBLIC = {"DCNGlobalBlock", "FeatureEmbedding", "IDEmbeddingMetaBlock", "MLPGlobalBlock", "MLPMetaBlock",
          "TransformerMetaBlock", "add_sequences", "Feature", "FeatureError", "FeatureSpec", "FeatureEncoder",
          "LiMAMLModel", "MetaBlocks", "VanillaModel", "make_synthetic", "TaskSet", "paired_tasks", "split_tasks",
          "time_split"}
KERAS_CLASSES = {"DCNGlobalBlock", "FeatureEmbedding", "IDEmbeddingMetaBlock", "MLPGlobalBlock", "MLPMetaBlock",
                 "TransformerMetaBlock", "FeatureEncoder", "LiMAMLModel", "MetaBlocks", "VanillaModel"}


def test_every_decorated_name_is_exported_and_keras_classes_are_registered():
    """The names decorated with `limaml_export` (found in the source) resolve from `limaml_tf` to the
    object their module defines; the Keras classes among them are registered as "limaml_tf>Name", the
    name saved .keras files hold."""
    import importlib

    import keras

    import limaml_tf as lt
    from limaml_tf import api_export

    public = lt._public_names()
    assert PUBLIC <= set(public) and lt.__all__ == sorted(public) and set(public) <= set(dir(lt))
    assert api_export.limaml_export.__name__ == lt._DECORATOR
    registered = set()
    for name, module in public.items():
        obj = getattr(lt, name)
        assert getattr(importlib.import_module(module), name) is obj and obj.__module__ == module, name
        if isinstance(obj, type) and issubclass(obj, (keras.layers.Layer, keras.Model)):
            assert keras.saving.get_registered_name(obj) == f"limaml_tf>{name}"
            assert keras.saving.get_registered_object(f"limaml_tf>{name}") is obj
            registered.add(name)
    assert registered >= KERAS_CLASSES
    # the scan finds exactly what the decorator saw once the modules are imported
    assert {n: m for n, m in api_export.exported().items() if m.split(".")[0] == "limaml_tf"} == lt._scan()


def test_finding_the_public_names_imports_nothing():
    """`__all__` and `dir()` read the source; a Keras-free name imports neither Keras nor TensorFlow."""
    out = run_fresh("""
import limaml_tf
names, listed = limaml_tf.__all__, dir(limaml_tf)
after_scan = sorted(m for m in sys.modules if m.startswith(("limaml_tf.", "keras", "tensorflow")))
from limaml_tf import TaskSet, add_sequences, make_synthetic, split_tasks
print(json.dumps({"after_scan": after_scan, "names": names, "in_dir": sorted(set(names) - set(listed)),
                  "after_keras_free": sorted(m for m in ("keras", "tensorflow") if m in sys.modules)}))
""")
    assert out["after_scan"] == [] and out["after_keras_free"] == [] and out["in_dir"] == []
    assert PUBLIC <= set(out["names"])


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


# package -> the top-level names its modules may not import (anywhere, also inside functions): the
# dependency direction is commands (limaml_cli) -> harness (limaml_eval) / pipelines -> library
FORBIDDEN_IMPORTS = {
    "limaml_tf": {"limaml_cli", "limaml_eval", "beam_pipelines", "matplotlib", "scipy"},
    "beam_pipelines": {"limaml_cli", "limaml_eval", "matplotlib", "scipy"},
    "limaml_eval": {"limaml_cli"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_imports_point_from_the_commands_down_to_the_library(package):
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.split(".")[0] in FORBIDDEN_IMPORTS[package])
                 for p in (ROOT / package).rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_import_rule_sees_a_function_level_import(tmp_path):
    """The rule reads imports inside functions too (the harness and commands import lazily)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from limaml_eval.report import write_report\n    import scipy.stats\n")
    assert {"limaml_eval.report", "scipy.stats"} <= _imports(module)


def test_the_library_installs_without_the_harness_extras():
    """matplotlib and scipy are the harness' (extra "eval"), not the library's install_requires."""
    setup = (ROOT / "setup.py").read_text()
    core = setup[setup.index("install_requires=["):setup.index("extras_require=")]
    assert "matplotlib" not in core and "scipy" not in core
    extras = setup[setup.index("extras_require="):]
    assert '"eval": ["matplotlib' in extras and "scipy" in extras[:extras.index('"test"')]


@pytest.mark.heavy
@pytest.mark.parametrize("blocked", [False, True], ids=["keras-importable", "keras-blocked"])
def test_worker_side_modules_import_neither_keras_nor_the_model(blocked):
    """Imported after TensorFlow (which imports Keras itself, see the module docstring), the worker-side
    modules add no Keras module and no model module; with Keras unimportable they import all the same."""
    out = run_fresh((BLOCK_KERAS if blocked else "") + f"""
import importlib
import tensorflow, apache_beam
before = keras_modules()
for name in {WORKER_MODULES!r}:
    importlib.import_module(name)
print(json.dumps({{"new_keras": sorted(set(keras_modules()) - set(before)), "keras_after_tf": len(before),
                  "model": [m for m in {MODEL_MODULES!r} if m in sys.modules]}}))
""")
    assert out["new_keras"] == [] and out["model"] == []
    if blocked:
        assert out["keras_after_tf"] == 0
    else:  # documents the fact the docstring states: TensorFlow's own import pulls Keras in
        assert out["keras_after_tf"] > 0, "TensorFlow no longer imports Keras by itself: update the docstrings"


@pytest.mark.heavy
def test_refresh_driver_imports_no_tensorflow():
    """The refresh driver (and the Keras-free library modules it reads the adapter with) imports no
    TensorFlow, which keeps the driver's memory small at scale
    (see docs/refresh.md#data-path-and-throughput)."""
    out = run_fresh("""
import beam_pipelines.refresh_embeddings, limaml_tf.spec, limaml_tf.tasks, limaml_tf.artifacts
print(json.dumps(sorted(m for m in ("tensorflow", "keras") if m in sys.modules)))
""")
    assert out == []


ADAPTER_RUN = """
import numpy as np
from limaml_tf.artifacts import read_adapter
from limaml_tf.synthetic import make_synthetic
from limaml_tf.tasks import recent_tasks
path, out_path = sys.argv[1:3]
import tensorflow as tf
after_tf = keras_modules()
from beam_pipelines.adapter_handler import AdapterModelHandler, adapted_batches, cold_start_batches
spec, config = read_adapter(path)
df, _ = make_synthetic(num_tasks=24, num_items=20, mean_samples_per_task=12, seed=0)
handler = AdapterModelHandler(path, tasks_per_batch=8)
model = handler.load_model()
after_load = keras_modules()
tasks = recent_tasks(df, spec, 6)
results = [r for b in adapted_batches(tasks, 8) for r in handler.run_inference(b, model)]
cold = handler.run_inference(next(cold_start_batches(spec, df.drop_duplicates(spec.task_key).head(3), 8)), model)
np.savez(out_path, keys=np.concatenate([r.example[2] for r in results]).astype(str),
         emb=np.concatenate([r.inference for r in results]), cold=np.concatenate([r.inference for r in cold]))
print(json.dumps({"keras_after_import_tf": len(after_tf), "keras_top_level": "keras" in after_tf,
                  "new_keras_on_load": sorted(set(after_load) - set(after_tf)),
                  "model": [m for m in ("limaml_tf.model", "limaml_tf.features", "limaml_tf.export") if m in sys.modules]}))
"""


@pytest.mark.heavy
def test_adapter_savedmodel_loads_and_runs_without_keras(tiny, tmp_path):  # noqa: F811
    model, spec, df = tiny
    path = export_adapter(model, str(tmp_path), "ranker", steps=2, learning_rate=0.3)
    normal = run_fresh(ADAPTER_RUN, path, tmp_path / "normal.npz")
    blocked = run_fresh(BLOCK_KERAS + ADAPTER_RUN, path, tmp_path / "blocked.npz")
    # What TensorFlow does by itself: importing it imports Keras (hundreds of modules); loading the
    # SavedModel imports no further Keras module. With Keras blocked, nothing of Keras is loaded at all.
    assert normal["keras_top_level"] and normal["keras_after_import_tf"] > 100
    assert normal["new_keras_on_load"] == [] and blocked["new_keras_on_load"] == []
    assert blocked["keras_after_import_tf"] == 0 and not blocked["keras_top_level"]
    assert normal["model"] == blocked["model"] == []

    a, b = np.load(tmp_path / "normal.npz"), np.load(tmp_path / "blocked.npz")
    np.testing.assert_array_equal(a["emb"], b["emb"])
    np.testing.assert_array_equal(a["cold"], b["cold"])
    tasks = recent_tasks(df, spec, 6).arrays  # the same tasks, embedded by the Keras model in this process
    assert list(a["keys"]) == list(tasks["task_key"])
    support = model.encode_samples({n: tf.constant(v) for n, v in tasks["support"].items()},
                                   tasks["support_mask"].shape)
    last = tasks["support_mask"].sum(1).astype(int) - 1
    latest = model.encoder({n: tf.constant(v[np.arange(len(v)), last]) for n, v in tasks["support"].items()})
    want = model.meta_embeddings(support, tasks["support_label"], tasks["support_mask"], latest, 2, 0.3).numpy()
    np.testing.assert_allclose(a["emb"], want, rtol=1e-4, atol=1e-5)
