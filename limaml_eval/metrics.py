"""Metrics of every protocol, from a prediction frame (`limaml_tf.evaluation.predict_tasks`):
columns task_key (the user), label (0/1), probability.

* **pooled AUC** — ROC AUC over every query rating of every scored user (sklearn `roc_auc_score`).
* **user AUC** — the mean over users of the ROC AUC within the user's query, over the users whose
  query holds both classes (the others have no AUC and are left out; their count is reported).
* **nDCG@k** — within each user's query, the ratings ranked by predicted probability with the
  binary label (rating >= 4) as the relevance: sklearn `ndcg_score(k=k)` (DCG = Σ rel_i / log2(i + 1)
  over the top k, divided by the ideal DCG; tied scores are averaged over their orderings), then the
  mean over the users whose query has at least one positive and at least two ratings (a user whose
  query is all positive scores 1 under any ranking; one with no positive has no nDCG).
"""

from __future__ import annotations

import pandas as pd
from sklearn.metrics import ndcg_score, roc_auc_score

NDCG_KS = (5, 10)
METRICS = ("auc", "user_auc", "ndcg@5", "ndcg@10")
METRIC_NAMES = {"auc": "AUC (pooled)", "user_auc": "user AUC", "ndcg@5": "nDCG@5", "ndcg@10": "nDCG@10"}


def pooled_auc(pred: pd.DataFrame) -> float:
    """ROC AUC over all rows (NaN when the rows hold a single class)."""
    if pred.empty or pred["label"].nunique() < 2:
        return float("nan")
    return float(roc_auc_score(pred["label"], pred["probability"]))


def per_user_auc(pred: pd.DataFrame) -> pd.Series:
    """AUC within each user's query, for the users whose query holds both classes (index: user)."""
    out = {}
    for user, rows in pred.groupby("task_key", sort=True):
        if rows["label"].nunique() == 2:
            out[user] = float(roc_auc_score(rows["label"], rows["probability"]))
    return pd.Series(out, dtype=float)


def per_user_ndcg(pred: pd.DataFrame, k: int) -> pd.Series:
    """nDCG@k within each user's query (binary relevance), for users with >= 1 positive and >= 2 ratings."""
    out = {}
    for user, rows in pred.groupby("task_key", sort=True):
        if len(rows) >= 2 and rows["label"].sum() > 0:
            out[user] = float(ndcg_score(rows["label"].to_numpy()[None, :], rows["probability"].to_numpy()[None, :],
                                         k=k))
    return pd.Series(out, dtype=float)


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else float("nan")


def summarize(pred: pd.DataFrame, with_users: bool = False) -> dict:
    """{"auc", "user_auc", "ndcg@5", "ndcg@10", and the user counts behind them}; with `with_users`,
    also "per_user_auc": {user: AUC} (for paired per-user tests)."""
    users = per_user_auc(pred)
    out = {"auc": pooled_auc(pred), "user_auc": _mean(users), "users": int(pred["task_key"].nunique()),
           "users_with_auc": int(len(users))}
    for k in NDCG_KS:
        ndcg = per_user_ndcg(pred, k)
        out[f"ndcg@{k}"] = _mean(ndcg)
        out["users_with_ndcg"] = int(len(ndcg))
    if with_users:
        out["per_user_auc"] = {str(u): v for u, v in users.items()}
    return out
