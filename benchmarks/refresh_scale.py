"""The refresh at scale: ML-1M-shaped input x 10 and x 100 on disk, end to end on 2 cores, with the peak
memory (RSS) of the driver and of every worker process.

The input is one ML-1M-shaped chunk (6,040 tasks, ~1 M interactions, `limaml_tf.synthetic`) written to
F Parquet files, file i with its task keys prefixed "c<i>-": generated one file at a time, never whole
in memory. Each size runs the refresh (`beam_pipelines.refresh_embeddings.refresh`, k = 1, 1 TF thread
per worker) on Beam's FnApiRunner with 2 worker processes, or on a local Dask cluster of 2 worker
processes (`--runner dask`), while a thread polls the RSS of this process and of every process under it
(psutil, every 0.2 s). Reported: seconds, time per task, the peak RSS of each process and the peak of
their sum, and how the time per task grows from the smallest size to the largest (target: flat within 20 %).

Run:  python -m benchmarks.refresh_scale --tasks 60400 604000 [--workers 1] [--runner dask] [--shuffle-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CHUNK_TASKS = 6040  # ML-1M's users


def write_input(work: str, files: int, seed: int = 0) -> int:
    """`files` Parquet files of one ML-1M-shaped chunk each under `work`/input (task keys prefixed by the
    file number; files already there are kept) and an adapter (k = 1) for them under `work`/scale_adapter/;
    returns the rows of a chunk. Run in a child process, so the driver measured holds neither the
    generated data nor Keras."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from benchmarks.refresh_throughput import ML1M_SHAPE
    from limaml_tf.training import build_models
    from limaml_tf.export import export_adapter
    from limaml_tf.synthetic import make_synthetic

    df, spec = make_synthetic(num_tasks=CHUNK_TASKS, seed=seed, **ML1M_SHAPE)
    spec = spec.fit(df)
    chunk = pa.Table.from_pandas(df, preserve_index=False)
    directory = os.path.join(work, "input")
    os.makedirs(directory, exist_ok=True)
    key = chunk.schema.get_field_index(spec.task_key)
    for i in range(files):
        path = os.path.join(directory, f"part-{i:05d}.parquet")
        if not os.path.exists(path):
            keys = pc.utf8_replace_slice(chunk.column(key), 0, 0, f"c{i}-")
            pq.write_table(chunk.set_column(key, spec.task_key, keys), path + ".tmp")
            os.rename(path + ".tmp", path)
    if not os.path.exists(os.path.join(work, "scale_adapter")):
        export_adapter(build_models(spec)[0], work, "scale", steps=1)
    return chunk.num_rows


class RssPoller(threading.Thread):
    """Polls the memory of this process and of every process under it: each one's peak RSS, the peak of
    the RSS summed over them, and the peak of the PSS summed over them (RSS counts the pages of shared
    libraries, e.g. TensorFlow's, once per process; PSS splits them: the sum is the real total)."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        import psutil

        self.root, self.interval, self.stop = psutil.Process(), interval, threading.Event()
        self.peak, self.names, self.peak_total, self.peak_pss = {}, {}, 0, 0

    def run(self):
        import psutil

        while not self.stop.is_set():
            total = pss = 0
            for proc in [self.root] + self.root.children(recursive=True):
                try:
                    mem = proc.memory_full_info()
                    if proc.pid not in self.names:
                        self.names[proc.pid] = "driver" if proc is self.root else kind(proc.cmdline())
                except psutil.Error:  # ended between the listing and the read
                    continue
                total, pss = total + mem.rss, pss + mem.pss
                self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), mem.rss)
            self.peak_total, self.peak_pss = max(self.peak_total, total), max(self.peak_pss, pss)
            time.sleep(self.interval)

    def report(self) -> dict:
        self.stop.set()
        self.join()
        gib = 2 ** 30
        return {"peak_total_gib": round(self.peak_total / gib, 2), "peak_pss_gib": round(self.peak_pss / gib, 2),
                "peak_gib": {f"{self.names[p]} {p}": round(r / gib, 2) for p, r in sorted(self.peak.items())
                             if r > 50 * 2 ** 20}}  # processes that held real data (not shells, nannies)


def kind(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    for needle, name in (("sdk_worker_main", "beam worker"), ("distributed", "dask"), ("multiprocessing", "dask")):
        if needle in text:
            return name
    return os.path.basename(cmdline[0]) if cmdline else "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="refresh at scale: time per task and peak memory per process")
    p.add_argument("--tasks", type=int, nargs="+", default=[6040, 60400],
                   help=f"task counts (multiples of {CHUNK_TASKS}); the issue's sizes: 60400 604000")
    p.add_argument("--runner", choices=("fnapi", "dask"), default="fnapi")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-samples", type=int, default=64)
    p.add_argument("--tasks-per-batch", type=int, default=256)
    p.add_argument("--shuffle-dir", default="auto", help="the refresh's --shuffle-dir: auto (files on FnApiRunner, "
                                                         "the runner's shuffle on Dask), beam, or a directory")
    p.add_argument("--workdir", default=None, help="keeps the generated input between runs")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    work = args.workdir or tempfile.mkdtemp(prefix="refresh-scale-")
    files = [n // CHUNK_TASKS for n in args.tasks]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        chunk_rows = pool.submit(write_input, work, max(files)).result()
    adapter = os.path.join(work, "scale_adapter")  # resolve_adapter runs its latest version

    from beam_pipelines.refresh_embeddings import refresh
    from beam_pipelines.runner import worker_pythonpath
    from benchmarks.refresh_stress import dask_cluster

    worker_pythonpath()
    days, as_of = 60.0, 60 * 86_400.0 + 1
    results = []
    print(f"load average at start: {os.getloadavg()[0]:.2f}; runner {args.runner}, {args.workers} workers", flush=True)
    for n, f in zip(args.tasks, files):
        data = os.path.join(work, f"input-{n}")  # the first f files, linked
        os.makedirs(data, exist_ok=True)
        for i in range(f):
            link = os.path.join(data, f"part-{i:05d}.parquet")
            if not os.path.exists(link):
                os.symlink(os.path.join(work, "input", f"part-{i:05d}.parquet"), link)
        poller = RssPoller()
        poller.start()
        cluster = dask_cluster(args.workers, memory_limit=0) if args.runner == "dask" else contextlib.nullcontext([])
        with cluster as beam_args:
            start, s, refused = time.perf_counter(), {}, None
            try:
                s = refresh(data, adapter, os.path.join(work, f"out-{args.runner}-{n}"), as_of, days=days,
                            max_samples=args.max_samples, tasks_per_batch=args.tasks_per_batch, online_store=None,
                            workers=args.workers, tf_threads=1, beam_args=beam_args, shuffle_dir=args.shuffle_dir)
                assert s["adapted"] == n, (s["adapted"], n)
            except RuntimeError as e:  # the completeness check refused the run's output
                refused = str(e)[:300]
            seconds = time.perf_counter() - start
        memory = poller.report()
        row = {"tasks": n, "rows": f * chunk_rows, "seconds": round(seconds, 1), "refused": refused,
               "ms_per_task": round(1e3 * seconds / n, 3), "num_buckets": s.get("num_buckets"),
               "shuffle_mib": round(s.get("shuffle_bytes", 0) / 2 ** 20), "shuffle": s.get("shuffle"),
               "stage_seconds": s.get("stage_seconds"),
               "load": round(os.getloadavg()[0], 2), **memory}
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n| tasks ({args.runner}, {args.workers} workers) | input rows | seconds | ms per task | peak RSS sum "
          "(PSS sum) | peak RSS per process |\n|---|---|---|---|---|---|")
    for r in results:
        per = ", ".join(f"{k.split()[0]} {v:.2f}" for k, v in r["peak_gib"].items())
        print(f"| {r['tasks']:,} | {r['rows']:,} | {r['seconds']:.0f}{' REFUSED' * bool(r['refused'])} | "
              f"{r['ms_per_task']:.3f} | {r['peak_total_gib']:.2f} GiB ({r['peak_pss_gib']:.2f}) | {per} (GiB) |")
    if len(results) > 1:
        growth = results[-1]["ms_per_task"] / results[0]["ms_per_task"]
        print(f"time per task at {results[-1]['tasks']:,} / at {results[0]['tasks']:,}: {growth:.2f}x "
              f"(target <= 1.20); peak total {max(r['peak_total_gib'] for r in results):.2f} GiB (target <= 4)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
