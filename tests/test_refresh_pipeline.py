"""Beam refresh (Algorithm 2b): pipeline embeddings == the model's own meta_embeddings, cold start,
dead letter, idempotency across runs / runners / input formats, failed runs change nothing."""

import json
import os
import shutil

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from beam_pipelines import refresh_embeddings as rx
from beam_pipelines import refresh_stages
from beam_pipelines.interactions import write_interactions_tfrecord
from limaml_tf.training import build_models
from limaml_tf.export import CONFIG_FILE, export_adapter
from limaml_tf.feature_store import COLD_START_KEY, EmbeddingStore
from limaml_tf.synthetic import DAY, make_synthetic
from limaml_tf.tasks import paired_tasks

pytestmark = pytest.mark.heavy  # end-to-end / several processes: `make test`, not `make test-fast`

AS_OF = 40 * DAY
DAYS = 20
S, T = 8, 4  # samples kept per task, tasks per adapter batch


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("refresh")
    keras.utils.set_random_seed(3)
    df, spec = make_synthetic(num_tasks=30, mean_samples_per_task=14, days=45, seed=3)
    df["timestamp"] = df["timestamp"].round()  # exact in TFRecord int64 too
    spec = spec.fit(df)
    model, _ = build_models(spec, embedding_dim=4)
    rng = np.random.default_rng(3)
    for v in model.trainable_variables:  # non-trivial weights without paying for training
        v.assign(rng.normal(0, 0.4, v.shape).astype("float32"))
    adapters = root / "adapters"
    adapters.mkdir()  # one adapter per aggregation setting under one directory (resolve_adapter)
    shutil.move(export_adapter(model, str(root / "export"), "ranker", version=7, steps=2, learning_rate=0.7),
                adapters / "latest")

    good = df.copy()
    # A task whose samples are all older than the window and a task only seen in serving: cold start.
    good.loc[good.user_id == "u0", "timestamp"] = 1.0
    bad = df.iloc[:3].copy()
    bad["user_id"] = bad["user_id"].astype(object)
    bad.iloc[0, bad.columns.get_loc("user_id")] = None
    bad.iloc[1, bad.columns.get_loc("activity")] = np.nan
    bad["stray"] = [None, None, "x"]
    bad["timestamp"] = AS_OF - DAY
    inputs = root / "parquet"
    inputs.mkdir()
    good.iloc[: len(good) // 2].to_parquet(inputs / "a.parquet")
    good.iloc[len(good) // 2:].to_parquet(inputs / "b.parquet")
    bad.to_parquet(inputs / "c.parquet")
    tfr = root / "tfrecord"
    tfr.mkdir()
    for name in ("a", "b", "c"):
        write_interactions_tfrecord(pd.read_parquet(inputs / f"{name}.parquet"), str(tfr / f"{name}.tfrecord"), spec)
    serving = pd.DataFrame({"user_id": ["u0", "new_user", "u5"], "segment": ["s1", "s2", None]})
    serving.to_parquet(root / "serving.parquet")

    kw = dict(adapter=str(adapters), aggregation="latest", as_of=AS_OF, days=DAYS, max_samples=S,
              tasks_per_batch=T, num_buckets=3, serving_tasks=str(root / "serving.parquet"),
              online_store="sqlite")
    summary = rx.refresh(str(inputs), output=str(root / "out"), workers=1, **kw)
    return dict(root=root, df=good, spec=spec, model=model, kw=kw, summary=summary,
                rows=rx.read_embeddings(summary["run_dir"]).set_index("task_key"))


def expected_embeddings(model, spec, df, aggregation="latest"):
    """Algorithm 2b straight from the Keras model: support = each task's most recent S samples in the
    window, latest = its last real support sample."""
    window = df[(df.timestamp >= AS_OF - DAYS * DAY) & (df.timestamp < AS_OF)]
    tasks = paired_tasks(window, window, spec, max_support=S, max_query=1)
    a = tasks.arrays
    last = a["support_mask"].sum(1).astype(int) - 1
    latest = {k: v[np.arange(len(v)), last] for k, v in a["support"].items()}
    enc = model.encode_samples({k: tf.constant(v) for k, v in a["support"].items()}, a["support_mask"].shape)
    emb = model.meta_embeddings(enc, a["support_label"], a["support_mask"], model.encoder(latest), 2, 0.7, aggregation)
    return pd.DataFrame(emb.numpy(), index=tasks.task_keys)


def test_pipeline_equals_model_meta_embeddings(setup):
    rows, expected = setup["rows"], expected_embeddings(setup["model"], setup["spec"], setup["df"])
    adapted = rows[rows.source == "adapted"]
    assert sorted(adapted.index) == sorted(expected.index) and len(adapted) == 29  # u0 has no recent samples
    got = np.stack(adapted.loc[expected.index, "embedding"].to_numpy())
    np.testing.assert_allclose(got, expected.to_numpy(), rtol=1e-5, atol=1e-6)
    # adaptation matters: the adapted embeddings are not the un-adapted ones
    un = setup["model"].embed(setup["model"].encoder(setup["spec"].raw_arrays(
        setup["df"].drop_duplicates("user_id").set_index("user_id").loc[expected.index].reset_index())))
    assert np.abs(got - un.numpy()).max() > 1e-3
    assert set(rows.model_version) == {"7"}
    assert (rows.computed_at == pd.Timestamp(AS_OF, unit="s", tz="UTC")).all()


def test_cold_start_rows_are_the_unadapted_meta_block(setup):
    rows, model, spec = setup["rows"], setup["model"], setup["spec"]
    cold = rows[rows.source == "cold_start"]
    assert sorted(cold.index) == sorted(["u0", "new_user", COLD_START_KEY])  # u5 has recent samples
    feats = pd.DataFrame({"segment": ["s1", "s2", ""]})
    for f in spec.features:
        if f.name != "segment":
            feats[f.name] = f.mean if f.kind == "numeric" else ""
    want = model.embed(model.encoder(spec.raw_arrays(feats))).numpy()
    got = np.stack(cold.loc[["u0", "new_user", COLD_START_KEY], "embedding"].to_numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bad_rows_go_to_dead_letter_with_reason(setup):
    s = setup["summary"]
    assert s["dead_letter"] == 3
    reasons = " | ".join(s["dead_letter_reasons"])
    assert "missing task key 'user_id'" in reasons
    assert "numeric feature 'activity'" in reasons
    assert "unknown column 'stray'" in reasons
    dead = pd.concat([pd.read_json(os.path.join(s["run_dir"], "dead_letter", f), lines=True)
                      for f in os.listdir(os.path.join(s["run_dir"], "dead_letter"))])
    assert sorted(dead["row"].map(lambda r: r["item_id"])) == sorted(setup["df"].item_id.iloc[:3])


def test_aggregation_selects_the_matching_artifact(setup, tmp_path):
    adapters = tmp_path / "adapters"
    shutil.copytree(setup["kw"]["adapter"], adapters)
    shutil.copytree(adapters / "latest", adapters / "mean")  # only the saved config differs
    config = adapters / "mean" / "assets.extra" / CONFIG_FILE
    config.write_text(json.dumps({**json.loads(config.read_text()), "aggregation": "mean"}))
    adapters = str(adapters)
    assert rx.resolve_adapter(adapters, "mean").endswith("mean")
    assert rx.resolve_adapter(adapters, "latest").endswith("latest")
    with pytest.raises(ValueError, match="aggregation='max'"):
        rx.resolve_adapter(adapters, "max")
    with pytest.raises(ValueError, match="exactly one adapter"):
        rx.resolve_adapter(adapters, None)


def test_rerun_is_identical_across_runner_and_input_format_and_published(setup, tmp_path):
    """Same --as-of, TFRecord input, 2 worker processes: the same rows, bit for bit."""
    kw = {**setup["kw"], "input_format": "tfrecord"}
    again = rx.refresh(str(setup["root"] / "tfrecord"), output=str(tmp_path), workers=2, **kw)
    rows = rx.read_embeddings(again["run_dir"]).set_index("task_key")
    first = setup["rows"]
    assert list(rows.index) == list(first.index)
    np.testing.assert_array_equal(np.stack(rows.embedding), np.stack(first.embedding))
    assert (rows.computed_at == first.computed_at).all() and again["dead_letter"] == 3
    # the embedded Feast store serves them
    store = EmbeddingStore(again["store_dir"])
    emb, found = store.get_embeddings(["u3", "nobody"])
    np.testing.assert_array_equal(found, [True, False])
    np.testing.assert_allclose(emb[0], first.loc["u3", "embedding"])
    np.testing.assert_allclose(emb[1], first.loc[COLD_START_KEY, "embedding"])


def test_shuffle_through_files_leaves_no_file_and_gives_the_same_rows(setup, tmp_path):
    """FnApiRunner spills the shuffled rows to files under the run directory by default (only their paths go
    through the runner); a directory given by the user gets a subdirectory of the run, deleted after it. The
    rows equal those of a runner that shuffles itself (the Dask test compares the same rows)."""
    assert setup["summary"]["shuffle"] == "files" and ".shuffle" not in os.listdir(setup["summary"]["run_dir"])
    spill = tmp_path / "spill"
    spill.mkdir()
    s = rx.refresh(str(setup["root"] / "parquet"), output=str(tmp_path / "out"), workers=1, shuffle_dir=str(spill),
                   **{**setup["kw"], "online_store": None})
    rows = rx.read_embeddings(s["run_dir"]).set_index("task_key")
    assert s["shuffle"] == "files" and list(rows.index) == list(setup["rows"].index) and os.listdir(spill) == []
    np.testing.assert_array_equal(np.stack(rows.embedding), np.stack(setup["rows"].embedding))
    assert rx.shuffle_directory("auto", rx.beam_options(["--runner=DaskRunner"]), "/run", 0.0) is None
    assert rx.shuffle_directory("beam", rx.beam_options([]), "/run", 0.0) is None


def test_failed_run_leaves_previous_run_and_store(setup, monkeypatch):
    s = setup["summary"]
    store = EmbeddingStore(s["store_dir"])
    before = store.get_embeddings(["u3", "u7"])
    listing = sorted(os.listdir(s["run_dir"] + "/embeddings"))

    def boom(self, rows, f):
        raise RuntimeError("worker died")

    monkeypatch.setattr(refresh_stages.WriteEmbeddings, "write", boom)
    with pytest.raises(Exception, match="worker died"):
        rx.refresh(str(setup["root"] / "parquet"), output=os.path.dirname(os.path.dirname(s["run_dir"])),
                   workers=1, **setup["kw"])
    assert sorted(os.listdir(s["run_dir"] + "/embeddings")) == listing
    assert [d for d in os.listdir(os.path.dirname(s["run_dir"])) if d.startswith(".")] == []  # no temp left
    after = EmbeddingStore(s["store_dir"]).get_embeddings(["u3", "u7"])
    np.testing.assert_array_equal(before[0], after[0])
    with open(os.path.join(s["run_dir"], "_SUCCESS.json")) as f:
        assert json.load(f)["rows"] == len(setup["rows"])


def test_dask_runner_local_cluster(setup, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        s = rx.refresh(str(setup["root"] / "parquet"), output=str(tmp_path), workers=1,
                       beam_args=["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"],
                       **{**setup["kw"], "online_store": None})
    rows = rx.read_embeddings(s["run_dir"]).set_index("task_key")
    assert list(rows.index) == list(setup["rows"].index) and s["dead_letter"] == 3
    np.testing.assert_allclose(np.stack(rows.embedding), np.stack(setup["rows"].embedding), rtol=1e-6)


def test_incomplete_output_fails_the_run(tmp_path):
    (tmp_path / "batch-1.txt").write_text("u1\nu2")
    (tmp_path / "batch-2.txt").write_text("u3")
    rows = pd.DataFrame({"task_key": ["u1", "u2", "u3", "new"], "source": ["adapted"] * 3 + ["cold_start"]})
    rx.check_complete(rows, str(tmp_path))
    with pytest.raises(RuntimeError, match=r"missing \['u3'\].*Nothing was committed"):
        rx.check_complete(rows.iloc[[0, 1, 3]], str(tmp_path))
    with pytest.raises(RuntimeError, match=r"duplicated \['u1'\]"):
        rx.check_complete(pd.concat([rows, rows.iloc[:1]]), str(tmp_path))
