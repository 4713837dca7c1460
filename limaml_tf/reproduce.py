"""`limaml reproduce`: the paper's Tables 3, 4, 9 and 14 on MovieLens, over several seeds.

Protocol (paper §6): train / validation / test split by global timestamp quantiles; models
are trained on the training period (tasks = users, 75/25 support/query by time); at
evaluation each test user is adapted on its validation-period samples ("fine-tune"
variants) and scored on its test-period samples. Reported: AUC gain relative to vanilla
without fine-tuning, overall, by test samples per user (< 25, >= 25), and on users never
seen in training. Writes report.md, results.json and PNG plots to the output directory.
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

from limaml_tf.blocks import IDEmbeddingMetaBlock, MLPGlobalBlock, MLPMetaBlock
from limaml_tf.evaluation import auc_by_slice, predict_tasks
from limaml_tf.export import atomic_directory
from limaml_tf.model import AGGREGATIONS, LiMAMLModel, VanillaModel
from limaml_tf.movielens import load_tasks_frame, mlp_meta_features, movielens_spec
from limaml_tf.tasks import paired_tasks, split_tasks, time_split

SLICES = ("all", "<25", ">=25", "unseen")
TABLE3 = ("vanilla", "vanilla+FT", "MAML", "MAML+FT", "LiMAML", "LiMAML+FT")
TABLE4 = ("W&D-ID", "W&D-ID+FT", "LiMAML-ID+FT", "LiMAML-MLP+FT")
# The paper's numbers (pTap, DESIGN.md §1): AUC gain vs vanilla, all tasks.
PAPER_T3 = {"vanilla": "0 (baseline)", "vanilla+FT": "+0.75%", "MAML": "< 0", "MAML+FT": "+1.68%",
            "LiMAML": "< 0", "LiMAML+FT": "+1.47%"}
PAPER_T9 = {1: "+105%", 5: "+221%"}
SUPPORT = {"validation": "validation-period", "history": "pre-test (training + validation periods)"}


@dataclasses.dataclass
class Config:
    dataset: str = "ml-100k"
    data_path: str | None = None
    quantiles: tuple = (0.7, 0.85)
    max_train_samples: int = 100      # cap per user in training (most recent kept)
    max_support: int = 128            # validation samples per user used to fine-tune
    max_query: int = 256              # test samples per user scored
    epochs: int = 6
    tasks_per_batch: int = 32
    learning_rate: float = 2e-3       # β (Adam)
    inner_learning_rate: float = 0.5  # α: task learning rate, ~250x β
    inner_steps: int = 1              # n
    support_dropout: float = 0.0      # fraction of training tasks trained without adaptation (cold start)
    warm_start_epochs: int = 0        # >0: MAML / LiMAML start from the seed's trained vanilla weights, then
                                      # meta-train this many epochs (the global block first learns from every sample)
    eval_steps: int = 1               # fine-tune steps at evaluation
    meta_dim: int = 8
    meta_hidden: tuple = (32,)
    global_hidden: tuple = (64, 32)
    table9_steps: tuple = (1, 2, 3, 4, 5)
    table9_epochs: int | None = 3     # Table 9 models' epochs (default: `epochs`); time is compared per epoch
    seeds: tuple = (0, 1, 2)
    tables: tuple = ("3", "4", "9", "14")
    tuning: bool = False              # evaluate inside the training period only (for choosing settings)
    # fine-tune on: "validation" (paper §6) or "history" (every pre-test sample: train + validation periods)
    support_period: str = "validation"

    @classmethod
    def quick(cls, **overrides) -> "Config":
        return cls(**{"epochs": 4, "max_train_samples": 64, "max_support": 64, "max_query": 128,
                      "table9_steps": (1, 3), "table9_epochs": 2, "seeds": (0, 1), **overrides})


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
    from limaml_tf.features import FeatureSpec
    return FeatureSpec("task", "timestamp", "label", (), ())


def build(kind: str, spec, cfg: Config, inner_steps: int | None = None):
    """kind: vanilla | maml (entire network) | limaml | wd_id (vanilla + ID meta block) | limaml_id."""
    if kind in ("wd_id", "limaml_id"):
        meta = IDEmbeddingMetaBlock(spec.feature("user_id"), output_dim=cfg.meta_dim)
    else:
        meta = MLPMetaBlock(mlp_meta_features(spec), output_dim=cfg.meta_dim, hidden_units=cfg.meta_hidden)
    # The global block also reads the meta features (DESIGN §1 allows it): users with no recent
    # samples (most test users of a global time split) are then scored from the same population-level
    # features as in the vanilla model, and the meta embedding carries the per-user adaptation.
    glob = MLPGlobalBlock(spec.other_features + mlp_meta_features(spec), hidden_units=cfg.global_hidden)
    common = dict(eval_steps=cfg.eval_steps, eval_learning_rate=cfg.inner_learning_rate)
    if kind in ("vanilla", "wd_id"):
        model = VanillaModel(meta, glob, spec, name=kind, **common)
    else:
        model = LiMAMLModel(meta, glob, spec, inner_steps=inner_steps or cfg.inner_steps,
                            inner_learning_rate=cfg.inner_learning_rate, adapt_global_block=kind == "maml",
                            support_dropout=cfg.support_dropout,
                            name=kind, **common)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate, global_clipnorm=1.0))
    return model


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
                                    steps, cfg.inner_learning_rate, aggregation)
        mask = bundle["query_mask"] > 0
        t_, q_ = mask.shape
        flat = {k: tf.reshape(v, tf.concat([[-1], tf.shape(v)[2:]], 0)) for k, v in enc["query"].items()}
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


# -- report -------------------------------------------------------------------
def _stats(values):
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return (float(v.mean()), float(v.std())) if len(v) else (float("nan"), float("nan"))


def _gain(runs, row, sl, base="vanilla"):
    return _stats([100 * (r["auc"][row][sl] / r["auc"][base][sl] - 1) for r in runs])


def _fmt(mean_std, unit="%", sign=True, digits=2):
    m, s = mean_std
    if not np.isfinite(m):
        return "n/a"
    return f"{m:{'+' if sign else ''}.{digits}f}{unit} ± {s:.{digits}f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_report(runs: list[dict], cfg: Config, data_summary: dict, commands: list[str], plots: list[str]) -> str:
    n_seeds = len(runs)
    out = [f"# LiMAML on MovieLens ({cfg.dataset}): the paper's Tables 3, 4, 9, 14",
           "", "Produced by:", "", "```", *commands, "```", "",
           f"Seeds: {[r['seed'] for r in runs]} (mean ± std over {n_seeds} seeds; the seed drives initialisation "
           "and task shuffling, the time split is fixed).", "",
           "Data: " + ", ".join(f"{k} = {v:.3f}" if isinstance(v, float) else f"{k} = {v}"
                                 for k, v in data_summary.items()), "",
           "Settings: " + ", ".join(f"{k} = {v}" for k, v in dataclasses.asdict(cfg).items()
                                     if k not in ("data_path", "seeds")), "",
           "AUC gain = 100 × (AUC / AUC of vanilla without fine-tuning − 1), per seed, then mean ± std. "
           "Slices: test samples per user < 25 / ≥ 25; `unseen` = test users with no training-period sample. "
           f"\"+FT\" = each test user adapted ({cfg.eval_steps} SGD step(s), α) on its {SUPPORT[cfg.support_period]} "
           "samples before scoring; users with none are scored un-adapted.", ""]
    if "3" in cfg.tables:
        out += _table3(runs)
    if "4" in cfg.tables:
        out += _table4(runs)
    if "9" in cfg.tables:
        out += _table9(runs, cfg)
    if "14" in cfg.tables:
        out += _table14(runs)
    out += ["## Plots", ""] + [f"![{os.path.splitext(p)[0]}]({p})" for p in plots] + [""]
    return "\n".join(out)


def _table3(runs):
    rows = [[sl] + [_fmt(_gain(runs, m, sl)) for m in TABLE3] for sl in SLICES]
    rows.append(["paper (pTap, all)"] + [PAPER_T3[m] for m in TABLE3])
    absolute = [[sl] + [_fmt(_stats([r["auc"][m][sl] for r in runs]), "", False, 4) for m in TABLE3]
                for sl in SLICES]
    return ["## Table 3: AUC gain vs vanilla (no fine-tune)", "", _table(["slice"] + list(TABLE3), rows), "",
            "Test AUC (absolute):", "", _table(["slice"] + list(TABLE3), absolute), ""]


def _table4(runs):
    return ["## Table 4: ID-embedding personalization", "",
            "W&D-ID: wide-and-deep with a learned per-user ID embedding = `IDEmbeddingMetaBlock` (vocabulary: "
            "the training users; unknown users get the shared `base` row) in a `VanillaModel`, i.e. the same "
            "network as LiMAML-ID (global block over item, context, demographics and history features + the "
            "ID embedding) trained by plain gradient descent, so the only difference is meta learning. "
            "LiMAML-ID: that ID block meta-learned; LiMAML-MLP: the MLP meta block over demographics + causal "
            "history (= LiMAML+FT of Table 3). "
            "Paper: LiMAML beats the W&D ID baseline (numbers not in DESIGN.md).", "",
            _table(["slice"] + list(TABLE4), [[sl] + [_fmt(_gain(runs, m, sl)) for m in TABLE4] for sl in SLICES]),
            ""]


def _table9(runs, cfg):
    out = ["## Table 9: inner steps n vs training time", "",
            f"Training time per epoch of LiMAML relative to vanilla (same batches and machine, measured in "
            f"the same run; the machine is shared, so times are noisy), and AUC gain with fine-tuning of "
            f"models trained {cfg.table9_epochs or cfg.epochs} epochs.", ""]
    t9 = []
    for n in cfg.table9_steps:
        ratio = _stats([100 * (r["seconds"][f"n={n}"] / r["seconds"]["vanilla"] - 1) for r in runs])
        t9.append([str(n), _fmt(ratio, "%", True, 0), PAPER_T9.get(n, ""), _fmt(_gain(runs, f"n={n}", "all")),
                   _fmt(_stats([r["auc"][f"n={n}"]["all"] for r in runs]), "", False, 4)])
    per_epoch = [[m, _fmt(_stats([r["seconds"][m] for r in runs]), " s", False, 1)] for m in runs[0]["seconds"]]
    return out + [_table(["n", "train time vs vanilla", "paper", "AUC gain (all, +FT)", "AUC (all, +FT)"], t9), "",
                  "Seconds per training epoch of every model (the ratios above divide these):", "",
                  _table(["model", "s / epoch"], per_epoch), ""]


def _table14(runs):
    return ["## Table 14: aggregation of the served meta embedding", "",
            "LiMAML (n = 1): per user, the meta block is adapted on its validation samples, one meta "
            "embedding is computed (Algorithm 2b) and the global block alone scores the test samples with it. "
            "Paper: \"latest\" is best.", "",
            _table(["slice"] + list(AGGREGATIONS),
                   [[sl] + [_fmt(_gain(runs, f"agg:{a}", sl)) for a in AGGREGATIONS] for sl in SLICES]), ""]


def plot(runs: list[dict], outdir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    models = [m for m in TABLE3[1:] + ("W&D-ID+FT", "LiMAML-ID+FT") if m in runs[0]["auc"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        stats = [_gain(runs, m, sl) for sl in SLICES]
        ax.bar(np.arange(len(SLICES)) + i * width, [s[0] for s in stats], width, yerr=[s[1] for s in stats],
               label=m, capsize=2)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(SLICES)) + 0.4 - width / 2, SLICES)
    ax.set_ylabel("AUC gain vs vanilla (%)")
    ax.set_title("Test AUC gain by slice (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    names.append("auc_gain_by_slice.png")
    _savefig(fig, os.path.join(outdir, names[-1]))

    fig, ax = plt.subplots(figsize=(7, 4))
    for m in runs[0]["curves"]:
        curves = np.array([r["curves"][m] for r in runs])
        ax.plot(np.arange(1, curves.shape[1] + 1), curves.mean(0), label=m)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (query loss for meta learning)")
    ax.set_title("Learning curves (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    names.append("learning_curves.png")
    _savefig(fig, os.path.join(outdir, names[-1]))
    plt.close("all")
    return names


def _savefig(fig, path):
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def write_report(runs: list[dict], cfg: Config, data_summary: dict, outdir: str, commands: list[str]) -> str:
    """report.md + results.json + plots, written atomically to `outdir`."""
    with atomic_directory(outdir) as tmp:
        plots = plot(runs, tmp)
        report = render_report(runs, cfg, data_summary, commands, plots)
        with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as f:
            f.write(report)
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "data": data_summary, "commands": commands, "runs": runs},
                      f, indent=1)
    return report


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


def add_parser(sub):
    p = sub.add_parser("reproduce", help="the paper's Tables 3, 4, 9, 14 on MovieLens (Markdown report + plots)")
    p.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"])
    p.add_argument("--data-path", default=None,
                   help="directory of the unzipped official archive (default: download it, if the network allows)")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--quick", action="store_true", help="small settings that finish in minutes on 2 cores")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--epochs", type=int)
    p.add_argument("--inner-learning-rate", type=float, help="α")
    p.add_argument("--learning-rate", type=float, help="β (Adam)")
    p.add_argument("--tasks-per-batch", type=int)
    p.add_argument("--warm-start-epochs", type=int,
                   help="MAML/LiMAML start from the trained vanilla weights, then meta-train this many epochs")
    p.add_argument("--support-dropout", type=float,
                   help="fraction of training tasks trained without adaptation (cold-start path)")
    p.add_argument("--table9-epochs", type=int, help="epochs of the Table 9 models (time is compared per epoch)")
    p.add_argument("--support-period", choices=["validation", "history"],
                   help="what fine-tuning adapts on: the validation period (paper) or all pre-test samples")
    p.add_argument("--tables", nargs="+", choices=["3", "4", "9", "14"], help="tables to run (default: all)")
    p.add_argument("--tuning", action="store_true",
                   help="score inside the training period only (never touches the test period): choose settings")
    p.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity (2: a line per epoch, 0: per model)")
    p.add_argument("--merge", nargs="+", metavar="DIR",
                   help="no training: one report from the results.json of runs made separately (e.g. per seed)")

    def run(a):
        import sys
        command = "limaml " + " ".join(sys.argv[1:])
        if a.merge:
            merge(a.merge, a.out, command, tuple(a.tables) if a.tables else None)
            print(f"[report] {os.path.join(a.out, 'report.md')}")
            return 0
        overrides = {k: v for k, v in {"dataset": a.dataset, "data_path": a.data_path, "tuning": a.tuning,
                                       "seeds": tuple(a.seeds) if a.seeds else None, "epochs": a.epochs,
                                       "inner_learning_rate": a.inner_learning_rate,
                                       "learning_rate": a.learning_rate,
                                       "tasks_per_batch": a.tasks_per_batch, "table9_epochs": a.table9_epochs,
                                       "support_period": a.support_period, "support_dropout": a.support_dropout,
                                       "warm_start_epochs": a.warm_start_epochs,
                                       "tables": tuple(a.tables) if a.tables else None}.items() if v is not None}
        cfg = Config.quick(**overrides) if a.quick else Config(**overrides)
        reproduce(cfg, a.out, command=command, verbose=a.verbose)
        return 0

    p.set_defaults(func=run)
