"""Scoring task sets and AUC by slice (paper §6 protocol)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from limaml_tf.tasks import TaskSet


def predict_tasks(model, tasks: TaskSet, steps: int | None = None, learning_rate: float | None = None,
                  tasks_per_batch: int = 64, progress: bool = False) -> pd.DataFrame:
    """Per query sample: task_key, label, probability, and the task's number of query samples.

    Each task is adapted with `steps` SGD steps on its support set first (0: no fine-tuning).
    """
    rows = []
    batches = tasks.batches(tasks_per_batch)
    total = -(-len(tasks) // tasks_per_batch)
    for bundle in tqdm(batches, total=total, disable=not progress, desc="scoring tasks", leave=False):
        probs = model.adapt_and_predict(bundle, steps, learning_rate)
        mask = bundle["query_mask"] > 0
        t, q = np.nonzero(mask)
        rows.append(pd.DataFrame({
            "task_key": bundle["task_key"][t], "label": bundle["query_label"][t, q],
            "probability": probs[t, q], "task_query_count": mask.sum(1)[t],
            "task_support_count": (bundle["support_mask"] > 0).sum(1)[t]}))
    return pd.concat(rows, ignore_index=True)


def auc(frame: pd.DataFrame) -> float:
    """ROC AUC over samples (NaN when the slice has a single class)."""
    if frame.empty or frame["label"].nunique() < 2:
        return float("nan")
    return float(roc_auc_score(frame["label"], frame["probability"]))


def auc_by_slice(pred: pd.DataFrame, threshold: int = 25, unseen_keys=None) -> dict[str, float]:
    """AUC overall, by test samples per task (< threshold, >= threshold), and on unseen tasks."""
    out = {
        "all": auc(pred),
        f"<{threshold}": auc(pred[pred["task_query_count"] < threshold]),
        f">={threshold}": auc(pred[pred["task_query_count"] >= threshold]),
    }
    if unseen_keys is not None:
        out["unseen"] = auc(pred[pred["task_key"].isin(set(unseen_keys))])
    return out


def auc_table(results: dict[str, dict], baseline: str | None = None) -> str:
    """`results` ({label: auc_by_slice(...)}) as a text table; with `baseline`, the relative AUC gain."""
    slices = [k for k in next(iter(results.values()))]
    lines = [f"{'model':<20}" + "".join(f"{s:>8}" for s in ("AUC" if s == "all" else s for s in slices))
             + (f"{'gain vs ' + baseline:>{max(18, len(baseline) + 10)}}" if baseline else "")]
    for label, r in results.items():
        row = f"{label:<20}" + "".join(f"{r[s]:>8.4f}" for s in slices)
        if baseline:
            row += f"{100 * (r['all'] / results[baseline]['all'] - 1):>+{max(18, len(baseline) + 10) - 1}.2f}%"
        lines.append(row)
    return "\n".join(lines)
