"""Import rules, each checked in a fresh interpreter:

* `import limaml_tf` has no side effects on the environment and imports neither Beam, Feast nor gRPC
  (nor, being lazy, Keras or TensorFlow);
* no library module imports the CLI (`limaml_tf.cli`) or the pipelines (`beam_pipelines`);
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
                  "beam_pipelines.sinks",
                  "beam_pipelines.runner", "beam_pipelines.refresh_embeddings", "beam_pipelines.build_training_data",
                  "limaml_tf.serving.client", "limaml_tf.serving.server", "limaml_tf.artifacts", "limaml_tf.tfrecords"]
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
                                               "tensorflow", "limaml_tf.model", "limaml_tf.cli") if m in sys.modules),
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


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_library_module_imports_a_command_or_the_pipelines():
    library = [p for p in (ROOT / "limaml_tf").rglob("*.py") if "cli" not in p.relative_to(ROOT).parts]
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p)
                                                  if n.split(".")[0] == "beam_pipelines" or n.startswith("limaml_tf.cli"))
                 for p in library}
    assert {k: v for k, v in offenders.items() if v} == {}


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


def test_refresh_driver_imports_no_tensorflow():
    """The refresh driver (and the Keras-free library modules it reads the adapter with) imports no
    TensorFlow: it holds ~0.7 GB less, which counts towards the refresh's memory at scale (issue 11)."""
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


def test_adapter_savedmodel_loads_and_runs_without_keras(tiny, tmp_path):  # noqa: F811
    model, spec, df = tiny
    path = export_adapter(model, str(tmp_path / "adapter"), steps=2, learning_rate=0.3)
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
