"""Step time of LiMAML with an ID meta block as the table grows from 10k to 1M ids (issue 9, defect 3).

    python -m benchmarks.id_table_scaling [--ids 10000 100000 1000000] [--repeats 30]

One training step (encode, inner loop, outer gradient, optimizer update) on one fixed batch of 32
tasks, for each table size, interleaved per repeat so machine load hits every size alike. The table's
gradient is a `tf.IndexedSlices` of the batch's rows (never a dense [ids, d] tensor), so the gradient
and an SGD / Adagrad-style sparse update cost the same at any size. Keras 3's Adam keeps dense
moments and updates them in full each step (it has no lazy mode), so its step grows with the table:
both are printed, as ratios to the 10k-id step of the same optimizer.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _model_and_batch(num_ids: int, optimizer: str):
    import keras
    import tensorflow as tf

    import limaml_tf as lt

    df, spec = lt.make_synthetic(num_tasks=64, mean_samples_per_task=40, seed=0)
    # the vocabulary holds the 64 real users plus filler ids up to `num_ids`
    keys = tuple(sorted(df[spec.task_key].unique())) + tuple(f"x{i}" for i in range(num_ids - 64))
    user = lt.Feature("user_key", "categorical", vocabulary=keys)
    spec = lt.FeatureSpec(spec.task_key, spec.timestamp, spec.label, spec.meta_features + (user,),
                          spec.other_features).fit(df.assign(user_key=df[spec.task_key]))
    df = df.assign(user_key=df[spec.task_key])
    keras.utils.set_random_seed(0)
    model = lt.LiMAMLModel(lt.IDEmbeddingMetaBlock(user, output_dim=16),
                           lt.MLPGlobalBlock(spec.other_features), spec, inner_learning_rate=0.5)
    model.compile(optimizer=keras.optimizers.get(optimizer))
    model.optimizer.build(model.trainable_variables)
    bundle = next(iter(lt.split_tasks(df, spec, max_samples_per_task=32).dataset(32, shuffle=False)))
    step = tf.function(model.train_step)
    step(bundle)  # trace
    return step, bundle


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--optimizers", nargs="+", default=["sgd", "adam"])
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    steps = {(o, n): _model_and_batch(n, o) for o in args.optimizers for n in args.ids}
    times = {k: [] for k in steps}
    for _ in range(args.repeats):
        for k, (step, bundle) in steps.items():
            start = time.perf_counter()
            step(bundle)
            times[k].append(time.perf_counter() - start)
    print("| optimizer | ids | median step (ms) | vs smallest table |")
    print("|---|---|---|---|")
    for o in args.optimizers:
        base = np.median(times[o, args.ids[0]])
        for n in args.ids:
            t = np.median(times[o, n])
            print(f"| {o} | {n:,} | {1000 * t:.1f} | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
