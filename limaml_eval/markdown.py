"""Small Markdown and file helpers shared by the report writers."""

from __future__ import annotations

import os

import numpy as np


def fmt(mean_std, unit: str = "", digits: int = 4, sign: bool = False) -> str:
    """"m ± s" ("n/a" when m is not finite); `sign` adds a leading + to non-negative means."""
    m, s = mean_std
    if not np.isfinite(m):
        return "n/a"
    spread = "" if not np.isfinite(s) else f" ± {s:.{digits}f}"
    return f"{m:{'+' if sign else ''}.{digits}f}{unit}{spread}"


def table(header, rows) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def pvalue(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def savefig(fig, path: str) -> None:
    """Writes a figure atomically (temp file, then rename)."""
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def plot_learning_curves(runs: list[dict], outdir: str) -> str:
    """learning_curves.png: each model's training loss per epoch, mean over seeds; returns the file name."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for m in runs[0]["curves"]:
        curves = np.array([r["curves"][m] for r in runs])
        ax.plot(np.arange(1, curves.shape[1] + 1), curves.mean(0), label=m)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (query loss for meta learning)")
    ax.set_title("Learning curves (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    savefig(fig, os.path.join(outdir, "learning_curves.png"))
    return "learning_curves.png"
