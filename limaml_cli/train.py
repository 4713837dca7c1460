"""`limaml train | export | evaluate`: a model on one's own data without writing Python.

  train     config (limaml_tf.config) -> time split -> LiMAML fit (TensorBoard logs, resumable backup)
            -> <out>/model.keras + metrics.json (test AUC, adapt on the validation period) -> the serving
            export and the adapter (limaml_tf.export.export_model)
  export    a .keras file (trained in Python or by `train`) -> the serving export and the adapter
  evaluate  a .keras file on a held-out file: each task adapts on its earlier samples (or on --support),
            then its later samples are scored
"""

from __future__ import annotations

import json
import os
import types

TRAIN_EXAMPLES = """
limaml train --config examples/synthetic.yaml
limaml train --config examples/movielens.yaml --data-path ../shared/data/ml-100k --epochs 5
limaml train --config my_model.yaml --data-path data/interactions.csv --out runs/mine
"""
EXPORT_EXAMPLES = """
limaml export runs/mine/model.keras --saved-models saved_models --model-name mine --data data/train.parquet
"""
EVALUATE_EXAMPLES = """
limaml evaluate runs/mine/model.keras --data data/held_out.parquet
limaml evaluate runs/mine/model.keras --data data/next_week.csv --support data/this_week.csv --steps 3
"""


def add_parser(sub):
    from limaml_cli import add_command

    p = add_command(sub, "train", "train LiMAML from a YAML config on your data (Parquet / CSV)", TRAIN_EXAMPLES)
    p.add_argument("--config", required=True, help="YAML config: data, features, model, training, output "
                                                   "(examples/synthetic.yaml, examples/movielens.yaml)")
    p.add_argument("--data-path", help="overrides data.path of the config")
    p.add_argument("--out", help="overrides output.dir: model.keras, logs/ (TensorBoard), metrics.json, limaml.log")
    p.add_argument("--saved-models", help="overrides output.saved_models (the exports' directory)")
    p.add_argument("--epochs", type=int, help="overrides training.epochs")
    p.add_argument("--no-export", action="store_true", help="skip the serving and adapter exports")
    p.set_defaults(func=train, log_dir="out")

    p = add_command(sub, "export", "export a trained .keras model for TF Serving and the embedding refresh",
                    EXPORT_EXAMPLES)
    p.add_argument("model", help="a .keras file saved by this package (model.save or limaml train)")
    p.add_argument("--saved-models", default="saved_models", help="writes <dir>/<name>/<v>/ and <dir>/<name>_adapter/<v>/")
    p.add_argument("--model-name", default="limaml")
    p.add_argument("--data", help="training data (Parquet / CSV): the cold-start embedding and warm-up requests "
                                   "come from it (default: an all-missing sample)")
    p.add_argument("--steps", type=int, help="adapter: SGD steps per task (default: the model's eval_steps)")
    p.add_argument("--aggregation", default="latest", choices=("latest", "mean", "max", "cosine"))
    p.set_defaults(func=export)

    p = add_command(sub, "evaluate", "AUC of a trained .keras model on a held-out file, with and without "
                                     "per-task fine-tuning", EVALUATE_EXAMPLES)
    p.add_argument("model", help="a .keras file saved by this package")
    p.add_argument("--data", required=True, help="held-out interactions (Parquet / CSV, the model's columns)")
    p.add_argument("--support", help="earlier interactions each task adapts on (default: the first 75%% of each "
                                     "task's held-out samples; the rest are scored)")
    p.add_argument("--steps", type=int, help="fine-tuning steps (default: the model's eval_steps)")
    p.add_argument("--out", help="write the figures as JSON here")
    p.set_defaults(func=evaluate)


def train(a) -> int:
    import keras

    from limaml_tf import config as cf
    from limaml_tf.artifacts import atomic_write_text
    from limaml_tf.tasks import paired_tasks, split_tasks, time_split
    from limaml_tf.training import fit, save_model

    c = cf.load(a.config, {"data.path": a.data_path, "training.epochs": a.epochs, "output.dir": a.out,
                           "output.saved_models": a.saved_models})
    t, out = c.training, c.output
    keras.utils.set_random_seed(t["seed"])
    df, spec = cf.load_data(c)
    timestamp = spec.timestamp if spec is not None else "timestamp"
    train_df, valid_df, test_df = time_split(df, types.SimpleNamespace(timestamp=timestamp), tuple(t["split"]))
    spec = cf.fit_spec(c, spec, train_df)
    tasks = split_tasks(train_df, spec, max_samples_per_task=t["max_samples_per_task"])
    evaluation = paired_tasks(valid_df, test_df, spec, max_support=t["eval_max_samples_per_task"],
                              max_query=t["eval_max_samples_per_task"])
    print(f"[data] {len(df)} interactions: {len(train_df)} train / {len(valid_df)} validation / {len(test_df)} test "
          f"rows by time; {len(tasks)} training tasks, {len(evaluation)} test tasks")
    steps = t["epochs"] * -(-len(tasks) // t["tasks_per_batch"])
    model = cf.build_model(c, spec, steps)
    fit(model, tasks.dataset(t["tasks_per_batch"], seed=t["seed"]), t["epochs"], verbose=2 if a.show_logs else 0,
        backup_dir=os.path.join(out["dir"], "backup") if t["backup"] else None, log_dir=os.path.join(out["dir"], "logs"))
    path = save_model(model, os.path.join(out["dir"], "model.keras"))
    print(f"[train] {path} (TensorBoard: tensorboard --logdir {os.path.join(out['dir'], 'logs')})")
    results = _auc(model, evaluation, None, "test")
    atomic_write_text(os.path.join(out["dir"], "metrics.json"), json.dumps({"test_auc": results}, indent=1))
    if out["export"] and not a.no_export:
        _export(model, out["saved_models"], out["model_name"], train_df, None, "latest")
    return 0


def _auc(model, tasks, steps, what: str) -> dict:
    """AUC by slice without and with per-task fine-tuning; printed as a table."""
    from limaml_tf.evaluation import auc_by_slice, auc_table, predict_tasks

    steps = model.eval_steps if steps is None else steps
    results = {"no fine-tune": auc_by_slice(predict_tasks(model, tasks, steps=0))}
    if steps:
        results[f"fine-tune ({steps} step{'s' * (steps > 1)})"] = auc_by_slice(predict_tasks(model, tasks, steps=steps))
    print(f"\n[evaluate] {what} AUC, {len(tasks)} tasks (each adapts on its support samples, then is scored)")
    print(auc_table(results, baseline="no fine-tune"))
    return results


def _export(model, saved_models, name, train_df, steps, aggregation) -> None:
    from limaml_tf.export import export_model

    serving_path, adapter_path = export_model(model, saved_models, name, train_df, steps, aggregation)
    adapters = (f"{adapter_path} (adapter)" if isinstance(adapter_path, str) else
                ", ".join(f"{p} (adapter of {d!r})" for d, p in adapter_path.items()))
    print(f"[export] {serving_path} (TF Serving) and {adapters}")


def export(a) -> int:
    from limaml_tf.config import read_table
    from limaml_tf.checks import positive_int
    from limaml_tf.training import load_model

    if a.steps is not None:
        positive_int("--steps", a.steps)
    model = load_model(a.model)
    train_df = read_table(a.data, model.spec) if a.data else None
    _export(model, a.saved_models, a.model_name, train_df, a.steps, a.aggregation)
    return 0


def evaluate(a) -> int:
    from limaml_tf.artifacts import atomic_write_text
    from limaml_tf.config import read_table
    from limaml_tf.checks import non_negative_int
    from limaml_tf.tasks import paired_tasks, split_tasks
    from limaml_tf.training import load_model

    steps = None if a.steps is None else non_negative_int("--steps", a.steps)
    model = load_model(a.model)
    held_out = read_table(a.data, model.spec)
    if a.support:
        tasks = paired_tasks(read_table(a.support, model.spec), held_out, model.spec)
    else:
        tasks = split_tasks(held_out, model.spec, max_samples_per_task=None)
    results = _auc(model, tasks, steps, os.path.basename(a.data))
    if a.out:
        atomic_write_text(a.out, json.dumps({"data": a.data, "support": a.support, "auc": results}, indent=1))
    return 0
