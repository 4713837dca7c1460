"""The map of scripts/ml1m_map.sh on validation users: for each share of the training users and each K, the
best LiMAML candidate's validation AUC minus the best baseline's (mean ± std over seeds), as a table and a plot.

    python scripts/ml1m_map_report.py runs/ml1m-map --out docs/quality_ml1m
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np

from limaml_eval.candidates import load_runs, validation_scores
from limaml_eval.markdown import fmt, savefig, table
from limaml_eval.stats import mean_std


def gaps(result_dirs) -> dict:
    """setting -> {"best": row, "gap": [per seed], "rows": {row: [per seed gap]}} over the non-baseline rows."""
    _, runs = load_runs(result_dirs)
    baseline_rows = {r for run in runs for r in run["baseline_rows"]}
    out = {}
    for setting, rows in validation_scores(runs).items():
        candidates = {row: [v - ref for v, ref in per_seed.values()] for row, per_seed in rows.items()
                      if row not in baseline_rows}
        best = max(candidates, key=lambda r: np.mean(candidates[r]))
        out[setting] = {"best": best, "gap": candidates[best], "rows": candidates}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    shares = sorted(d for d in os.listdir(args.root) if d.startswith("f"))
    by_share = {s: gaps(sorted(glob.glob(os.path.join(args.root, s, "seed*")))) for s in shares}
    settings = sorted({k for g in by_share.values() for k in g}, key=lambda k: int(k.split("=")[1]))
    rows = []
    for s, g in by_share.items():
        for k in settings:
            if k in g:
                rows.append([f"{float(s[1:]):.0%}", k, g[k]["best"],
                             fmt(mean_std(100 * np.array(g[k]["gap"])), " pts", 2, True), len(g[k]["gap"])])
    lines = ["# Where it pays on ML-1M: the map (validation users)", "",
             "Few-shot, training tasks shaped like the evaluation (`--train-episodes first-k`), one training per "
             "(share of training users, seed), scored at every K. Gap = the best LiMAML candidate's validation "
             "pooled AUC minus the same seed's best baseline's (both chosen on validation users), in AUC points; "
             "the best candidate is the one with the highest mean gap. Produced by `scripts/ml1m_map.sh` and "
             "`python scripts/ml1m_map_report.py runs/ml1m-map --out docs/quality_ml1m`.", "",
             table(["training users", "K", "best LiMAML candidate", "gap vs best baseline", "seeds"], rows), "",
             "![map](map.png)", ""]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "map.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for s, g in by_share.items():
        ks = [int(k.split("=")[1]) for k in settings if k in g]
        stats = [mean_std(100 * np.array(g[f"K={k}"]["gap"])) for k in ks]
        ax.errorbar(ks, [m for m, _ in stats], yerr=[0 if not np.isfinite(e) else e for _, e in stats],
                    marker="o", capsize=3, label=f"{float(s[1:]):.0%} of the training users")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks([5, 10, 20, 50], ["5", "10", "20", "50"])
    ax.set_xlabel("support size K")
    ax.set_ylabel("best LiMAML − best baseline (AUC pts)")
    ax.set_title("ML-1M few-shot, validation users")
    ax.legend(fontsize=7)
    fig.tight_layout()
    savefig(fig, os.path.join(args.out, "map.png"))
    print(f"[report] {os.path.join(args.out, 'map.md')}")


if __name__ == "__main__":
    main()
