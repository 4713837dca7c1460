"""Several task definitions end to end: one adapter per definition, the Beam refresh per definition into
one Feast store, one online-store lookup for all of a request's embeddings, cold start per definition,
and the served global block on their concatenation."""

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import limaml_tf as lt
from beam_pipelines import refresh_embeddings as rx
from limaml_tf import export as ex
from limaml_tf.artifacts import COLD_START_KEY, read_adapter
from limaml_tf.feature_store import EmbeddingStore
from limaml_tf.serving import ServingClient
from limaml_tf.serving.client import InMemoryEmbeddingStore
from limaml_tf.synthetic import DAY
from limaml_tf.tasks import recent_tasks

pytestmark = pytest.mark.heavy  # end-to-end / several processes: `make test`, not `make test-fast`

AS_OF, DAYS, S, T = 40 * DAY, 20, 8, 4
DEFS = ("user", "user_x_type")


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory):
    root = tmp_path_factory.mktemp("definitions")
    keras.utils.set_random_seed(4)
    df, spec = lt.make_synthetic(num_tasks=12, mean_samples_per_task=14, days=45, seed=4, item_types=3)
    df["timestamp"] = df["timestamp"].round()
    spec = spec.fit(df)
    blocks = {d: lt.MLPMetaBlock(spec.meta_features + (spec.feature("item_type"),), output_dim=3 + i, hidden_units=(4,))
              for i, d in enumerate(DEFS)}
    model = lt.LiMAMLModel(blocks, lt.MLPGlobalBlock(spec.other_features, hidden_units=(5,)), spec,
                           inner_learning_rate=0.7)
    rng = np.random.default_rng(4)
    for v in model.trainable_variables:  # non-trivial weights without paying for training
        v.assign(rng.normal(0, 0.4, v.shape).astype("float32"))
    serving_path, adapters = ex.export_model(model, str(root / "saved_models"), "ranker", train_df=df, steps=2)
    (root / "in").mkdir()
    df.to_parquet(root / "in" / "a.parquet")  # every definition's key column: the refresh reads its own
    store_dir = str(root / "store")
    summaries = {d: rx.refresh(str(root / "in"), adapters[d], str(root / f"out_{d}"), AS_OF, days=DAYS, max_samples=S,
                               tasks_per_batch=T, num_buckets=2, store_dir=store_dir, workers=1)
                 for d in DEFS}
    return dict(df=df, spec=spec, model=model, serving_path=serving_path, adapters=adapters, store_dir=store_dir,
                summaries=summaries)


def expected(model, spec, df, definition):
    """Algorithm 2b from the Keras model for `definition`'s tasks (grouped by its key column)."""
    window = df[(df.timestamp >= AS_OF - DAYS * DAY) & (df.timestamp < AS_OF)]
    tasks = recent_tasks(window, spec.for_definition(definition), S)
    a = tasks.arrays
    last = a["support_mask"].sum(1).astype(int) - 1
    latest = {k: v[np.arange(len(v)), last] for k, v in a["support"].items()}
    enc = model.encode_samples({k: tf.constant(v) for k, v in a["support"].items()}, a["support_mask"].shape)
    emb = model.meta_embeddings(enc, a["support_label"], a["support_mask"], model.encoder(latest), 2, 0.7,
                                definition=definition)
    return pd.DataFrame(emb.numpy(), index=tasks.task_keys)


def test_one_adapter_and_refresh_per_definition(refreshed):
    spec, model = refreshed["spec"], refreshed["model"]
    for i, d in enumerate(DEFS):
        adapter_spec, config = read_adapter(refreshed["adapters"][d])
        assert adapter_spec.task_key == spec.definitions[d] and config["definition"] == d
        assert config["embedding_dim"] == 3 + i
        rows = rx.read_embeddings(refreshed["summaries"][d]["run_dir"]).set_index("task_key")
        want = expected(model, spec, refreshed["df"], d)
        adapted = rows[rows.source == "adapted"]
        assert sorted(adapted.index) == sorted(want.index)
        np.testing.assert_allclose(np.stack(adapted.loc[want.index, "embedding"]), want.to_numpy(),
                                   rtol=1e-5, atol=1e-6)
    assert rows.index.str.contains("|", regex=False).sum() > 12  # several user x type tasks per user


def test_store_reads_every_definition_in_one_lookup_with_cold_start(refreshed, monkeypatch):
    store = EmbeddingStore(refreshed["store_dir"])
    calls = []
    lookup = store.online_rows
    monkeypatch.setattr(store, "online_rows", lambda keys: calls.append(keys) or lookup(keys))
    rows = {d: rx.read_embeddings(refreshed["summaries"][d]["run_dir"]).set_index("task_key") for d in DEFS}
    known = {"user": rows["user"].index[0], "user_x_type": rows["user_x_type"].index[1]}
    got = store.get_definition_embeddings({d: [known[d], "never-seen"] for d in DEFS})
    assert len(calls) == 1
    for d in DEFS:
        emb, found = got[d]
        assert found.tolist() == [True, False]
        np.testing.assert_allclose(emb[0], rows[d].loc[known[d], "embedding"])
        np.testing.assert_allclose(emb[1], rows[d].loc[COLD_START_KEY, "embedding"])  # this definition's cold start
    with pytest.raises(RuntimeError, match="no embeddings of the task definition"):
        store.get_definition_embeddings({"genre": ["x"]})


def test_served_model_reads_the_concatenated_embeddings(refreshed):
    model, spec, df = refreshed["model"], refreshed["spec"], refreshed["df"]
    store = EmbeddingStore(refreshed["store_dir"])
    client = ServingClient.from_export(refreshed["serving_path"], "localhost:1", store)
    sample = df.iloc[:3]
    keys = {"user": list(sample["user_id"]), "user_x_type": list(sample["user_item_type"][:2]) + ["new|k0"]}
    request = client.build_request(sample, keys)
    emb = tf.make_ndarray(request.inputs["meta_embedding"])
    got = store.get_definition_embeddings(keys)
    want = np.concatenate([got["user"][0], got["user_x_type"][0]], 1)
    want[2, 3:] = client.cold_start[3:]  # a key the store lacks: the model's cold start, that definition's slice
    np.testing.assert_allclose(emb, want)
    served = tf.saved_model.load(refreshed["serving_path"]).signatures["serving_default"]
    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    probs = served(**{k: tf.constant(v) for k, v in inputs.items()})["probability"].numpy()
    np.testing.assert_allclose(probs, model({**spec.raw_arrays(sample), "meta_embedding": emb}).numpy(), rtol=1e-5)
    with pytest.raises(lt.FeatureError, match="send task_keys as"):
        client.build_request(sample, list(sample["user_id"]))
    memory = InMemoryEmbeddingStore(7, definitions={"user": 3, "user_x_type": 4})
    memory.put(["u1"], np.ones((1, 3)), definition="user")
    mem_client = ServingClient.from_export(refreshed["serving_path"], "localhost:1", memory)
    emb, found = mem_client.embeddings({"user": ["u1", "u2"], "user_x_type": ["u1|k0", "u2|k0"]})
    assert found["user"].tolist() == [True, False] and not found["user_x_type"].any()
    np.testing.assert_allclose(emb[0, :3], 1.0)
    np.testing.assert_allclose(emb[1], client.cold_start)  # cold start per definition: its slice
