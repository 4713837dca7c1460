"""Small Markdown and file helpers shared by the report writers."""

from __future__ import annotations

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
    import os

    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
