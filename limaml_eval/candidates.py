"""Choosing among model variants on validation users: one table from runs that trained different
variants on the same protocol and seeds (e.g. a sweep split over several processes).

For every report row the value is the validation pooled AUC of its chosen candidate (epoch and
fine-tune setting picked on the validation users, `tuning.choose`), per seed; the gain is against the
same seed's best baseline row on validation (`stats.best_baseline`). No test user is read, so the
table can choose a default without touching the test split.

    limaml reproduce --compare runs/cand/few-shot/*/seed* --out docs/protocols_ml100k/candidates/few-shot
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np

from limaml_tf.artifacts import atomic_write_text
from limaml_eval.markdown import fmt
from limaml_eval.stats import best_baseline, mean_std


def load_runs(result_dirs) -> tuple[dict, list[dict]]:
    """(config of the first run, every run of every directory); the runs must share protocol and data."""
    configs, runs = [], []
    for d in result_dirs:
        with open(os.path.join(d, "results.json")) as f:
            loaded = json.load(f)
        configs.append(loaded["config"])
        runs += loaded["runs"]
    keys = ("protocol", "dataset", "support_sizes", "user_fractions", "max_train_samples", "epochs")
    for d, c in zip(result_dirs, configs):
        if any(c.get(k) != configs[0].get(k) for k in keys):
            raise ValueError(f"{d}: protocol or budget differs from {result_dirs[0]} ({', '.join(keys)} must match)")
    return configs[0], runs


def validation_scores(runs: list[dict]) -> dict:
    """setting -> row -> seed -> (validation AUC of the row, that seed's best baseline validation AUC)."""
    by_seed = defaultdict(lambda: defaultdict(dict))  # setting -> seed -> row -> chosen
    baselines = defaultdict(set)
    for run in runs:
        baselines[run["seed"]].update(run["baseline_rows"])
        for setting, rows in run["chosen"].items():
            by_seed[setting][run["seed"]].update(rows)
    out = defaultdict(lambda: defaultdict(dict))
    for setting, seeds in by_seed.items():
        for seed, chosen in seeds.items():
            base = best_baseline(chosen, sorted(baselines[seed]))
            reference = chosen[base]["val_auc"] if base else float("nan")
            for row, c in chosen.items():
                out[setting][row][seed] = (c["val_auc"], reference)
    return out


def render(result_dirs, command: str = "") -> str:
    config, runs = load_runs(result_dirs)
    lines = [f"# Variants on the validation users: {config['protocol']} ({config.get('dataset', '?')})", ""]
    if command:
        lines += ["Produced by:", "", "```", command, "```", ""]
    lines += ["Validation pooled AUC of each row's chosen candidate (epoch and fine-tune setting chosen on the "
              "validation users), mean ± std over seeds; gain = row minus the same seed's best baseline row "
              "on validation. Test users are not read.", ""]
    for setting, rows in validation_scores(runs).items():
        seeds = sorted({s for r in rows.values() for s in r})
        lines += [f"## {setting} (seeds {seeds})", "",
                  "| row | validation AUC | gain vs best baseline | seeds above |", "|---|---|---|---|"]
        table = []
        for row, per_seed in rows.items():
            auc = np.array([v[0] for v in per_seed.values()])
            gain = np.array([v[0] - v[1] for v in per_seed.values()])
            table.append((auc.mean(), f"| {row} | {fmt(mean_std(auc))} | {fmt(mean_std(gain), sign=True)} | "
                                      f"{int((gain > 0).sum())}/{len(gain)} |"))
        lines += [t[1] for t in sorted(table, key=lambda t: -t[0])] + [""]
    return "\n".join(lines)


def write(result_dirs, outdir: str, command: str = "") -> str:
    path = os.path.join(outdir, "validation.md")
    os.makedirs(outdir, exist_ok=True)
    atomic_write_text(path, render(result_dirs, command))
    return path
