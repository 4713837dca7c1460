"""The report of a protocol run: report.md, results.json and plots, written atomically.

Per setting (support size K, or the protocol's single setting): the table of every model row ×
metric (mean ± std over seeds), the paired test of LiMAML+FT against the best baseline, the
settings chosen on validation users and how; AUC vs K as a plot; the exact commands.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from limaml_eval import metrics as M
from limaml_eval.markdown import fmt, plot_learning_curves, pvalue, savefig, table
from limaml_eval.models import TARGET
from limaml_eval.stats import mean_std, paired_over_seeds, per_user_tests

PROTOCOL_TEXT = {
    "time": "Global time split (paper §6): train / validation / test periods by timestamp quantiles "
            "{quantiles}. Training tasks: the training period's users, 75/25 support/query by time. Test users: "
            "support = their validation-period ratings, query = their test-period ratings (users without "
            "validation-period ratings are scored un-adapted). Validation (for choosing settings): support = "
            "the user's most recent training-period ratings, query = its validation-period ratings.",
    "few-shot": "Users split at random by seed into train / validation / test users {user_fractions}. Every "
                "user's ratings sorted by time. Validation and test users: support = their first K ratings, "
                "query = the next ≤ {max_query} ratings strictly later than the last support rating; the users "
                "scored are the same at every K (those with a query at the largest K). Training "
                "users: the paper's chronological 75/25 support/query tasks (most recent {max_train_samples} "
                "ratings kept).",
    "user-cold": "As MeLU / RecBole-MetaRec on MovieLens: users with {user_cold_ratings[0]}–{user_cold_ratings[1]} "
                 "ratings, split at random by seed into train / validation / test users {user_fractions}; per user "
                 "(training users too) query = {user_cold_query} random ratings, support = the rest.",
}
FEATURES_TEXT = ("Labels: rating ≥ 4. Every model reads the same features (demographics, history features, movie, "
                 "genres, context); vocabularies and numeric statistics come from the training users only, and the "
                 "ID blocks' vocabulary is the training users, so validation and test users are unseen. In the "
                 "per-user protocols each task's history features are recomputed from its support ratings only: "
                 "a query rating never sees another query rating's label.")


def _rows(runs):
    return runs[0]["rows"]


def _settings(runs):
    return list(runs[0]["test"])


def _metric_table(runs, setting) -> str:
    header = ["model"] + [M.METRIC_NAMES[m] for m in M.METRICS] + ["validation AUC (chosen)"]
    rows = []
    for row in _rows(runs):
        cells = [row] + [fmt(mean_std([r["test"][setting][row][m] for r in runs])) for m in M.METRICS]
        cells.append(fmt(mean_std([r["chosen"][setting][row]["val_auc"] for r in runs])))
        rows.append(cells)
    return table(header, rows)


def candidate_rows(runs) -> list[str]:
    """The rows the paired test compares with the best baseline: LiMAML+FT, or (in a run of `--variant`s
    without it) every "+FT" row that is not a baseline's."""
    rows, baselines = _rows(runs), set(runs[0].get("baseline_rows", ()))
    if TARGET in rows:
        return [TARGET]
    return [r for r in rows if r.endswith("+FT") and r not in baselines]


def chosen_candidate(runs, setting) -> str | None:
    """The candidate row with the highest mean validation AUC over seeds (test users not read)."""
    rows = candidate_rows(runs)
    mean_val = lambda row: np.mean([r["chosen"][setting][row]["val_auc"] for r in runs])  # noqa: E731
    return max(rows, key=mean_val) if rows else None


def _paired_table(runs, setting) -> list[str]:
    targets = candidate_rows(runs)
    if not targets or not runs[0]["best_baseline"].get(setting):
        return [f"No paired test: the run has no {TARGET} (or other non-baseline +FT) row or no baseline."]
    bases = ", ".join(f"seed {r['seed']}: {r['best_baseline'][setting]}" for r in runs)
    out = []
    if len(targets) > 1:
        out += [f"Candidates: {targets}; chosen on the validation users (highest mean validation AUC over "
                f"seeds): **{chosen_candidate(runs, setting)}**. The others are shown for completeness.", ""]
    for target in targets:
        rows = []
        for m in M.METRICS:
            res = paired_over_seeds(runs, setting, m, target)
            rows.append([M.METRIC_NAMES[m], fmt((res["mean"], res["std"]), sign=True), pvalue(res["p"]), res["n"]])
        wilcoxon = ", ".join(f"seed {r['seed']}: {pvalue(p)}"
                             for r, p in zip(runs, per_user_tests(runs, setting, target)))
        out += [f"{target} minus the best baseline of each seed (best by validation AUC: {bases}).", "",
                table(["metric", "mean difference ± std", "t-test p (H0: 0)", "seeds"], rows), "",
                f"Per-user paired test on the test users (Wilcoxon signed-rank, per-user AUC, {target} vs that "
                f"baseline): {wilcoxon}.", ""]
    return out


def _chosen_table(runs, setting) -> str:
    rows = []
    for row in _rows(runs):
        cells = [row]
        for r in runs:
            c = r["chosen"][setting][row]
            ft = "no fine-tune" if not c["steps"] else f"{c['steps']} step(s), lr {c['lr']:g}"
            cells.append(f"epoch {c['epoch']}, {ft} ({c['val_auc']:.4f})")
        rows.append(cells)
    return table(["row"] + [f"seed {r['seed']}: chosen (validation AUC)" for r in runs], rows)


def _how_text(runs, cfg) -> str:
    n = sum(len(r["candidates"]) for r in runs)
    from limaml_eval.tuning import snapshot_epochs

    return (f"How: every model is trained {cfg.epochs} epochs (β = {cfg.learning_rate:g}, {cfg.tasks_per_batch} "
            f"users per batch; meta-learned models: n = {cfg.inner_steps}, α = {cfg.inner_learning_rate:g}); the "
            f"weights after epochs {snapshot_epochs(cfg.epochs, cfg.tune_every)} are candidates. A row without "
            f"fine-tuning picks its epoch; a \"+FT\" row picks epoch × fine-tune steps {list(cfg.ft_steps)} × "
            f"learning rate {list(cfg.ft_learning_rates)} (meta-learned models also their own (n, α)), each "
            "model its own. The pick is the highest pooled AUC on the validation users (ties: fewer epochs, "
            f"steps, smaller rate). {n} candidates were scored over all seeds; every one is in results.json "
            "(`runs[].candidates`). The test users are scored once per seed with the chosen settings.")


def render_report(runs: list[dict], cfg, commands: list[str], plots: list[str]) -> str:
    from limaml_eval.sensitivity import render as render_sensitivity

    params = dataclasses.asdict(cfg)
    out = [f"# LiMAML on MovieLens ({cfg.dataset}): {cfg.protocol} protocol", "", "Produced by:", "", "```",
           *commands, "```", "", "**Protocol.** " + PROTOCOL_TEXT[cfg.protocol].format(**params), "",
           FEATURES_TEXT, "", "**Metrics** (test users):", "", M.__doc__.split("\n\n", 1)[1].strip(), "",
           f"Seeds: {[r['seed'] for r in runs]}; mean ± std (ddof = 1) over seeds. The seed drives the user "
           "split (per-user protocols), initialisation and task shuffling.", "",
           "## Data (per seed)", "", _split_table(runs), ""]
    for setting in _settings(runs):
        out += [f"## Test users, {setting}", "", _metric_table(runs, setting), "",
                f"### Paired test, {setting}", "", *_paired_table(runs, setting),
                f"### Settings chosen on the validation users, {setting}", "", _chosen_table(runs, setting), ""]
    out += ["## How the settings were chosen", "", _how_text(runs, cfg), ""]
    out += render_sensitivity(runs, cfg)
    out += ["## Training time", "", table(["model", "s / epoch"], [[m, fmt(mean_std([r["seconds"][m] for r in runs]),
                                                                             " s", 1)] for m in runs[0]["seconds"]]),
            "", "## Plots", "", *[f"![{os.path.splitext(p)[0]}]({p})" for p in plots], "",
            "Settings: " + ", ".join(f"{k} = {v}" for k, v in params.items() if k not in ("data_path", "seeds")), ""]
    return "\n".join(out)


def _split_table(runs) -> str:
    keys = list(runs[0]["split"])
    return table(["seed"] + keys, [[r["seed"]] + [r["split"].get(k, "") for k in keys] for r in runs])


def plot(runs: list[dict], outdir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    settings = _settings(runs)
    ks = [int(s.split("=")[1]) for s in settings if s.startswith("K=")]
    if len(ks) == len(settings) and len(ks) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, metric in zip(axes, ("auc", "user_auc")):
            for row in _rows(runs):
                s = [mean_std([r["test"][f"K={k}"][row][metric] for r in runs]) for k in ks]
                ax.errorbar(ks, [x[0] for x in s], yerr=[x[1] for x in s], marker="o", capsize=2, label=row,
                            ls="-" if row.endswith("+FT") else ":")
            ax.set_xlabel("support size K (ratings)")
            ax.set_ylabel(f"test {M.METRIC_NAMES[metric]}")
            ax.set_xticks(ks)
        axes[0].legend(fontsize=7, ncol=2)
        fig.suptitle("Test AUC vs support size K (mean ± std over seeds)")
        fig.tight_layout()
        names.append("auc_vs_k.png")
        savefig(fig, os.path.join(outdir, names[-1]))
    names.append(plot_learning_curves(runs, outdir))
    plt.close("all")
    return names


def write_report(runs: list[dict], cfg, outdir: str, commands: list[str]) -> str:
    """report.md + results.json + plots in `outdir`, replaced atomically."""
    from limaml_tf.artifacts import atomic_directory

    with atomic_directory(outdir) as tmp:
        plots = plot(runs, tmp)
        report = render_report(runs, cfg, commands, plots)
        with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as f:
            f.write(report)
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump({"protocol": cfg.protocol, "config": dataclasses.asdict(cfg), "commands": commands,
                       "runs": runs}, f, indent=1, default=_json_default)
    return report


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
