"""Crash safety: an export + refresh (+ publish to Feast) and a `limaml train` are killed with SIGKILL at
random points (tests/background_runs.py: the k-th file-system write of the run, k drawn from each seed).
After a kill, serving still reads the previous committed version and embeddings, no partial directory is
visible, and the next run succeeds (leaving no temp files behind); training resumes from its backup."""

from __future__ import annotations

import functools
import json
import os
import re

import numpy as np
import pytest

from beam_pipelines.runner import run_tag
from limaml_tf.artifacts import SUCCESS_FILE, model_versions, read_embeddings, read_models_config
from limaml_tf.feature_store import COLD_START_KEY, EmbeddingStore
from limaml_tf.serving.repository import ModelRepository
from tests.background_runs import AS_OF, TRAIN_EPOCHS
from conftest import CRASH_SEEDS
from tests.serving_helpers import request_rows, tiny_model

pytestmark = pytest.mark.heavy  # end-to-end / several processes: `make test`, not `make test-fast`

SEEDS = CRASH_SEEDS  # kill points: write 6 of a run (inside the export), 19 (inside the refresh, before its run
# is committed), 34 (inside the publish to Feast, rows written); training: the 2nd write after its first backup
RUN_TAGS = tuple(run_tag(t) for t in AS_OF)


@functools.cache
def request_data():
    return tiny_model()[1:]  # (spec, df) of the served model  # the committed runs' directories: previous, new


@pytest.fixture
def crashed(background_runs):
    return background_runs


def test_every_run_was_killed_or_completed(crashed):
    _, results, _ = crashed
    assert results["setup"] == 0
    for seed in SEEDS:
        r = results[f"seed-{seed}"]
        assert r["killed"] == -9 and r["next_run"] == 0, r  # SIGKILL at write k, then a clean run
    assert results["train"] == {**results["train"], "killed": -9, "resumed": 0, "export": 0, "evaluate": 0}


def committed_runs(out_dir) -> dict:
    runs = os.path.join(out_dir, "runs")
    visible = [d for d in os.listdir(runs) if not d.startswith(".")]
    assert all(os.path.exists(os.path.join(runs, d, SUCCESS_FILE)) for d in visible), visible  # no partial run
    return {d: read_embeddings(os.path.join(runs, d)).set_index("task_key")["embedding"] for d in visible}


def served_version(saved_models) -> int:
    """What the serving stand-in loads, checked complete: every visible version loads and answers."""
    model_dir = os.path.join(saved_models, "ranker")
    visible = [d for d in os.listdir(model_dir) if not d.startswith(".")]
    assert sorted(map(int, visible)) == model_versions(model_dir)  # only complete version directories
    assert [c.name for c in read_models_config(saved_models).model_config_list.config] == ["ranker"]
    servable = ModelRepository(saved_models).get("ranker")
    raw = request_rows(*request_data())
    import tensorflow as tf
    p = servable.signatures["serving_default"](**{k: tf.constant(v) for k, v in raw.items()})["probability"]
    assert np.isfinite(p.numpy()).all()
    return servable.version


def served_embeddings(out_dir, keys) -> np.ndarray:
    store = EmbeddingStore(os.path.join(out_dir, "feature_store"))
    emb, found = store.get_embeddings(keys)
    assert found.all()
    return emb, store.state


@pytest.mark.parametrize("seed", SEEDS)
def test_after_the_kill_serving_reads_the_previous_committed_state(crashed, seed):
    top, results, _ = crashed
    snapshot = top / f"seed-{seed}-after-kill"
    version = served_version(str(snapshot / "saved_models"))
    runs = committed_runs(snapshot / "out")
    keys = [k for k in runs[RUN_TAGS[0]].index if k != COLD_START_KEY]
    emb, state = served_embeddings(snapshot / "out", keys)
    old = np.stack(runs[RUN_TAGS[0]].loc[keys])
    if RUN_TAGS[1] not in runs:  # killed before the new run was committed: exactly the previous run
        np.testing.assert_array_equal(emb, old)
        assert state["as_of"].startswith("1970-02-10")
    else:  # killed while publishing a committed run: every row is one of the two committed runs'
        new = np.stack(runs[RUN_TAGS[1]].loc[keys])
        assert ((emb == old).all(1) | (emb == new).all(1)).all()
        assert not np.array_equal(old, new)
    assert version in (1, 2), results[f"seed-{seed}"]


@pytest.mark.parametrize("seed", SEEDS)
def test_the_next_run_succeeds_and_removes_what_the_kill_left(crashed, seed):
    top, _, _ = crashed
    root = top / f"seed-{seed}"
    assert served_version(str(root / "saved_models")) in (2, 3)  # 3 if the killed run had committed 2
    runs = committed_runs(root / "out")
    keys = [k for k in runs[RUN_TAGS[1]].index if k != COLD_START_KEY]
    emb, state = served_embeddings(root / "out", keys)
    np.testing.assert_array_equal(emb, np.stack(runs[RUN_TAGS[1]].loc[keys]))
    assert state["as_of"].startswith("1970-02-20")
    for d in ("saved_models", "saved_models/ranker", "out/runs", "out/feature_store"):
        assert [n for n in os.listdir(root / d) if ".tmp-" in n or ".old-" in n] == [], d


def test_killed_training_resumes_from_its_backup(crashed):
    top, results, stdout = crashed
    resumed = re.findall(r"resuming at epoch (\d+)/(\d+) from the backup", stdout)
    assert len(resumed) == 1 and 2 <= int(resumed[0][0]) <= TRAIN_EPOCHS, stdout[-2000:]
    out = top / "train"
    assert (out / "model.keras").exists() and not (out / "backup").exists()  # the backup is gone once done
    assert json.loads((out / "metrics.json").read_text())["test_auc"]
    assert any(n.startswith("events.out.tfevents") for _, _, files in os.walk(out / "logs") for n in files)
    # `limaml export` of the trained model.keras
    assert model_versions(str(top / "exported" / "again")) == [1]
    assert model_versions(str(top / "exported" / "again_adapter")) == [1]
