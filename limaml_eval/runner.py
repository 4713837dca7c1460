"""Runs one protocol over seeds: per seed, train every model on the training users, choose its
settings on the validation users, score the test users once with them; then the report.

    from limaml_eval import Config, run
    run(Config.quick(protocol="few-shot", data_path="../shared/data/ml-100k"), "runs/few-shot")
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os

import keras
import pandas as pd

from limaml_eval.models import BLOCK_OPTIONS, TARGET, build, parse_variant, variants_for
from limaml_eval.protocols import PROTOCOLS, make_split
from limaml_eval.stats import best_baseline
from limaml_eval.tuning import choose, fine_tune_grid, fit, score_test, tune


@dataclasses.dataclass
class Config:
    protocol: str = "few-shot"
    dataset: str = "ml-100k"
    data_path: str | None = None
    seeds: tuple = (0, 1, 2, 3, 4)
    # splits
    support_sizes: tuple = (5, 10, 20)      # few-shot: K, the support ratings of a validation/test user
    user_fractions: tuple = (0.8, 0.1, 0.1)  # train / validation / test users
    max_train_samples: int = 100            # cap per training user (most recent kept)
    # few-shot training tasks: "recent" (the paper's: a user's most recent ratings, 75 % support) or "first-k"
    # (shaped like the evaluation: its first k ratings, k drawn from support_sizes, then the next ones)
    train_episodes: str = "recent"
    train_user_fraction: float = 1.0        # train on this share of the training users (val / test unchanged)
    validation_only: bool = False           # explore: score no test user (results.json + validation.md only)
    max_query: int = 100                    # few-shot: query = the next <= max_query ratings
    user_cold_ratings: tuple = (13, 100)    # user-cold: users with this many ratings (inclusive)
    user_cold_query: int = 10               # user-cold: random query ratings per user
    quantiles: tuple = (0.7, 0.85)          # time: global timestamp quantiles
    time_max_support: int = 128
    time_max_query: int = 256
    # training (the same for every model)
    epochs: int = 10                        # budget; the epoch is chosen on validation per model
    tune_every: int = 1                     # snapshot (candidate) every this many epochs
    tasks_per_batch: int = 32
    eval_tasks_per_batch: int = 64
    learning_rate: float = 2e-3             # β (Adam)
    inner_learning_rate: float = 0.5        # α, task learning rate of the meta-learned models
    inner_steps: int = 1                    # n
    support_dropout: float = 0.0
    eval_steps: int = 1
    meta_dim: int = 8
    meta_hidden: tuple = (32,)
    global_hidden: tuple = (64, 32)
    # fine-tuning grid at evaluation (every model's "+FT" row picks its own on validation)
    ft_steps: tuple = (1, 3, 5)
    ft_learning_rates: tuple = (0.01, 0.05, 0.2, 0.5, 1.0)
    sequence_len: int = 20                  # previous ratings in the sequence features (when a model reads them)
    models: tuple = ("vanilla", "W&D-ID", "MAML", "LiMAML", "LiMAML-ID")
    variants: tuple = ()                    # extra "NAME=KIND[:key=value,...]" (see models.parse_variant)
    # the paper's sensitivity tables on validation users (10: dropout, 12: α, 13: β)
    sensitivity: tuple = ()
    dropouts: tuple = (0.0, 0.1, 0.2, 0.4, 0.6)
    task_learning_rates: tuple = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
    global_learning_rates: tuple = (5e-4, 1e-3, 2e-3, 5e-3, 1e-2)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {PROTOCOLS}")
        if not 0 < self.train_user_fraction <= 1:
            raise ValueError(f"train_user_fraction must be in (0, 1], got {self.train_user_fraction!r}")
        if self.train_episodes not in ("recent", "first-k"):
            raise ValueError(f"train_episodes must be 'recent' or 'first-k', got {self.train_episodes!r}")
        if bad := set(self.sensitivity) - {"10", "12", "13"}:
            raise ValueError(f"unknown sensitivity table(s) {sorted(bad)}; choose from 10, 12, 13")

    @classmethod
    def quick(cls, **overrides) -> "Config":
        """Small settings: few-shot finishes in minutes on 2 cores (one seed)."""
        return cls(**{"seeds": (0,), "epochs": 4, "max_train_samples": 64, "ft_steps": (1, 3),
                      "ft_learning_rates": (0.05, 0.5), "dropouts": (0.0, 0.2, 0.6),
                      "task_learning_rates": (0.05, 0.5, 5.0), "global_learning_rates": (1e-3, 2e-3, 5e-3),
                      **overrides})

    @property
    def variant_list(self):
        return variants_for(self.models, [parse_variant(v) for v in self.variants])

    @property
    def split_sequence_len(self) -> int:
        """`sequence_len` when a model reads the sequence features (meta_block="transformer"), else 0: the
        splits of other runs carry no sequences and stay as they were."""
        return self.sequence_len if any(v.reads_sequences for v in self.variant_list) else 0


def load_frame(cfg: Config) -> pd.DataFrame:
    from limaml_tf.movielens import load_tasks_frame

    genre_tasks = any("definitions" in v.kwargs for v in cfg.variant_list)  # a variant reads user x genre tasks
    return load_tasks_frame(cfg.dataset, cfg.data_path, genre_tasks=genre_tasks)


WARM_START_KIND = {"limaml": "vanilla", "maml": "vanilla", "limaml_id": "wd_id"}


def _warm_start(model, variant, split, cfg: Config, seed: int, epochs: int, verbose: int, log):
    """Trains the variant's blocks as a plain model for `epochs`, then copies them into `model`."""
    if variant.kind not in WARM_START_KIND or not 0 < epochs < cfg.epochs:
        raise ValueError(f"variant {variant.name!r}: warm_start={epochs} needs a meta-learned kind "
                         f"({sorted(WARM_START_KIND)}) and 0 < warm_start < epochs ({cfg.epochs})")
    keras.utils.set_random_seed(seed)
    plain = build(WARM_START_KIND[variant.kind], split.spec, cfg,
                  **{k: v for k, v in variant.kwargs.items() if k in BLOCK_OPTIONS})
    log(f"[seed {seed}]   warm start: {epochs} epochs as {WARM_START_KIND[variant.kind]}")
    fit(plain, split.train, cfg, seed, verbose, epochs=epochs)
    model.meta_block.set_weights(plain.meta_block.get_weights())
    model.global_block.set_weights(plain.global_block.get_weights())


def _train_and_tune(variant, split, cfg: Config, seed: int, verbose: int, log):
    options = variant.kwargs
    warm = int(options.pop("warm_start", 0))
    keras.utils.set_random_seed(seed)
    model = build(variant.kind, split.spec, cfg, **options)
    log(f"[seed {seed}] training {variant.name} ({cfg.epochs} epochs)")
    if warm:  # the same budget: the first `warm` epochs are the plain model's
        _warm_start(model, variant, split, cfg, seed, warm, verbose, log)
    snaps, curve = fit(model, split.train, cfg, seed, verbose, epochs=cfg.epochs - warm)
    log(f"[seed {seed}]   {variant.name}: {snaps.seconds_per_epoch():.1f}s/epoch, final loss {curve[-1]:.4f}")
    grid = fine_tune_grid(variant, cfg, model)
    records = tune(model, snaps, split.validation, grid, cfg, log)
    chosen = choose(records)
    test = ({s: {} for s in split.test} if cfg.validation_only
            else score_test(model, snaps, chosen, split.test, cfg, list(grid)))
    return records, chosen, test, snaps.seconds_per_epoch(), curve


def run_seed(cfg: Config, frame: pd.DataFrame, seed: int, verbose: int = 0, log=print) -> dict:
    """Everything for one seed: split summary, every validation candidate, the chosen settings,
    test metrics (with per-user AUC), the best baseline per setting, times and learning curves."""
    split = make_split(cfg.protocol, frame, seed, cfg)
    log(f"[seed {seed}] split: " + json.dumps(split.summary))
    run = {"seed": seed, "split": split.summary, "candidates": [], "chosen": {s: {} for s in split.settings},
           "test": {s: {} for s in split.settings}, "seconds": {}, "curves": {}, "rows": [], "baseline_rows": []}
    for variant in cfg.variant_list:
        records, chosen, test, seconds, curve = _train_and_tune(variant, split, cfg, seed, verbose, log)
        run["candidates"] += records
        for setting in split.settings:
            run["chosen"][setting].update(chosen[setting])
            run["test"][setting].update(test[setting])
        rows = [variant.name, f"{variant.name}+FT"]
        run["rows"] += rows
        run["baseline_rows"] += rows if variant.baseline else []
        run["seconds"][variant.name], run["curves"][variant.name] = seconds, curve
        gc.collect()
    run["best_baseline"] = {s: best_baseline(run["chosen"][s], run["baseline_rows"]) for s in split.settings}
    for setting in split.settings if run["rows"] and not cfg.validation_only else ():
        scores = ", ".join(f"{r} {run['test'][setting][r]['auc']:.4f}" for r in run["rows"])
        log(f"[seed {seed}] {setting} test AUC: {scores}")
    if cfg.sensitivity:
        from limaml_eval.sensitivity import run_sensitivity

        run["sensitivity"] = run_sensitivity(cfg, split, seed, run, verbose, log)
    return run


def run(cfg: Config, outdir: str, command: str = "limaml reproduce", verbose: int = 0,
        frame: pd.DataFrame | None = None, log=print) -> dict:
    """All seeds of `cfg.protocol`; writes report.md, results.json and plots to `outdir`."""
    from limaml_eval.report import write_report

    frame = load_frame(cfg) if frame is None else frame
    runs = [run_seed(cfg, frame, seed, verbose, log) for seed in cfg.seeds]
    if cfg.validation_only:  # no test user was scored: the validation table of every row, nothing else
        from limaml_eval.candidates import write
        from limaml_tf.artifacts import atomic_directory

        with atomic_directory(outdir) as tmp:
            with open(os.path.join(tmp, "results.json"), "w") as f:
                json.dump({"protocol": cfg.protocol, "config": dataclasses.asdict(cfg), "commands": [command],
                           "runs": runs}, f, indent=1)
        log(f"[report] {write([outdir], outdir, command)} (validation users only)")
        return {"runs": runs, "report": None, "target": TARGET}
    report = write_report(runs, cfg, outdir, [command])
    log(f"[report] {os.path.join(outdir, 'report.md')}")
    return {"runs": runs, "report": report, "target": TARGET}


def merge(result_dirs: list[str], outdir: str, command: str) -> str:
    """One report from runs of the same protocol and settings made separately (e.g. one per seed)."""
    from limaml_eval.report import write_report

    loaded = []
    for d in result_dirs:
        with open(os.path.join(d, "results.json")) as f:
            loaded.append(json.load(f))
    strip = lambda c: {k: v for k, v in c.items() if k != "seeds"}  # noqa: E731
    for other, d in zip(loaded[1:], result_dirs[1:]):
        if strip(other["config"]) != strip(loaded[0]["config"]):
            raise ValueError(f"{d}: its settings differ from {result_dirs[0]}; only runs with the same "
                             "settings can be merged")
    runs = sorted((r for x in loaded for r in x["runs"]), key=lambda r: r["seed"])
    if len({r["seed"] for r in runs}) != len(runs):
        raise ValueError(f"seeds {[r['seed'] for r in runs]}: a seed appears in several runs")
    config = {**loaded[0]["config"], "seeds": [r["seed"] for r in runs]}
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    commands = [c for x in loaded for c in x.get("commands", [])] + [command]
    return write_report(runs, cfg, outdir, commands)
