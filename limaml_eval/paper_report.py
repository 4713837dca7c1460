"""Report of the paper's Tables 3, 4, 9 and 14 (`limaml_eval.paper_tables`)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from limaml_tf.artifacts import AGGREGATIONS
from limaml_eval.markdown import fmt, plot_learning_curves, savefig, table
from limaml_eval.stats import mean_std
from limaml_eval.paper import PAPER_T3, PAPER_T9, SLICES, SUPPORT, TABLE3, TABLE4, Config


def _gain(runs, row, sl, base="vanilla"):
    return mean_std([100 * (r["auc"][row][sl] / r["auc"][base][sl] - 1) for r in runs])


def _fmt(mean_std, unit="%", sign=True, digits=2):
    return fmt(mean_std, unit, digits, sign)


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
    absolute = [[sl] + [_fmt(mean_std([r["auc"][m][sl] for r in runs]), "", False, 4) for m in TABLE3]
                for sl in SLICES]
    return ["## Table 3: AUC gain vs vanilla (no fine-tune)", "", table(["slice"] + list(TABLE3), rows), "",
            "Test AUC (absolute):", "", table(["slice"] + list(TABLE3), absolute), ""]


def _table4(runs):
    return ["## Table 4: ID-embedding personalization", "",
            "W&D-ID: wide-and-deep with a learned per-user ID embedding = `IDEmbeddingMetaBlock` (vocabulary: "
            "the training users; unknown users get the shared `base` row) in a `VanillaModel`, i.e. the same "
            "network as LiMAML-ID (global block over item, context, demographics and history features + the "
            "ID embedding) trained by plain gradient descent, so the only difference is meta learning. "
            "LiMAML-ID: that ID block meta-learned; LiMAML-MLP: the MLP meta block over demographics + causal "
            "history (= LiMAML+FT of Table 3). "
            "Paper: LiMAML beats the W&D ID baseline (numbers not in DESIGN.md).", "",
            table(["slice"] + list(TABLE4), [[sl] + [_fmt(_gain(runs, m, sl)) for m in TABLE4] for sl in SLICES]),
            ""]


def _table9(runs, cfg):
    out = ["## Table 9: inner steps n vs training time", "",
            f"Training time per epoch of LiMAML relative to vanilla (same batches and machine, measured in "
            f"the same run; the machine is shared, so times are noisy), and AUC gain with fine-tuning of "
            f"models trained {cfg.table9_epochs or cfg.epochs} epochs.", ""]
    t9 = []
    for n in cfg.table9_steps:
        ratio = mean_std([100 * (r["seconds"][f"n={n}"] / r["seconds"]["vanilla"] - 1) for r in runs])
        t9.append([str(n), _fmt(ratio, "%", True, 0), PAPER_T9.get(n, ""), _fmt(_gain(runs, f"n={n}", "all")),
                   _fmt(mean_std([r["auc"][f"n={n}"]["all"] for r in runs]), "", False, 4)])
    per_epoch = [[m, _fmt(mean_std([r["seconds"][m] for r in runs]), " s", False, 1)] for m in runs[0]["seconds"]]
    return out + [table(["n", "train time vs vanilla", "paper", "AUC gain (all, +FT)", "AUC (all, +FT)"], t9), "",
                  "Seconds per training epoch of every model (the ratios above divide these):", "",
                  table(["model", "s / epoch"], per_epoch), ""]


def _table14(runs):
    return ["## Table 14: aggregation of the served meta embedding", "",
            "LiMAML (n = 1): per user, the meta block is adapted on its validation samples, one meta "
            "embedding is computed (Algorithm 2b) and the global block alone scores the test samples with it. "
            "Paper: \"latest\" is best.", "",
            table(["slice"] + list(AGGREGATIONS),
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
        gains = [_gain(runs, m, sl) for sl in SLICES]
        ax.bar(np.arange(len(SLICES)) + i * width, [g[0] for g in gains], width, yerr=[g[1] for g in gains],
               label=m, capsize=2)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(SLICES)) + 0.4 - width / 2, SLICES)
    ax.set_ylabel("AUC gain vs vanilla (%)")
    ax.set_title("Test AUC gain by slice (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    names.append("auc_gain_by_slice.png")
    savefig(fig, os.path.join(outdir, names[-1]))

    names.append(plot_learning_curves(runs, outdir))
    plt.close("all")
    return names


def write_report(runs: list[dict], cfg: Config, data_summary: dict, outdir: str, commands: list[str]) -> str:
    """report.md + results.json + plots, written atomically to `outdir`."""
    from limaml_tf.artifacts import atomic_directory

    with atomic_directory(outdir) as tmp:
        plots = plot(runs, tmp)
        report = render_report(runs, cfg, data_summary, commands, plots)
        with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as f:
            f.write(report)
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "data": data_summary, "commands": commands, "runs": runs},
                      f, indent=1)
    return report
