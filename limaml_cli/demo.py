"""`limaml demo`: the main job end to end on the embedded synthetic default.

generate data -> time split -> train LiMAML and vanilla on the same task batches ->
evaluate (paper protocol: adapt on the validation period, score the test period) -> export the
global block and the adapter to saved_models/ -> refresh every user's meta embedding with Beam into
Feast -> serve one user's test-period request through gRPC with its embedding fetched from Feast."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd

DEFAULT_SAVED_MODELS = "saved_models"


def train_and_evaluate(limaml, vanilla, train, evaluation, epochs: int, tasks_per_batch: int, seed: int,
                       verbose: int = 0, backup_dir: str | None = None) -> dict:
    """Trains both models on the same task batches (resumable from `backup_dir/<model name>`); prints and
    returns test AUC by slice and train time."""
    from limaml_tf.evaluation import auc_by_slice, auc_table, predict_tasks
    from limaml_tf.training import fit

    results, timings = {}, {}
    for model in (limaml, vanilla):
        start = time.perf_counter()
        fit(model, train.dataset(tasks_per_batch, seed=seed), epochs, verbose=verbose,
            backup_dir=os.path.join(backup_dir, model.name) if backup_dir else None)
        timings[model.name] = time.perf_counter() - start
    for label, model, steps in [("vanilla", vanilla, 0), ("vanilla+fine-tune", vanilla, 1),
                                ("limaml", limaml, 0), ("limaml+fine-tune", limaml, 1)]:
        results[label] = auc_by_slice(predict_tasks(model, evaluation, steps=steps))
    print("\n[evaluate] test AUC (support = validation period, query = test period)")
    print(auc_table(results, baseline="vanilla"))
    return {"auc": results, "train_seconds": timings}


def export_models(model, saved_models: str, model_name: str, train_df, steps: int = 1) -> tuple[str, str]:
    """`limaml_tf.export.export_model` (serving export + adapter, aggregation "latest"), printed."""
    from limaml_tf.export import export_model

    serving_path, adapter_path = export_model(model, saved_models, model_name, train_df, steps)
    print(f"\n[export] {serving_path} (TF Serving) and {adapter_path} (adapter)")
    return serving_path, adapter_path


def refresh_step(workdir: str, adapter_path: str, spec, interactions: pd.DataFrame, days: float = 30.0,
                 max_samples: int = 64, workers: int = 2) -> dict:
    """Runs the Beam refresh (local FnApiRunner, `workers` processes) with the exported adapter over
    `interactions` (as of just after the last one) into the embedded Feast SQLite store under
    `workdir`, prints the row count and one example; returns the summary."""
    from beam_pipelines.refresh_embeddings import refresh
    from limaml_tf.feature_store import EmbeddingStore

    data_dir = os.path.join(workdir, "interactions")
    os.makedirs(data_dir, exist_ok=True)
    interactions.to_parquet(os.path.join(data_dir, "part-00000.parquet"), index=False)
    as_of = float(interactions[spec.timestamp].max()) + 1.0
    print(f"\n[refresh] Beam (FnApiRunner, {workers} processes): last {days:g} days -> Feast (SQLite)")
    summary = refresh(data_dir, adapter_path, os.path.join(workdir, "embeddings"), as_of, days=days,
                      max_samples=max_samples, workers=workers)
    store = EmbeddingStore(summary["store_dir"])
    key = str(interactions[spec.task_key].iloc[-1])
    emb, found = store.get_embeddings([key])
    print(f"[refresh] {summary['rows']} rows ({summary['adapted']} adapted, {summary['cold_start']} cold start, "
          f"{summary['dead_letter']} dead-letter rows) in {summary['seconds']:.1f}s -> {summary['store_dir']}")
    print(f"[refresh] {spec.task_key}={key} (found={bool(found[0])}): "
          f"{np.array2string(emb[0], precision=3, max_line_width=120)}")
    return {k: summary[k] for k in ("rows", "adapted", "cold_start", "dead_letter", "run_dir", "store_dir",
                                    "seconds")}


def pick_user(spec, recent_df, request_df) -> str:
    """The user with the most recent samples among those with a request to score (deterministic)."""
    counts = recent_df[recent_df[spec.task_key].isin(set(request_df[spec.task_key]))][spec.task_key].value_counts()
    return str(sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0])


def _embed_one_user(adapter_path: str, spec, recent_df, user_requests, max_recent: int):
    """An in-memory store holding one user's embedding: Algorithm 2b with the exported adapter (no
    training code)."""
    import tensorflow as tf

    from limaml_tf.artifacts import adapter_inputs
    from limaml_tf.serving.client import InMemoryEmbeddingStore
    from limaml_tf.tasks import paired_tasks

    user = str(user_requests[spec.task_key].iloc[0])
    tasks = paired_tasks(recent_df[recent_df[spec.task_key].astype(str) == user], user_requests, spec,
                         max_support=max_recent, max_query=1)
    adapter = tf.saved_model.load(adapter_path)  # keep a reference: its functions need its variables
    embedding = adapter.embed_tasks(adapter_inputs(tasks.arrays))["meta_embedding"]
    store = InMemoryEmbeddingStore(embedding.shape[-1])
    store.put([user], embedding.numpy())
    return store


def serve_one_user(saved_models: str, serving_path: str, model, spec, recent_df, request_df, store=None,
                   adapter_path: str | None = None, max_recent: int = 64) -> dict:
    """Starts the local PredictionService on `saved_models` (a free loopback port) and scores one user's
    next request through gRPC with the export at `serving_path`, the user's meta embedding coming from
    `store` (default: an in-memory store filled by running the adapter at `adapter_path` on the user's
    recent samples, `recent_df`). Returns what it printed."""
    import tensorflow as tf

    from limaml_tf.serving.client import ServingClient
    from limaml_tf.serving.server import start_server

    user = pick_user(spec, recent_df, request_df)
    user_requests = request_df[request_df[spec.task_key].astype(str) == user]
    if store is None:
        store = _embed_one_user(adapter_path, spec, recent_df, user_requests, max_recent)
    request = user_requests.sort_values(spec.timestamp).iloc[:1]
    server, port = start_server(saved_models, port=0)
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
    print(f"\n[serve] PredictionService on 127.0.0.1:{port} serving {serving_path}")
    print(f"[serve] user {user}: meta embedding from the store (found={bool(found[0])}, from {min(n_recent, max_recent)}"
          f" recent samples) = {np.array2string(emb[0], precision=3)}")
    print(f"[serve] gRPC Predict -> probability {probability:.4f} (Keras in-process {keras_p:.4f}; with the "
          f"cold-start embedding {cold_p:.4f}); label {int(request[spec.label].iloc[0])}")
    return {"serving_path": serving_path, "user": user, "found": bool(found[0]), "probability": probability,
            "keras_probability": keras_p, "cold_start_probability": cold_p}


def run(workdir: str, num_tasks: int = 800, epochs: int = 15, tasks_per_batch: int = 32, seed: int = 0,
        verbose: int = 0, saved_models: str = DEFAULT_SAVED_MODELS, model_name: str = "limaml") -> dict:
    import keras

    from limaml_tf.feature_store import EmbeddingStore
    from limaml_tf.synthetic import make_synthetic
    from limaml_tf.training import build_models, save_model
    from limaml_tf.tasks import paired_tasks, split_tasks, time_split

    os.makedirs(workdir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    df, spec = make_synthetic(num_tasks=num_tasks, seed=seed)
    train_df, valid_df, test_df = time_split(df, spec)
    spec = spec.fit(train_df)
    train = split_tasks(train_df, spec, max_samples_per_task=64)
    evaluation = paired_tasks(valid_df, test_df, spec, max_support=32, max_query=32)
    print(f"[data] {len(df)} interactions, {len(train)} training tasks, {len(evaluation)} evaluation tasks")

    limaml, vanilla = build_models(spec, tasks_per_batch=tasks_per_batch,
                                   total_steps=epochs * -(-len(train) // tasks_per_batch))
    summary = train_and_evaluate(limaml, vanilla, train, evaluation, epochs, tasks_per_batch, seed, verbose,
                                 backup_dir=os.path.join(workdir, "backup"))
    save_model(limaml, os.path.join(workdir, "limaml.keras"))
    serving_path, adapter_path = export_models(limaml, saved_models, model_name, train_df, steps=limaml.eval_steps)
    summary["export"] = {"serving_path": serving_path, "adapter_path": adapter_path}
    # Daily refresh as of the start of the test period: adapter -> Beam -> Feast (SQLite) ...
    summary["refresh"] = refresh_step(workdir, adapter_path, spec, pd.concat([train_df, valid_df]))
    # ... then serve a test-period request through gRPC with the embedding fetched from Feast.
    store = EmbeddingStore(summary["refresh"]["store_dir"])
    summary["serving"] = serve_one_user(saved_models, serving_path, limaml, spec, valid_df, test_df, store=store)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return {"summary": summary, "limaml": limaml, "vanilla": vanilla, "spec": spec, "train_df": train_df,
            "valid_df": valid_df, "test_df": test_df, "evaluation": evaluation}


def add_parser(sub):
    from limaml_cli import add_command

    p = add_command(sub, "demo", "train -> evaluate -> export -> refresh -> serve on the synthetic default",
                    "limaml demo --workdir runs/demo\nlimaml demo --workdir runs/quick --num-tasks 200 --epochs 3 --verbose")
    p.add_argument("--workdir", default="runs/demo",
                   help="data, the .keras model, embeddings, summary.json and the log file (limaml.log)")
    p.add_argument("--saved-models", default=DEFAULT_SAVED_MODELS,
                   help="where the exports go: <dir>/limaml/<v>/ (TF Serving), <dir>/limaml_adapter/<v>/")
    p.add_argument("--num-tasks", type=int, default=800)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks-per-batch", type=int, default=32,
                   help="tasks per outer step; the outer learning rate scales linearly with it")
    p.set_defaults(func=main, log_dir="workdir")


def main(a) -> int:
    from limaml_tf.checks import positive_int

    for flag, value in (("--num-tasks", a.num_tasks), ("--epochs", a.epochs), ("--tasks-per-batch", a.tasks_per_batch)):
        positive_int(flag, value)
    run(a.workdir, a.num_tasks, a.epochs, a.tasks_per_batch, seed=a.seed, saved_models=a.saved_models,
        verbose=2 if a.show_logs else 0)
    if not a.show_logs:
        from limaml_cli import log_file
        print(f"\n[log] TensorFlow / Beam logs: {log_file(a)} (--verbose shows them here)")
    return 0
