"""The serving end of `limaml demo`: export -> embedding refresh for one user -> gRPC prediction."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from limaml_tf.export import adapter_inputs, export_adapter, export_serving
from limaml_tf.serving.client import EmbeddingLookup, InMemoryEmbeddingStore, ServingClient
from limaml_tf.serving.server import start_server
from limaml_tf.tasks import paired_tasks


def pick_user(spec, recent_df, request_df) -> str:
    """The user with the most recent samples among those with a request to score (deterministic)."""
    counts = recent_df[recent_df[spec.task_key].isin(set(request_df[spec.task_key]))][spec.task_key].value_counts()
    return str(sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0])


def serve_one_user(workdir: str, model, spec, train_df, recent_df, request_df, store: EmbeddingLookup | None = None,
                   model_name: str = "limaml", steps: int = 1, max_recent: int = 64) -> dict:
    """Exports the serving model (and, without a `store`, the adapter) under `<workdir>/saved_models`, starts the local
    PredictionService on a free loopback port and scores one user's next request through gRPC, with the
    user's meta embedding from `store` (default: an in-memory store filled by running the exported
    adapter on the user's recent samples, `recent_df`). Returns what it printed."""
    base = os.path.join(workdir, "saved_models")
    serving_path = export_serving(model, base, model_name, train_df=train_df)
    version = int(os.path.basename(serving_path))
    user = pick_user(spec, recent_df, request_df)
    user_requests = request_df[request_df[spec.task_key].astype(str) == user]
    adapter_path = None  # a given store was filled by the refresh, which exported its own adapter
    if store is None:  # Algorithm 2b for this one user, with the exported adapter (no training code)
        adapter_path = export_adapter(model, os.path.join(base, f"{model_name}_adapter", str(version)), steps=steps,
                                      model_version=str(version))
        tasks = paired_tasks(recent_df[recent_df[spec.task_key].astype(str) == user], user_requests, spec,
                             max_support=max_recent, max_query=1)
        adapter = tf.saved_model.load(adapter_path)
        embedding = adapter.embed_tasks({k: tf.constant(v) for k, v in adapter_inputs(tasks.arrays).items()})
        store = InMemoryEmbeddingStore(embedding["meta_embedding"].shape[-1])
        store.put([user], embedding["meta_embedding"].numpy())
    request = user_requests.sort_values(spec.timestamp).iloc[:1]
    server, port = start_server(base, port=0)
    try:
        with ServingClient.from_export(serving_path, f"127.0.0.1:{port}", store) as client:
            probability = float(client.predict(request, [user])[0])
            emb, found = client.embeddings([user])
            cold = client.cold_start
    finally:
        server.stop(grace=1)
    raw = {k: tf.constant(v) for k, v in spec.raw_arrays(request).items()}
    keras_p = float(model({**raw, "meta_embedding": tf.constant(emb)}).numpy()[0])
    cold_p = float(model({**raw, "meta_embedding": tf.constant(cold[None])}).numpy()[0])
    n_recent = int((recent_df[spec.task_key].astype(str) == user).sum())
    exported = serving_path + (f" (+ adapter {adapter_path})" if adapter_path else "")
    print(f"\n[serve] exported {exported}; PredictionService on 127.0.0.1:{port}")
    print(f"[serve] user {user}: meta embedding from the store (found={bool(found[0])}, from {min(n_recent, max_recent)}"
          f" recent samples) = {np.array2string(emb[0], precision=3)}")
    print(f"[serve] gRPC Predict -> probability {probability:.4f} (Keras in-process {keras_p:.4f}; with the "
          f"cold-start embedding {cold_p:.4f}); label {int(request[spec.label].iloc[0])}")
    return {"serving_path": serving_path, "adapter_path": adapter_path, "user": user, "found": bool(found[0]),
            "probability": probability, "keras_probability": keras_p, "cold_start_probability": cold_p}
