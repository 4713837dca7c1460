"""Training with per-epoch snapshots, and the choice of settings on validation users only.

For each trained model the candidates are: every snapshot epoch (the epochs budget) × the
fine-tune settings of each report row — ``name``: no fine-tuning (0 steps); ``name+FT``: every
(steps, learning rate) of the grid, plus, for meta-learned models, their own training (n, α).
Each candidate is scored by pooled AUC on the validation users; the best one (ties: fewer epochs,
then fewer steps, then the smaller rate) is chosen per row and setting. Every candidate is
recorded. The test users are then scored once, with the chosen candidate.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from limaml_tf.evaluation import predict_tasks
from limaml_eval.metrics import pooled_auc, summarize


class Snapshots(keras.callbacks.Callback):
    """Keeps the model's weights after the epochs in `keep` (1-based) and the wall time per epoch."""

    def __init__(self, keep):
        super().__init__()
        self.keep, self.weights, self.times = set(keep), {}, []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)
        if epoch + 1 in self.keep:
            self.weights[epoch + 1] = self.model.get_weights()

    def seconds_per_epoch(self) -> float:
        """Mean wall time per epoch; the first (graph tracing) is left out when there are others."""
        return float(np.mean(self.times[1:] if len(self.times) > 1 else self.times))


def snapshot_epochs(epochs: int, every: int) -> list[int]:
    """The epochs whose weights are candidates: every `every`-th, and always the last."""
    return sorted({e for e in range(every, epochs + 1, max(every, 1))} | {epochs})


def fit(model, train, cfg, seed: int, verbose: int = 0, epochs: int | None = None):
    """Trains on the training tasks; returns (Snapshots, loss per epoch)."""
    epochs = epochs or cfg.epochs
    snaps = Snapshots(snapshot_epochs(epochs, cfg.tune_every))
    history = model.fit(train.dataset(cfg.tasks_per_batch, seed=seed), epochs=epochs, verbose=verbose,
                        callbacks=[snaps])
    return snaps, [float(x) for x in history.history["loss"]]


def fine_tune_grid(variant, cfg, model) -> dict[str, list[tuple[int, float | None]]]:
    """Report row -> candidate (steps, learning rate) pairs."""
    ft = [(int(s), float(lr)) for s in cfg.ft_steps for lr in cfg.ft_learning_rates]
    if variant.meta_learned and (model.inner_steps, model.inner_learning_rate) not in ft:
        ft.append((model.inner_steps, model.inner_learning_rate))  # its own training (n, α)
    return {variant.name: [(0, None)], f"{variant.name}+FT": ft}


def _predict(model, tasks, steps, lr, batch):
    return predict_tasks(model, tasks, steps=steps, learning_rate=lr, tasks_per_batch=batch)


def tune(model, snaps: Snapshots, validation: dict, grid: dict, cfg, log=print) -> list[dict]:
    """Every candidate's validation pooled AUC: [{"row", "setting", "epoch", "steps", "lr", "val_auc"}]."""
    records = []
    for epoch, weights in sorted(snaps.weights.items()):
        model.set_weights(weights)
        for setting, tasks in validation.items():
            for row, candidates in grid.items():
                for steps, lr in candidates:
                    auc = pooled_auc(_predict(model, tasks, steps, lr, cfg.eval_tasks_per_batch))
                    records.append({"row": row, "setting": setting, "epoch": epoch, "steps": steps, "lr": lr,
                                    "val_auc": auc})
        best = max((r["val_auc"] for r in records if r["epoch"] == epoch), default=float("nan"))
        log(f"    epoch {epoch}: best validation AUC over {len(grid)} rows x {len(validation)} settings {best:.4f}")
    return records


def choose(records: list[dict]) -> dict[str, dict[str, dict]]:
    """setting -> row -> the chosen candidate (highest validation AUC; ties: cheapest)."""
    chosen = {}
    for r in records:
        key = (-(r["val_auc"] if np.isfinite(r["val_auc"]) else -np.inf), r["epoch"], r["steps"], r["lr"] or 0.0)
        slot = chosen.setdefault(r["setting"], {})
        if r["row"] not in slot or key < slot[r["row"]][0]:
            slot[r["row"]] = (key, r)
    return {s: {row: dict(v[1]) for row, v in rows.items()} for s, rows in chosen.items()}


def score_test(model, snaps: Snapshots, chosen: dict, test: dict, cfg, rows) -> dict[str, dict[str, dict]]:
    """Scores the test users once per (setting, row) with the chosen candidate: setting -> row -> metrics."""
    out = {}
    for setting, tasks in test.items():
        for row in rows:
            c = chosen[setting][row]
            model.set_weights(snaps.weights[c["epoch"]])
            pred = _predict(model, tasks, c["steps"], c["lr"], cfg.eval_tasks_per_batch)
            out.setdefault(setting, {})[row] = summarize(pred, with_users=True)
    return out

