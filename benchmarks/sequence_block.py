"""Training step time of the transformer meta block vs the MLP meta block, measured side by side.

One batch of 32 synthetic tasks (48 support + 16 query samples each, the shapes of ML-100K few-shot
training with --quick), 20 previous interactions per sample; second-order, n = 1. Rows: the MLP
block; the transformer block with a 1,700-item vocabulary (ML-100K's movies: its table adapts per
task too); the same with 64 hashed item ids (a small table); the transformer first-order.
Prints each step time and its ratio to the MLP block's.

    python -m benchmarks sequence_block
"""

from __future__ import annotations

import time

import keras
import tensorflow as tf

import limaml_tf as lt
from limaml_tf.sequences import add_sequences
from limaml_tf.spec import Feature, FeatureSpec

L, TASKS, CAP = 20, 32, 64


def _data(num_items: int):
    df, spec = lt.make_synthetic(num_tasks=TASKS, num_items=num_items, mean_samples_per_task=80, seed=0)
    df = df.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    df = add_sequences(df, "user_id", "timestamp", {"seq_item": "item_id"}, L, label="label",
                       label_name="seq_label", gap_name="seq_gap")
    return df, spec


def _step_time(meta_block_fn, spec, df, repeats: int = 5, **options) -> float:
    keras.utils.set_random_seed(0)
    model = lt.LiMAMLModel(meta_block_fn(spec), lt.MLPGlobalBlock(spec.other_features), spec,
                           inner_learning_rate=0.5, **options)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    bundle = next(lt.split_tasks(df, spec, max_samples_per_task=CAP).batches(TASKS))
    step = tf.function(model.train_step)
    step(bundle)  # trace
    start = time.perf_counter()
    for _ in range(repeats):
        step(bundle)
    return (time.perf_counter() - start) / repeats


def main():
    df, base = _data(1700)
    seq = lambda vocab: (Feature("seq_item", "sequence", **vocab, max_len=L),  # noqa: E731
                         Feature("seq_label", "numeric_sequence", max_len=L),
                         Feature("seq_gap", "numeric_sequence", max_len=L))
    big = FeatureSpec(base.task_key, base.timestamp, base.label,
                      base.meta_features + seq({"vocabulary": tuple(f"i{i}" for i in range(1700))}),
                      base.other_features).fit(df)
    small = FeatureSpec(base.task_key, base.timestamp, base.label, base.meta_features + seq({"num_bins": 64}),
                        base.other_features).fit(df)
    mlp = lambda s: lt.MLPMetaBlock([f for f in s.meta_features if not f.name.startswith("seq_")])  # noqa: E731
    transformer = lambda s: lt.TransformerMetaBlock(s.meta_features)  # noqa: E731
    rows = [("MLP meta block", mlp, big, {}),
            ("transformer, 1,700-item table", transformer, big, {}),
            ("transformer, 64 hashed item ids", transformer, small, {}),
            ("transformer, first order", transformer, big, {"first_order": True})]
    reference = None
    for name, fn, spec, options in rows:
        seconds = _step_time(fn, spec, df, **options)
        reference = reference or seconds
        print(f"{name:34s} {seconds * 1000:8.1f} ms/step  {seconds / reference:5.1f}x the MLP block", flush=True)


if __name__ == "__main__":
    main()
