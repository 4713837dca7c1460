"""`limaml demo`: the main job end to end on the embedded synthetic default.

generate data -> time split -> train LiMAML and vanilla on the same task batches ->
evaluate (paper protocol: adapt on the validation period, score the test period) -> export the
adapter and refresh every user's meta embedding with Beam into Feast -> export the global block
and serve one user's test-period request through gRPC with its embedding fetched from Feast."""

from __future__ import annotations

import json
import os
import time

import keras
import pandas as pd

from limaml_tf.blocks import MLPGlobalBlock, MLPMetaBlock
from limaml_tf.evaluation import auc_by_slice, predict_tasks
from limaml_tf.feature_store import EmbeddingStore
from limaml_tf.model import LiMAMLModel, VanillaModel
from limaml_tf.refresh import refresh_step
from limaml_tf.serving.demo import serve_one_user
from limaml_tf.synthetic import make_synthetic
from limaml_tf.tasks import paired_tasks, split_tasks, time_split
from limaml_tf.training import make_optimizer


def build_models(spec, inner_learning_rate: float = 0.5, learning_rate: float = 3e-3, inner_steps: int = 1,
                 embedding_dim: int = 8, tasks_per_batch: int = 32, total_steps: int | None = None):
    """LiMAML and vanilla on the same blocks; the outer optimizer has the paper's settings (learning
    rate for 32 tasks scaled to `tasks_per_batch`, global-norm clip 1.0, 5 % warm-up then cosine decay
    over `total_steps`)."""
    def blocks():
        return (MLPMetaBlock(spec.meta_features, output_dim=embedding_dim),
                MLPGlobalBlock(spec.other_features))

    limaml = LiMAMLModel(*blocks(), spec, inner_steps=inner_steps, inner_learning_rate=inner_learning_rate,
                         name="limaml")
    vanilla = VanillaModel(*blocks(), spec, eval_learning_rate=inner_learning_rate, name="vanilla")
    warmup = max(1, total_steps // 20) if total_steps else 0
    for m in (limaml, vanilla):
        m.compile(optimizer=make_optimizer(tasks_per_batch, learning_rate, warmup_steps=warmup, decay_steps=total_steps))
    return limaml, vanilla


def run(workdir: str, num_tasks: int = 800, epochs: int = 15, tasks_per_batch: int = 32, seed: int = 0,
        verbose: int = 2) -> dict:
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
    results, timings = {}, {}
    for model in (limaml, vanilla):
        start = time.perf_counter()
        print(f"[train] {model.name}")
        model.fit(train.dataset(tasks_per_batch, seed=seed), epochs=epochs, verbose=verbose)
        timings[model.name] = time.perf_counter() - start
    for label, model, steps in [("vanilla", vanilla, 0), ("vanilla+fine-tune", vanilla, 1),
                                ("limaml", limaml, 0), ("limaml+fine-tune", limaml, 1)]:
        results[label] = auc_by_slice(predict_tasks(model, evaluation, steps=steps))
    base = results["vanilla"]["all"]
    print("\n[evaluate] test AUC (support = validation period, query = test period)")
    print(f"{'model':<20}{'AUC':>8}{'<25':>8}{'>=25':>8}{'gain vs vanilla':>18}")
    for label, r in results.items():
        print(f"{label:<20}{r['all']:>8.4f}{r['<25']:>8.4f}{r['>=25']:>8.4f}{100 * (r['all'] / base - 1):>+17.2f}%")
    summary = {"auc": results, "train_seconds": timings}
    limaml.save(os.path.join(workdir, "limaml.keras"))
    # Daily refresh as of the start of the test period: adapter -> Beam -> Feast (SQLite) ...
    summary["refresh"] = refresh_step(workdir, limaml, pd.concat([train_df, valid_df]))
    # ... then serve a test-period request through gRPC with the embedding fetched from Feast.
    store = EmbeddingStore(summary["refresh"]["store_dir"])
    summary["serving"] = serve_one_user(workdir, limaml, spec, train_df, valid_df, test_df, store=store)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return {"summary": summary, "limaml": limaml, "vanilla": vanilla, "spec": spec, "train_df": train_df,
            "valid_df": valid_df, "test_df": test_df, "evaluation": evaluation}


def add_parser(sub):
    p = sub.add_parser("demo", help="train -> evaluate on the synthetic default (end to end)")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--num-tasks", type=int, default=800)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks-per-batch", type=int, default=32,
                   help="tasks per outer step; the outer learning rate scales linearly with it")
    p.set_defaults(func=lambda a: run(a.workdir, a.num_tasks, a.epochs, a.tasks_per_batch, seed=a.seed) and 0)
