"""The paper's sensitivity tables, measured on the validation users (never the test users).

* Table 10 — dropout (0 / 0.1 / 0.2 / 0.4 / 0.6) after every hidden layer of both blocks;
* Table 12 — the task learning rate α (training and fine-tuning), 0.005 … 10;
* Table 13 — the global learning rate β (Adam), a sweep around the default.

Each value trains one LiMAML model (MLP meta block) with that setting and every other setting at
its default; its LiMAML+FT (n steps of size α on the support) is scored on the validation users
at its best epoch, and reported as the AUC gain over vanilla without fine-tuning on the same
validation users: 100 × (AUC / AUC_vanilla − 1).
"""

from __future__ import annotations

import gc

import keras
from limaml_eval.markdown import fmt, table as md_table
from limaml_eval.stats import mean_std
from limaml_eval.models import build
from limaml_eval.tuning import choose, fit, tune

TABLES = {
    "10": ("dropout", "dropout on every layer", "dropouts"),
    "12": ("inner_learning_rate", "task learning rate α", "task_learning_rates"),
    "13": ("learning_rate", "global learning rate β", "global_learning_rates"),
}
# What DESIGN.md §1 says of the paper's findings; the tables' numbers are in the paper only.
PAPER_NOTES = {
    "10": "Paper's practical setting: no dropout. Per-value numbers: see paper (Table 10).",
    "12": "Paper: α 100–1000× β works best. Per-value numbers: see paper (Table 12).",
    "13": "Paper: tasks per batch 32→128 with linearly scaled β. Per-value numbers: see paper (Table 13).",
}


def _vanilla_validation(cfg, split, seed, run, verbose, log) -> dict:
    """setting -> vanilla (no FT) validation AUC at its chosen epoch (trained here if not in the run)."""
    if "vanilla" in run.get("chosen", {}).get(split.settings[0], {}):
        return {s: run["chosen"][s]["vanilla"]["val_auc"] for s in split.settings}
    keras.utils.set_random_seed(seed)
    model = build("vanilla", split.spec, cfg)
    log(f"[seed {seed}] sensitivity: training the vanilla reference")
    snaps, _ = fit(model, split.train, cfg, seed, verbose)
    chosen = choose(tune(model, snaps, split.validation, {"vanilla": [(0, None)]}, cfg, log=lambda *_: None))
    return {s: chosen[s]["vanilla"]["val_auc"] for s in split.settings}


def _one_value(cfg, split, seed, option, value, verbose) -> dict:
    keras.utils.set_random_seed(seed)
    model = build("limaml", split.spec, cfg, **{option: value})
    snaps, _ = fit(model, split.train, cfg, seed, verbose)
    grid = {"LiMAML+FT": [(model.inner_steps, model.inner_learning_rate)]}
    chosen = choose(tune(model, snaps, split.validation, grid, cfg, log=lambda *_: None))
    out = {s: {"val_auc": chosen[s]["LiMAML+FT"]["val_auc"], "epoch": chosen[s]["LiMAML+FT"]["epoch"]}
           for s in split.settings}
    del model
    gc.collect()
    return out


def run_sensitivity(cfg, split, seed: int, run: dict, verbose: int = 0, log=print) -> dict:
    """{"vanilla": {setting: AUC}, table: {value (str): {setting: {"val_auc", "epoch"}}}} for one seed."""
    out = {"vanilla": _vanilla_validation(cfg, split, seed, run, verbose, log)}
    for table in cfg.sensitivity:
        option, label, values = TABLES[table][0], TABLES[table][1], getattr(cfg, TABLES[table][2])
        out[table] = {}
        for value in values:
            out[table][repr(float(value))] = res = _one_value(cfg, split, seed, option, value, verbose)
            aucs = ", ".join(f"{s} {r['val_auc']:.4f}" for s, r in res.items())
            log(f"[seed {seed}] Table {table}: {label} = {value}: validation AUC (LiMAML+FT) {aucs}")
    return out


def render(runs: list[dict], cfg) -> list[str]:
    """Markdown sections of the sensitivity tables (mean ± std over seeds of the gain vs vanilla)."""
    runs = [r for r in runs if "sensitivity" in r]
    if not runs:
        return []
    settings = list(runs[0]["sensitivity"]["vanilla"])
    out = ["## Sensitivity (validation users)", "", __doc__.split("\n\n", 1)[1].strip(), ""]
    for table in cfg.sensitivity:
        option, label, _ = TABLES[table]
        values = list(runs[0]["sensitivity"][table])
        header = [label] + [f"AUC gain vs vanilla ({s})" for s in settings] + [f"AUC, LiMAML+FT ({settings[0]})", "paper"]
        rows = []
        for value in values:
            cells = [value]
            for s in settings:
                gains = [100 * (r["sensitivity"][table][value][s]["val_auc"] / r["sensitivity"]["vanilla"][s] - 1)
                         for r in runs]
                cells.append(fmt(mean_std(gains), "%", 2, sign=True))
            first = settings[0]
            cells.append(fmt(mean_std([r["sensitivity"][table][value][first]["val_auc"] for r in runs])))
            rows.append(cells + ["see paper"])
        out += [f"### Table {table}: {label} (`{option}`)", "", PAPER_NOTES[table], "", md_table(header, rows), ""]
    return out

