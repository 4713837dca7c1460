"""Is a difference real? Paired comparisons of LiMAML+FT with the best baseline.

* Over seeds: per seed, the metric of LiMAML+FT minus that of the seed's best baseline (best =
  highest validation pooled AUC among the baseline rows, so the choice never looks at test users);
  mean, sample std and a two-sided one-sample t-test of the differences against 0 (scipy).
* Within a seed: a two-sided Wilcoxon signed-rank test on the per-user AUC of the test users
  (users whose query holds both classes), LiMAML+FT vs the same best baseline.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps


def mean_std(values) -> tuple[float, float]:
    """(mean, sample std with ddof = 1) of the finite values: the one "mean ± std" of every report.
    The std is NaN for a single value (one seed has no spread; the reports then print the mean alone)
    and both are NaN for none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def best_baseline(chosen: dict, baseline_rows) -> str | None:
    """The baseline row with the highest validation AUC (`chosen`: row -> chosen candidate)."""
    rows = [r for r in baseline_rows if r in chosen and np.isfinite(chosen[r]["val_auc"])]
    return max(rows, key=lambda r: chosen[r]["val_auc"]) if rows else None


def wilcoxon_users(per_user_a: dict, per_user_b: dict) -> float:
    """Two-sided Wilcoxon signed-rank p-value on the users both dicts score (NaN if undefined)."""
    users = sorted(set(per_user_a) & set(per_user_b))
    diff = np.array([per_user_a[u] - per_user_b[u] for u in users])
    if len(diff) < 2 or not np.any(diff != 0):
        return float("nan")
    return float(sps.wilcoxon(diff).pvalue)


def paired_over_seeds(runs: list[dict], setting: str, metric: str, target: str) -> dict:
    """{"diffs", "baselines", "mean", "std", "p", "n"} for `target` minus each seed's best baseline."""
    diffs, baselines = [], []
    for run in runs:
        base = run["best_baseline"].get(setting)
        test = run["test"][setting]
        if base is None or target not in test:
            continue
        diffs.append(test[target][metric] - test[base][metric])
        baselines.append(base)
    d = np.array(diffs, dtype=float)
    d = d[np.isfinite(d)]
    mean, std = mean_std(d)
    out = {"diffs": [float(x) for x in diffs], "baselines": baselines, "n": int(len(d)), "mean": mean, "std": std,
           "p": float("nan")}
    if len(d) > 1 and np.any(d != d[0]):  # identical differences: zero variance, no t statistic
        out["p"] = float(sps.ttest_1samp(d, 0.0).pvalue)
    return out


def per_user_tests(runs: list[dict], setting: str, target: str) -> list[float]:
    """Per seed: Wilcoxon p on per-user test AUC, `target` vs the seed's best baseline."""
    out = []
    for run in runs:
        base = run["best_baseline"].get(setting)
        test = run["test"][setting]
        if base is None or target not in test:
            out.append(float("nan"))
            continue
        out.append(wilcoxon_users(test[target].get("per_user_auc", {}), test[base].get("per_user_auc", {})))
    return out
