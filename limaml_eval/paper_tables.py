"""The paper's Tables 3, 4, 9 and 14 on MovieLens under the global time split (paper §6), over seeds.

Protocol: train / validation / test split by global timestamp quantiles; models are trained on the
training period (tasks = users, 75/25 support/query by time); at evaluation each test user is
adapted on its validation-period samples ("fine-tune" variants) and scored on its test-period
samples. Reported: AUC gain relative to vanilla without fine-tuning, overall, by test samples per
user (< 25, >= 25), and on users never seen in training. Settings are fixed (`Config`), as in the
paper's tables; `limaml reproduce --protocol time --tables models` chooses them on validation
instead (`limaml_eval.runner`). Writes report.md, results.json and PNG plots.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from limaml_eval import models
from limaml_eval.paper import TABLE3, Config
from limaml_eval.paper_report import write_report
from limaml_tf import maml
from limaml_tf.artifacts import AGGREGATIONS
from limaml_tf.evaluation import auc_by_slice, predict_tasks
from limaml_tf.movielens import load_tasks_frame, movielens_spec
from limaml_tf.tasks import paired_tasks, split_tasks, time_split

@dataclasses.dataclass
class Data:
    spec: object
    train: object
    evaluation: object
    unseen: set
    summary: dict


def prepare(cfg: Config, frame: pd.DataFrame | None = None) -> Data:
    df = load_tasks_frame(cfg.dataset, cfg.data_path) if frame is None else frame
    stub = _time_only_spec()
    if cfg.tuning:  # never look at the real validation/test periods: re-split the training period
        df = time_split(df, stub, cfg.quantiles)[0]
    train_df, valid_df, test_df = time_split(df, stub, cfg.quantiles)
    spec = movielens_spec(train_df)
    train = split_tasks(train_df, spec, max_samples_per_task=cfg.max_train_samples)
    if cfg.support_period not in ("validation", "history"):
        raise ValueError(f"support_period must be 'validation' or 'history', got {cfg.support_period!r}")
    support_df = valid_df if cfg.support_period == "validation" else pd.concat([train_df, valid_df])
    evaluation = paired_tasks(support_df, test_df, spec, max_support=cfg.max_support, max_query=cfg.max_query)
    unseen = set(evaluation.task_keys) - set(train.task_keys)
    summary = {"interactions": len(df), "train": len(train_df), "validation": len(valid_df), "test": len(test_df),
               "train_users": len(train), "test_users": len(evaluation), "unseen_test_users": len(unseen),
               "test_users_with_validation": int((evaluation.arrays["support_mask"].sum(1) > 0).sum()),
               "positive_rate": float(df["label"].mean())}
    return Data(spec, train, evaluation, unseen, summary)


def _time_only_spec():
    from limaml_tf.spec import FeatureSpec
    return FeatureSpec("task", "timestamp", "label", (), ())


def build(kind: str, spec, cfg: Config, inner_steps: int | None = None):
    """kind: vanilla | maml (entire network) | limaml | wd_id (vanilla + ID meta block) | limaml_id."""
    return models.build(kind, spec, cfg, **({"inner_steps": inner_steps} if inner_steps else {}))


def train(model, data: Data, cfg: Config, seed: int, verbose: int, epochs: int | None = None):
    """Fits on the training tasks; returns (seconds per epoch, loss per epoch)."""
    epochs = epochs or cfg.epochs
    timer = _EpochTimer()
    history = model.fit(data.train.dataset(cfg.tasks_per_batch, seed=seed), epochs=epochs, verbose=verbose,
                        callbacks=[timer])
    return timer.seconds_per_epoch(), history.history["loss"]


class _EpochTimer(keras.callbacks.Callback):
    """Wall time per epoch; the first epoch (graph tracing) is left out when there are others."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times = getattr(self, "times", []) + [time.perf_counter() - self._start]

    def seconds_per_epoch(self) -> float:
        return float(np.mean(self.times[1:] if len(self.times) > 1 else self.times))


def evaluate(model, data: Data, steps: int, cfg: Config) -> dict:
    pred = predict_tasks(model, data.evaluation, steps=steps, learning_rate=cfg.inner_learning_rate)
    return auc_by_slice(pred, unseen_keys=data.unseen)


def score_with_meta_embeddings(model, data: Data, aggregation: str, steps: int, cfg: Config) -> dict:
    """Serving path (Algorithm 2b): one meta embedding per user from its validation samples,
    then the global block alone scores the test samples with that fixed embedding."""
    rows = []
    for bundle in data.evaluation.batches(64):
        enc = model.encode_bundle(bundle)
        has_support = enc["support_mask"][:, 0] > 0

        def latest(s, q):  # the user's latest validation sample; cold start: its first test sample
            cond = tf.reshape(has_support, [-1] + [1] * (s.shape.rank - 2))
            return tf.where(cond, s[:, -1], q[:, 0])  # support slots are edge-padded: -1 = latest

        last = {k: latest(enc["support"][k], enc["query"][k]) for k in enc["support"]}
        emb = model.meta_embeddings(enc["support"], enc["support_label"], enc["support_mask"], last,
                                    steps, cfg.inner_learning_rate, aggregation,
                                    task_key=bundle["task_key"])
        mask = bundle["query_mask"] > 0
        t_, q_ = mask.shape
        flat = {k: maml.merge_task_slots(v) for k, v in enc["query"].items()}
        logits = model.global_logits(flat, tf.repeat(emb, q_, axis=0)).numpy().reshape(t_, q_)
        t, q = np.nonzero(mask)
        rows.append(pd.DataFrame({"task_key": bundle["task_key"][t], "label": bundle["query_label"][t, q],
                                  "probability": 1 / (1 + np.exp(-logits[t, q])),
                                  "task_query_count": mask.sum(1)[t]}))
    return auc_by_slice(pd.concat(rows, ignore_index=True), unseen_keys=data.unseen)


def run_seed(cfg: Config, data: Data, seed: int, verbose: int = 0, log=print) -> dict:
    """All four tables for one seed. Returns {"auc": {row: {slice: auc}}, "seconds": ..., "curves": ...}."""
    auc, seconds, curves = {}, {}, {}

    def fit(name, kind, epochs=None, init_from=None, **kw):
        keras.utils.set_random_seed(seed)
        model = build(kind, data.spec, cfg, **kw)
        if init_from is not None:  # warm start: same blocks, so the weight lists line up
            model.set_weights(init_from.get_weights())
        log(f"[seed {seed}] training {name} ({epochs or cfg.epochs} epochs)")
        seconds[name], curves[name] = train(model, data, cfg, seed, verbose, epochs)
        log(f"[seed {seed}]   {name}: {seconds[name]:.1f}s/epoch, final loss {curves[name][-1]:.4f}")
        return model

    main = [("vanilla", "vanilla")]
    if {"3", "4", "14"} & set(cfg.tables):
        main += [("MAML", "maml"), ("LiMAML", "limaml")] if "3" in cfg.tables else [("LiMAML", "limaml")]
    for name, kind in main:
        if kind != "vanilla" and cfg.warm_start_epochs:
            model = fit(name, kind, epochs=cfg.warm_start_epochs, init_from=vanilla)
        else:
            model = fit(name, kind)
        if kind == "vanilla":
            vanilla = model
        auc[name] = evaluate(model, data, 0, cfg)
        auc[f"{name}+FT"] = evaluate(model, data, cfg.eval_steps, cfg)
        if name == "LiMAML":
            limaml = model
    if "4" in cfg.tables:
        wd = fit("W&D-ID", "wd_id")
        auc["W&D-ID"], auc["W&D-ID+FT"] = evaluate(wd, data, 0, cfg), evaluate(wd, data, cfg.eval_steps, cfg)
        auc["LiMAML-ID+FT"] = evaluate(fit("LiMAML-ID", "limaml_id"), data, cfg.eval_steps, cfg)
        auc["LiMAML-MLP+FT"] = auc["LiMAML+FT"]
    if "14" in cfg.tables:  # aggregation of the served meta embedding (LiMAML, n = 1)
        for agg in AGGREGATIONS:
            auc[f"agg:{agg}"] = score_with_meta_embeddings(limaml, data, agg, cfg.eval_steps, cfg)
    # Table 9: inner steps n vs training time (ratio to vanilla) and AUC
    t9_epochs = cfg.table9_epochs or cfg.epochs
    for n in cfg.table9_steps if "9" in cfg.tables else ():
        name = f"n={n}"
        if n == cfg.inner_steps and t9_epochs == cfg.epochs and "LiMAML" in seconds:
            seconds[name], auc[name] = seconds["LiMAML"], auc["LiMAML+FT"]
            continue
        auc[name] = evaluate(fit(name, "limaml", epochs=t9_epochs, inner_steps=n), data, cfg.eval_steps, cfg)
    log(f"[seed {seed}] done: " + ", ".join(f"{k} {v['all']:.4f}" for k, v in auc.items() if k in TABLE3))
    return {"auc": auc, "seconds": seconds, "curves": curves}


def reproduce(cfg: Config, outdir: str, command: str = "limaml reproduce", verbose: int = 0,
              frame: pd.DataFrame | None = None, log=print) -> dict:
    data = prepare(cfg, frame)
    log("[data] " + json.dumps(data.summary))
    runs = [{"seed": seed, **run_seed(cfg, data, seed, verbose, log)} for seed in cfg.seeds]
    report = write_report(runs, cfg, data.summary, outdir, [command])
    log(f"[report] {os.path.join(outdir, 'report.md')}")
    return {"runs": runs, "report": report, "data": data.summary}


def merge(result_dirs: list[str], outdir: str, command: str, tables: tuple | None = None) -> str:
    """One report from runs made separately (e.g. one process per seed) with the same settings;
    `tables`: render only these (a subset of the tables the runs computed)."""
    loaded = []
    for d in result_dirs:
        with open(os.path.join(d, "results.json")) as f:
            loaded.append(json.load(f))
    first = loaded[0]
    for other, d in zip(loaded[1:], result_dirs[1:]):
        a = {k: v for k, v in first["config"].items() if k != "seeds"}
        b = {k: v for k, v in other["config"].items() if k != "seeds"}
        if a != b or other["data"] != first["data"]:
            raise ValueError(f"{d}: its settings or data differ from {result_dirs[0]}; only runs with the "
                             "same settings can be merged")
    runs = sorted((r for x in loaded for r in x["runs"]), key=lambda r: r["seed"])
    config = {**first["config"], "seeds": tuple(r["seed"] for r in runs)}
    if tables:
        missing = set(tables) - set(config["tables"])
        if missing:
            raise ValueError(f"tables {sorted(missing)} were not computed by these runs (they have {config['tables']})")
        config["tables"] = tuple(tables)
    config = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    commands = [c for x in loaded for c in x.get("commands", [])] + [command]
    return write_report(runs, config, first["data"], outdir, commands)
