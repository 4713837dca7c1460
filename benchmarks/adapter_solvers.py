"""The refresh adapter alone (Algorithm 2b, tasks/s): MAML's SGD steps vs the closed-form ridge solve, in one run.

Synthetic tasks shaped like MovieLens-1M's users (benchmarks.refresh_throughput.ML1M_SHAPE), the same MLP meta
block and MLP global block, the global block wrapped in a `FactorizedGlobalBlock` (k = 8) for the ridge adapter
(so it also pays for the item factors). Each adapter's `embed_tasks` runs on the same ready tensors, the
adapters alternating round by round (the machine is shared: the ratio of one run is the figure; absolute
times vary). One TF thread: per-core figures.

Run:  python -m benchmarks.adapter_solvers [--tasks 6040] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def adapters(spec, work: str, factor_dim: int = 8) -> dict[str, str]:
    import limaml_tf as lt
    from limaml_tf.export import export_adapter

    def meta(extra=0):
        return lt.MLPMetaBlock(spec.meta_features, output_dim=8 + extra)

    sgd = lt.LiMAMLModel(meta(), lt.MLPGlobalBlock(spec.other_features), spec)
    ridge = lt.LiMAMLModel(meta(factor_dim), lt.FactorizedGlobalBlock(lt.MLPGlobalBlock(spec.other_features),
                                                                      spec.other_features, factor_dim=factor_dim),
                           spec, inner_solver="ridge")
    out = {f"sgd k={k}": export_adapter(sgd, work, f"sgd{k}", steps=k) for k in (1, 3)}
    out.update({f"ridge {n} Newton step{'s' * (n > 1)}": export_adapter(ridge, work, f"ridge{n}", steps=n)
                for n in (1, 2)})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="refresh adapter: SGD steps vs the closed-form ridge solve")
    p.add_argument("--tasks", type=int, default=6040)
    p.add_argument("--max-samples", type=int, default=64)
    p.add_argument("--tasks-per-batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from benchmarks.refresh_throughput import ML1M_SHAPE
    from limaml_tf.artifacts import EMBED_TASKS, adapter_inputs
    from limaml_tf.synthetic import make_synthetic
    from limaml_tf.tasks import pad_task_count, recent_tasks

    df, spec = make_synthetic(num_tasks=args.tasks, seed=0, **ML1M_SHAPE)
    spec = spec.fit(df)
    tasks = recent_tasks(df, spec, args.max_samples)
    batches = [{k: tf.constant(v) for k, v in adapter_inputs(pad_task_count(
        tasks.subset(slice(s, s + args.tasks_per_batch)).arrays, args.tasks_per_batch)).items()}
        for s in range(0, len(tasks), args.tasks_per_batch)]
    models = {name: tf.saved_model.load(path)  # kept: a loaded endpoint needs its object alive
              for name, path in adapters(spec, tempfile.mkdtemp(prefix="adapter-solvers-")).items()}
    loaded = {name: getattr(m, EMBED_TASKS) for name, m in models.items()}
    seconds = {name: [] for name in loaded}
    for name, fn in loaded.items():
        fn(batches[0])  # warm-up: the first call builds the kernels
    print(f"{len(tasks)} tasks, <= {args.max_samples} recent samples each, {args.tasks_per_batch} per call; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for _ in range(args.rounds):
        for name, fn in loaded.items():
            start = time.perf_counter()
            for b in batches:
                fn(b)["meta_embedding"].numpy()
            seconds[name].append(time.perf_counter() - start)
    base = min(seconds["sgd k=1"])
    print(f"{'adapter':<22} {'tasks/s per core':>17} {'time vs sgd k=1':>16}")
    for name, s in seconds.items():
        print(f"{name:<22} {len(tasks) / min(s):>17,.0f} {min(s) / base:>15.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
