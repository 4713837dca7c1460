"""Throughput of the meta-embedding refresh (tasks/s), Beam vs the adapter called directly, in one run.

Synthetic interactions at MovieLens-1M scale (6,040 tasks, ~165 samples each) and larger task counts;
adapter artifacts with k SGD steps. For each size and k:

  adapter alone   the SavedModel's embed_tasks on ready tensors (the ceiling of this design)
  no Beam         the same work in one process: read Parquet (Arrow), check rows, keep the most recent
                  N per task, pad, convert, call the adapter (time split by stage)
  Beam, W workers the Beam pipeline (FnApiRunner, W worker processes, 1 TF thread each) to Parquet,
                  wall time including worker start-up; its workers' time per stage (Beam counters,
                  summed over workers) and the bytes its shuffle carried

Where the rest goes: "no-op pipeline" = a Create -> Reshuffle -> Map pipeline on the same workers
(process start and runner set-up only); "fixed cost" = the refresh of 200 tasks (start-up, pipeline
construction, adapter load in each worker, commit); "marginal" = extra time per extra task between two
sizes (start-up cancels out). Per core = tasks/s divided by the cores used (1 for adapter / no Beam /
Beam x1, W for Beam xW).
Run:  python -m benchmarks.refresh_throughput --tasks 6040 60400 --steps 1 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


ML1M_SHAPE = {"num_items": 3_700, "mean_samples_per_task": 165.0, "days": 60.0}  # make_synthetic: ML-1M-like tasks


def make_data(num_tasks: int, directory: str, seed: int = 0, files: int = 4):
    from limaml_tf.synthetic import make_synthetic

    df, spec = make_synthetic(num_tasks=num_tasks, seed=seed, **ML1M_SHAPE)
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

    from beam_pipelines.interactions import list_files
    from beam_pipelines.row_checks import check_rows
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


def noop_seconds(workers: int) -> float:
    """Wall time of a pipeline that does nothing on `workers` workers: process start, runner set-up."""
    import apache_beam as beam

    from beam_pipelines.runner import beam_options, run_and_wait

    start = time.perf_counter()
    p = beam.Pipeline(options=beam_options([], workers))
    _ = p | beam.Create(range(4 * workers)) | beam.Reshuffle() | beam.Map(abs)
    run_and_wait(p)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="refresh throughput: Beam vs adapter directly")
    p.add_argument("--tasks", type=int, nargs="+", default=[6040, 60400])
    p.add_argument("--steps", type=int, nargs="+", default=[1])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--max-samples", type=int, default=64)
    p.add_argument("--tasks-per-batch", type=int, default=256)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)  # per-core figures: one TF thread per process
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from beam_pipelines.refresh_embeddings import refresh
    from limaml_tf.training import build_models
    from limaml_tf.export import export_adapter

    work = args.workdir or tempfile.mkdtemp(prefix="refresh-bench-")
    days, as_of = 60.0, 60 * 86_400.0 + 1
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2-core machine shared with others)", flush=True)
    _, warm_spec = make_data(200, os.path.join(work, "data-warmup"))
    warm_adapter = export_adapter(build_models(warm_spec)[0], work, "warmup")
    fixed = {}
    for w in args.workers:  # first-run costs (imports, runner set-up) out of the measurements
        kw = dict(days=days, online_store=None, workers=w, tf_threads=1)
        refresh(os.path.join(work, "data-warmup"), warm_adapter, os.path.join(work, f"out-warmup-{w}"), as_of, **kw)
        fixed[w] = (noop_seconds(w), refresh(os.path.join(work, "data-warmup"), warm_adapter,
                                             os.path.join(work, f"out-fixed-{w}"), as_of, **kw)["pipeline_seconds"])
    results = []
    for n in args.tasks:
        data_dir = os.path.join(work, f"data-{n}")
        _, spec = make_data(n, data_dir)
        model, _ = build_models(spec)
        for k in args.steps:
            adapter = export_adapter(model, work, f"tasks{n}-k{k}", steps=k)
            row = dict(tasks=n, k=k, load=round(os.getloadavg()[0], 2))
            tasks, row["direct"] = direct(adapter, data_dir, as_of, days, args.max_samples, args.tasks_per_batch)
            for w in args.workers:
                try:
                    s = refresh(data_dir, adapter, os.path.join(work, f"out-{n}-k{k}-w{w}"), as_of, days=days,
                                max_samples=args.max_samples, tasks_per_batch=args.tasks_per_batch,
                                online_store=None, workers=w, tf_threads=1)
                except RuntimeError as e:  # the completeness check refused the run's output
                    print(f"{n} tasks, beam x{w} FAILED: {str(e)[:160]}", flush=True)
                    continue
                assert s["adapted"] == tasks, (s["adapted"], tasks)
                row[f"beam x{w}"] = {key: s[key] for key in ("pipeline_seconds", "stage_seconds", "shuffle_bytes",
                                                          "num_buckets")}
            results.append(row)
            print_table(row, args.workers, fixed)
    print_marginal(results, args.workers)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"fixed": fixed, "results": results}, f, indent=1)
    return 0


def print_table(row: dict, workers, fixed: dict) -> None:
    """The issue's table for one size: per-core throughput and its share of the adapter alone."""
    n, d = row["tasks"], row["direct"]
    ceiling = n / d["adapter"]
    lines = [("adapter alone (the ceiling)", d["adapter"], 1),
             ("no Beam: " + ", ".join(f"{s} {v:.1f} s" for s, v in d.items() if s != "adapter")
              + f", adapter {d['adapter']:.1f} s", sum(d.values()), 1)]
    lines += [(f"Beam, {w} worker{'s' * (w > 1)}", row[f"beam x{w}"]["pipeline_seconds"], w)
              for w in workers if f"beam x{w}" in row]
    print(f"\n| {n:,} tasks, k={row['k']} (load {row['load']}) | seconds | tasks/s per core | share of the adapter "
          "alone |\n|---|---|---|---|")
    one = None
    for name, seconds, cores in lines:
        rate = n / seconds / cores
        note = ""
        if name.startswith("Beam"):
            one = one or n / seconds
            note = f" ({n / seconds:,.0f} total = {n / seconds / one:.2f}x one worker)" if cores > 1 else ""
        print(f"| {name} | {seconds:.2f} | {rate:,.0f}{note} | {rate / ceiling:.0%} |")
    for w in workers:
        b = row.get(f"beam x{w}")
        if b:
            st = b["stage_seconds"]
            print(f"  Beam x{w}: wall {b['pipeline_seconds']:.1f} s; in the workers (summed over {w}): "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in st.items())
                  + f" = {sum(st.values()):.1f} s ({sum(st.values()) / w:.1f} s per worker); shuffle "
                  f"{b['shuffle_bytes'] / 2**20:.0f} MiB in {b['num_buckets']} buckets; no-op pipeline "
                  f"{fixed[w][0]:.1f} s, fixed cost (200 tasks) {fixed[w][1]:.1f} s", flush=True)


def print_marginal(results, workers) -> None:
    """Tasks/s between the two smallest sizes (start-up cancels out)."""
    if len(results) < 2:
        return
    a, b = results[:2]
    print(f"\nmarginal (start-up excluded), between {a['tasks']:,} and {b['tasks']:,} tasks:")
    for w in workers:
        key = f"beam x{w}"
        if key in a and key in b and b[key]["pipeline_seconds"] > a[key]["pipeline_seconds"]:
            rate = (b["tasks"] - a["tasks"]) / (b[key]["pipeline_seconds"] - a[key]["pipeline_seconds"])
            print(f"  {key}: {rate:,.0f} tasks/s, {rate / w:,.0f} per core", flush=True)


if __name__ == "__main__":
    sys.exit(main())
