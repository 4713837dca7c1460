"""Feast embedding store: publish a committed run, read back through get_online_features /
get_embeddings on SQLite, fakeredis, and a real redis-server when one is installed."""

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from limaml_tf.artifacts import embeddings_table
from limaml_tf.feature_store import COLD_START_KEY, EmbeddingStore, online_store_config

AS_OF = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)


def make_run(path, keys, emb, version="3", as_of=AS_OF):
    """A committed refresh run directory, as beam_pipelines.refresh_embeddings writes it."""
    os.makedirs(os.path.join(path, "embeddings"))
    pq.write_table(embeddings_table(keys, emb, version, as_of, "adapted"),
                   os.path.join(path, "embeddings", "part-b00000.parquet"))
    with open(os.path.join(path, "_SUCCESS.json"), "w") as f:
        json.dump({"model_version": version, "as_of": as_of.isoformat()}, f)
    return str(path)


def round_trip(store, tmp_path):
    rng = np.random.default_rng(0)
    keys = [f"u{i}" for i in range(50)] + [COLD_START_KEY]
    emb = rng.normal(size=(51, 6)).astype(np.float32)
    assert store.publish(make_run(tmp_path / "run1", keys, emb)) == 51
    got, found = store.get_embeddings(["u7", "missing", "u49"])
    np.testing.assert_array_equal(found, [True, False, True])
    np.testing.assert_array_equal(got, emb[[7, 50, 49]])  # missing -> the model's cold-start row
    assert got.dtype == np.float32 and got.shape == (3, 6)
    # Feast's own online API sees the same rows
    resp = store.feast.get_online_features(features=["meta_embeddings:embedding", "meta_embeddings:model_version"],
                                           entity_rows=[{"task_key": "u3"}]).to_dict()
    np.testing.assert_allclose(resp["embedding"][0], emb[3])
    assert resp["model_version"] == ["3"]
    # a newer run overwrites the rows it has and leaves the others
    later = AS_OF + dt.timedelta(days=1)
    store.publish(make_run(tmp_path / "run2", ["u7"], emb[7:8] + 1, version="4", as_of=later))
    got, found = store.get_embeddings(["u7", "u8"])
    np.testing.assert_array_equal(got, np.stack([emb[7] + 1, emb[8]]))
    assert store.state["model_version"] == "4" and store.get_embeddings([])[0].shape == (0, 6)


def test_sqlite_round_trip(tmp_path):
    round_trip(EmbeddingStore(str(tmp_path / "store")), tmp_path)


def test_publish_refuses_uncommitted_run_and_reads_need_a_publish(tmp_path):
    store = EmbeddingStore(str(tmp_path / "store"))
    with pytest.raises(RuntimeError, match="limaml refresh"):
        store.get_embeddings(["u1"])
    run = make_run(tmp_path / "run", ["u1"], np.ones((1, 2)))
    os.remove(os.path.join(run, "_SUCCESS.json"))
    with pytest.raises(FileNotFoundError, match="not a committed refresh run"):
        store.publish(run)


def test_online_store_urls(tmp_path):
    assert online_store_config("redis://h:7000/2", str(tmp_path)).connection_string == "h:7000,db=2"
    assert online_store_config("sqlite", str(tmp_path)).path.endswith("online_store.db")
    with pytest.raises(ValueError, match="redis://host:port"):
        online_store_config("memcached://x", str(tmp_path))


def test_fakeredis_round_trip(tmp_path, monkeypatch):
    fakeredis = pytest.importorskip("fakeredis")
    import feast.infra.online_stores.redis as feast_redis

    server = fakeredis.FakeServer()
    monkeypatch.setattr(feast_redis, "Redis", lambda **kw: fakeredis.FakeRedis(server=server))
    round_trip(EmbeddingStore(str(tmp_path / "store"), "redis://localhost:6379"), tmp_path)
    assert fakeredis.FakeRedis(server=server).dbsize() == 51


@pytest.fixture
def redis_url(require_tool):
    exe = require_tool(shutil.which("redis-server"), "redis-server", "scripts/system_deps.sh installs it as root")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_real_redis_round_trip(tmp_path, redis_url):
    round_trip(EmbeddingStore(str(tmp_path / "store"), redis_url), tmp_path)
