"""The meta-embedding store: Feast, with SQLite (embedded) or Redis as the online store.

`EmbeddingStore(root, online_store)` keeps the Feast registry under `root`; the online store is
`root/online_store.db` (SQLite, default) or a Redis server (`"redis://host:port[/db]"`). The
refresh pipeline publishes a committed run with `publish(run_dir)`; serving reads with

    get_embeddings(task_keys) -> (embeddings float32 [n, d], found bool [n])

Keys with no row come back with found=False and the model's cold-start embedding (the row
`__cold_start__`, the un-adapted meta block on all-missing features) so the array is always
usable; callers that have a better fallback use `found`.

Several task definitions: each definition's refresh run (its adapter's config names the definition)
is published into the same feature view with keys "<definition>=<task key>" (`store_key`), and

    get_definition_embeddings({definition: task_keys}) -> {definition: (embeddings [n, d_def], found [n])}

fetches all of them, and each definition's cold-start row, in one online-store read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.parse

import numpy as np
import pandas as pd

from limaml_tf.artifacts import (COLD_START_KEY, EMBEDDINGS_DIR, atomic_write_text, read_embeddings,  # noqa: F401
                                 read_run_summary, remove_stale, store_key, temp_prefix)
from limaml_tf.feature_repo.embeddings import ENTITY_KEY, FEATURE_VIEW, definitions

STATE_FILE = "embedding_store.json"
WRITE_CHUNK = 20_000


def online_store_config(online_store: str, root: str):
    """'sqlite' | 'sqlite:///path.db' | 'redis://[:password@]host:port[/db]' -> Feast online store config."""
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

    if online_store in (None, "", "sqlite"):
        return SqliteOnlineStoreConfig(path=os.path.join(root, "online_store.db"))
    url = urllib.parse.urlparse(online_store)
    if url.scheme == "sqlite":
        return SqliteOnlineStoreConfig(path=url.path)
    if url.scheme in ("redis", "rediss"):
        conn = f"{url.hostname or 'localhost'}:{url.port or 6379}"
        if url.path.strip("/"):
            conn += f",db={int(url.path.strip('/'))}"
        if url.password:
            conn += f",password={urllib.parse.unquote(url.password)}"
        if url.scheme == "rediss":
            conn += ",ssl=true"
        return RedisOnlineStoreConfig(connection_string=conn)
    raise ValueError(f"online store {online_store!r}: use 'sqlite' or 'redis://host:port[/db]'")


class EmbeddingStore:
    def __init__(self, root: str, online_store: str | None = "sqlite", project: str = "limaml"):
        from feast import FeatureStore, RepoConfig
        from feast.infra.offline_stores.dask import DaskOfflineStoreConfig

        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.registry = os.path.join(self.root, "registry.db")

        def config(registry: str):
            return RepoConfig(project=project, provider="local", registry=registry,
                              online_store=online_store_config(online_store, self.root),
                              offline_store=DaskOfflineStoreConfig(), entity_key_serialization_version=3,
                              repo_path=self.root)

        self._repo_config = config
        self.config = config(self.registry)
        self.feast = FeatureStore(config=self.config)

    # -- state ------------------------------------------------------------------
    @property
    def state(self) -> dict:
        path = os.path.join(self.root, STATE_FILE)
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    @property
    def dim(self) -> int:
        if "embedding_dim" not in self.state:
            raise RuntimeError(f"embedding store {self.root!r} is empty: run `limaml refresh` to publish embeddings")
        return int(self.state["embedding_dim"])

    # -- write ------------------------------------------------------------------
    def publish(self, run_dir: str) -> int:
        """Writes a committed refresh run (runs/<as_of>/ with _SUCCESS.json) to the online store and
        points the feature view's offline source at it. Returns the number of rows written."""
        summary = read_run_summary(run_dir)
        source = os.path.join(run_dir, EMBEDDINGS_DIR)
        rows = read_embeddings(run_dir, columns=["task_key", "embedding", "model_version", "computed_at"])
        dims = rows["embedding"].map(len).unique()
        if len(dims) != 1:
            raise ValueError(f"{run_dir!r} holds embeddings of sizes {sorted(dims)}: one run must have one size")
        definition = summary.get("definition")
        if definition is not None:
            rows["task_key"] = [store_key(definition, k) for k in rows["task_key"]]
        self._apply(definitions(source))
        for start in range(0, len(rows), WRITE_CHUNK):
            chunk = rows.iloc[start:start + WRITE_CHUNK].copy()
            chunk["embedding"] = chunk["embedding"].map(lambda e: np.asarray(e, np.float32).tolist())
            self.feast.write_to_online_store(FEATURE_VIEW, chunk)
        state = {"embedding_dim": int(dims[0]), "model_version": summary["model_version"],
                 "as_of": summary["as_of"], "run_dir": os.path.abspath(run_dir), "rows": len(rows)}
        if definition is not None:  # one entry per definition, beside the others'
            state = {**self.state, "definitions": {**self.state.get("definitions", {}), definition: state}}
        atomic_write_text(os.path.join(self.root, STATE_FILE), json.dumps(state, indent=1))
        return len(rows)

    def _apply(self, objects) -> None:
        """`feast apply` on a copy of the registry, renamed into place: Feast rewrites its registry file
        in place, which a kill would leave cut short and every later read unable to parse."""
        from feast import FeatureStore

        remove_stale(self.root)
        fd, staging = tempfile.mkstemp(prefix=temp_prefix(self.registry), dir=self.root)
        os.close(fd)
        try:
            if os.path.exists(self.registry):
                shutil.copyfile(self.registry, staging)
            else:
                os.remove(staging)
            FeatureStore(config=self._repo_config(staging)).apply(list(objects))
            os.replace(staging, self.registry)
        finally:
            if os.path.exists(staging):
                os.remove(staging)
        self.feast.refresh_registry()

    # -- read -------------------------------------------------------------------
    def online_rows(self, task_keys: list[str]) -> pd.DataFrame:
        """Feast online lookup: columns task_key, embedding (None if missing), model_version."""
        resp = self.feast.get_online_features(
            features=[f"{FEATURE_VIEW}:embedding", f"{FEATURE_VIEW}:model_version"],
            entity_rows=[{ENTITY_KEY: str(k)} for k in task_keys])
        return pd.DataFrame(resp.to_dict())

    def get_definition_embeddings(self, task_keys: dict) -> dict:
        """{definition: task keys} -> {definition: (embeddings float32 [n, d_def], found bool [n])}, all read in
        one online-store lookup; a key without a row gets its definition's cold-start row."""
        published = self.state.get("definitions", {})
        missing = [d for d in task_keys if d not in published]
        if missing:
            raise RuntimeError(f"embedding store {self.root!r} has no embeddings of the task definition(s) {missing}: "
                               "run `limaml refresh` with each definition's adapter "
                               "(saved_models/<name>_adapter_<def>)")
        keys = {d: [str(k) for k in ks] for d, ks in task_keys.items()}
        lookup = [store_key(d, k) for d, ks in keys.items() for k in ks + [COLD_START_KEY]]
        values = self.online_rows(lookup)["embedding"].tolist()
        out, start = {}, 0
        for d, ks in keys.items():
            dim = int(published[d]["embedding_dim"])
            part, start = values[start:start + len(ks) + 1], start + len(ks) + 1
            out[d] = _with_cold_start(part[:-1], part[-1], dim)
        return out

    def get_embeddings(self, task_keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        dim = self.dim  # an empty store says so before any lookup
        rows = self.online_rows([str(k) for k in task_keys] + [COLD_START_KEY])["embedding"].tolist()
        return _with_cold_start(rows[:-1], rows[-1], dim)


def _with_cold_start(values: list, cold, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [n, dim], found [n]) of looked-up rows (None: no row), the cold-start row where missing."""
    found = np.array([v is not None and len(v) == dim for v in values], bool)
    cold = np.asarray(cold, np.float32) if cold is not None else np.zeros(dim, np.float32)
    out = np.tile(cold, (len(values), 1))
    if found.any():
        out[found] = np.asarray([values[i] for i in np.flatnonzero(found)], np.float32)
    return out, found
