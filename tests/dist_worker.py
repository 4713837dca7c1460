"""Trains a tiny LiMAML (or vanilla) model for a few steps under a tf.distribute strategy and saves
its weights: the process the distributed-equivalence tests run (a strategy's devices must be set
up before TensorFlow starts, hence a fresh process).

    python tests/dist_worker.py --mode single|mirrored|worker --init init.npz --out out.npz

--mode worker reads TF_CONFIG (MultiWorkerMirroredStrategy). With --init absent, the initial
weights are saved there instead (the reference run).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TASKS, BATCH, STEPS = 24, 8, 3


def tiny_tasks():
    """24 small tasks; in the first batch, 3 of the first 4 tasks have no query sample, so the two
    replicas' shares hold 1 and 4 scored tasks (a per-replica normalizer would be wrong)."""
    from limaml_tf import make_synthetic, split_tasks

    df, spec = make_synthetic(num_tasks=TASKS, num_items=40, mean_samples_per_task=14, seed=3)
    spec = spec.fit(df)
    tasks = split_tasks(df, spec, max_samples_per_task=12)
    tasks.arrays["query_mask"][:3] = 0.0
    return spec, tasks


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("single", "mirrored", "worker"), required=True)
    p.add_argument("--models", default="limaml", help="comma-separated: limaml,vanilla")
    p.add_argument("--init", required=True, help="initial weights <init>_<model>.npz (written if absent)")
    p.add_argument("--out", required=True, help="weights after training -> <out>_<model>.npz")
    p.add_argument("--clipnorm", type=float, default=0.05)
    p.add_argument("--dense-exchange-values", type=int, help="distribute.DENSE_EXCHANGE_VALUES (0: every "
                                                              "sparse gradient all-gathered)")
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from limaml_tf import LiMAMLModel, MLPGlobalBlock, MLPMetaBlock, VanillaModel, distribute
    from limaml_tf.training import is_chief, logical_cpus, make_optimizer

    if args.dense_exchange_values is not None:
        distribute.DENSE_EXCHANGE_VALUES = args.dense_exchange_values
    if args.mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy(logical_cpus(2))
    elif args.mode == "worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()

    spec, tasks = tiny_tasks()
    for name in args.models.split(","):
        with strategy.scope():
            cls = LiMAMLModel if name == "limaml" else VanillaModel
            kwargs = {"inner_steps": 1, "inner_learning_rate": 0.5} if name == "limaml" else {}
            model = cls(MLPMetaBlock(spec.meta_features, output_dim=4, hidden_units=(8,)),
                        MLPGlobalBlock(spec.other_features, hidden_units=(16,), embedding_dim=4), spec, **kwargs)
            model.compile(optimizer=make_optimizer(BATCH, base_lr=0.05, clipnorm=args.clipnorm or None,
                                                   warmup_steps=1, decay_steps=STEPS))
        init = f"{args.init}_{name}.npz"
        if os.path.exists(init):
            model.set_weights(list(np.load(init).values()))
        elif is_chief():
            np.savez(init, *model.get_weights())
        history = model.fit(tasks.dataset(BATCH, shuffle=False), epochs=1, steps_per_epoch=STEPS, verbose=0)
        if is_chief():
            np.savez(f"{args.out}_{name}.npz", *model.get_weights(), loss=np.array(history.history["loss"]))


if __name__ == "__main__":
    main()
