"""Throughput of the meta-embedding refresh (tasks/s), Beam vs the adapter called directly, in one run.

Synthetic interactions at MovieLens-1M scale (6,040 tasks, ~165 samples each) and larger task counts;
adapter artifacts with k = 1 and k = 5 SGD steps. For each size and k:

  adapter only    the SavedModel's embed_tasks on ready tensors (the ceiling of this design)
  direct          the same work in one process without Beam: read Parquet, check rows, keep the
                  most recent N per task, pad, convert, call the adapter (time split by stage)
  beam xW         the Beam pipeline (FnApiRunner, W worker processes, 1 TF thread each) to Parquet,
                  wall time including worker start-up; "marginal" = extra time per extra task
                  between two sizes (start-up cancels out)

Per core = tasks/s divided by the cores used (1 for adapter/direct/beam x1, W for beam xW).
Run:  python -m benchmarks.refresh_throughput [--tasks 6040 60400] [--steps 1 5] [--growth-steps 1] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_data(num_tasks: int, directory: str, seed: int = 0, files: int = 4):
    from limaml_tf.synthetic import make_synthetic

    df, spec = make_synthetic(num_tasks=num_tasks, num_items=3_700, mean_samples_per_task=165.0, days=60.0,
                              seed=seed)
    os.makedirs(directory, exist_ok=True)
    step = -(-len(df) // files)
    for i in range(files):
        df.iloc[i * step:(i + 1) * step].to_parquet(os.path.join(directory, f"part-{i}.parquet"), index=False)
    return df, spec.fit(df)


def direct(adapter_path: str, data_dir: str, as_of: float, days: float, max_samples: int, tasks_per_batch: int):
    """The refresh in one process without Beam: (tasks, seconds per stage, adapter-only seconds)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf

    from beam_pipelines.interactions import check_rows, list_files
    from limaml_tf.artifacts import adapter_inputs, read_adapter
    from limaml_tf.tasks import pad_task_count, recent_tasks

    spec, _ = read_adapter(adapter_path)
    adapter = tf.saved_model.load(adapter_path)
    t = {}
    start = time.perf_counter()
    table = pa.concat_tables([pq.read_table(p) for p in list_files(data_dir)])
    t["read"] = time.perf_counter() - start
    start = time.perf_counter()
    ok, _ = check_rows(table, spec)
    ts = ok.column(spec.timestamp).to_numpy()
    ok = ok.filter(pa.array((ts >= as_of - days * 86_400) & (ts < as_of)))
    t["check"] = time.perf_counter() - start
    start = time.perf_counter()
    tasks = recent_tasks(ok.to_pandas(strings_to_categorical=True), spec, max_samples)
    t["group+pad"] = time.perf_counter() - start
    start = time.perf_counter()
    batches = []
    for s in range(0, len(tasks), tasks_per_batch):
        b = pad_task_count(tasks.subset(slice(s, s + tasks_per_batch)).arrays, tasks_per_batch)
        batches.append({k: tf.constant(v) for k, v in adapter_inputs(b).items()})
    t["to tensors"] = time.perf_counter() - start
    adapter.embed_tasks(batches[0])  # warm-up (first call builds kernels)
    start = time.perf_counter()
    for b in batches:
        adapter.embed_tasks(b)["meta_embedding"].numpy()
    t["adapter"] = time.perf_counter() - start
    return len(tasks), t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="refresh throughput: Beam vs adapter directly")
    p.add_argument("--tasks", type=int, nargs="+", default=[6040, 60400])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--growth-steps", type=int, nargs="+", default=[1], help="k measured beyond the first size")
    p.add_argument("--beam-max-tasks", type=int, default=60400, help="skip Beam above this size (direct only)")
    p.add_argument("--max-samples", type=int, default=64)
    p.add_argument("--tasks-per-batch", type=int, default=256)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)  # per-core figures: one TF thread per process
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from beam_pipelines.refresh_embeddings import refresh
    from limaml_tf.cli.demo import build_models
    from limaml_tf.export import export_adapter

    work = args.workdir or tempfile.mkdtemp(prefix="refresh-bench-")
    days, as_of = 60.0, 60 * 86_400.0 + 1
    results = []
    _, warm_spec = make_data(200, os.path.join(work, "data-warmup"))
    warm_adapter = export_adapter(build_models(warm_spec)[0], os.path.join(work, "adapter-warmup"))
    for w in args.workers:  # first-run costs (imports, runner set-up) out of the measurements
        refresh(os.path.join(work, "data-warmup"), warm_adapter, os.path.join(work, f"out-warmup-{w}"), as_of,
                days=days, online_store=None, workers=w, tf_threads=1)
    print(f"{'tasks':>8} {'k':>2} {'runner':<14} {'seconds':>8} {'tasks/s':>9} {'per core':>9}  notes", flush=True)
    for n in args.tasks:
        data_dir = os.path.join(work, f"data-{n}")
        _, spec = make_data(n, data_dir)
        model, _ = build_models(spec)
        for k in (args.steps if n == args.tasks[0] else args.growth_steps):
            adapter = export_adapter(model, os.path.join(work, f"adapter-{n}-k{k}"), steps=k)

            def report(runner, seconds, cores, note=""):
                row = {"tasks": n, "k": k, "runner": runner, "seconds": round(seconds, 3),
                       "tasks_per_s": round(n / seconds, 1), "per_core": round(n / seconds / cores, 1), "note": note}
                results.append(row)
                print(f"{n:>8} {k:>2} {runner:<14} {seconds:>8.2f} {row['tasks_per_s']:>9.0f} "
                      f"{row['per_core']:>9.0f}  {note}", flush=True)

            tasks, t = direct(adapter, data_dir, as_of, days, args.max_samples, args.tasks_per_batch)
            report("adapter only", t["adapter"], 1)
            report("direct", sum(t.values()), 1, " ".join(f"{s}={v:.2f}s" for s, v in t.items()))
            if n > args.beam_max_tasks:
                continue
            for w in args.workers:
                try:
                    s = refresh(data_dir, adapter, os.path.join(work, f"out-{n}-k{k}-w{w}"), as_of, days=days,
                                max_samples=args.max_samples, tasks_per_batch=args.tasks_per_batch,
                                online_store=None, workers=w, tf_threads=1)
                except RuntimeError as e:  # the completeness check refused the run's output
                    print(f"{n:>8} {k:>2} beam x{w:<9} FAILED: {str(e)[:160]}", flush=True)
                    continue
                assert s["adapted"] == tasks, (s["adapted"], tasks)
                report(f"beam x{w}", s["pipeline_seconds"], w, f"buckets={s['num_buckets']}")
    # marginal cost per task between the two smallest sizes (start-up cancels out)
    sizes = sorted({r["tasks"] for r in results if r["runner"].startswith("beam")})
    if len(sizes) >= 2:
        a, b = sizes[:2]
        print("\nmarginal (start-up excluded), tasks/s between", a, "and", b, "tasks:")
        for r_b in (r for r in results if r["tasks"] == b):
            r_a = next(r for r in results if r["tasks"] == a and r["k"] == r_b["k"] and r["runner"] == r_b["runner"])
            cores = int(r_b["runner"].split("x")[1]) if r_b["runner"].startswith("beam") else 1
            if r_b["seconds"] <= r_a["seconds"]:
                continue
            rate = (b - a) / (r_b["seconds"] - r_a["seconds"])
            print(f"  k={r_b['k']} {r_b['runner']:<14} {rate:>9.0f} tasks/s  {rate / cores:>9.0f} per core")
    print("\nratios (same size, same k): beam / adapter-only throughput")
    for r in results:
        if r["runner"].startswith("beam"):
            ceiling = next(x for x in results if x["tasks"] == r["tasks"] and x["k"] == r["k"]
                           and x["runner"] == "adapter only")
            print(f"  {r['tasks']:>7} k={r['k']} {r['runner']:<8} {r['per_core'] / ceiling['per_core']:.2f} per core,"
                  f" {r['tasks_per_s'] / ceiling['tasks_per_s']:.2f} total")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
