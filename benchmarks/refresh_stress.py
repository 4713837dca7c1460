"""Stress harness for the embedding refresh (issue 11): runs the refresh repeatedly and checks every
output row against the model's own embeddings (Algorithm 2b computed by the Keras model):
0 lost, 0 duplicated, 0 changed rows per run.

The case is built to make a lost row likely:
  * many buckets for the number of tasks, and skewed task sizes (most tasks have a handful of
    samples, a few have hundreds), so buckets are uneven;
  * small input batches (many batch ids per bucket) from files laid out as partitioned logs usually
    are: day=<d>/part-<i>.parquet, the same file names in every directory;
  * bad rows (dead letter), tasks whose samples are all older than the window and serving-only
    tasks (cold start).
Faults (--retry, DaskRunner only): the worker that first runs PackBucket on one bucket kills itself
(once; a marker file remembers it), so the Dask scheduler retries the lost work on the other worker
and recomputes what that worker held. FnApiRunner never retries: a failure ends its run.

Run:  python -m benchmarks.refresh_stress [--runs 20] [--tasks 1500] [--workers 2] [--runner dask --retry]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from beam_pipelines.refresh_stages import PackBucket  # noqa: E402

DAY = 86_400.0
AS_OF, WINDOW_DAYS = 31 * DAY, 20.0
MAX_SAMPLES, TASKS_PER_BATCH, STEPS, LEARNING_RATE = 12, 16, 2, 0.5


def make_case(root: str, tasks: int = 1500, num_buckets: int = 37, seed: int = 0, layout: str = "partitioned") -> dict:
    """Writes the inputs and the adapter of a stress case under `root`; returns what a run needs.
    layout "partitioned": day=<d>/part-<i>.parquet; "flat": part-<d>-<i>.parquet in one directory."""
    import keras

    from limaml_tf.training import build_models
    from limaml_tf.export import export_adapter
    from limaml_tf.synthetic import make_synthetic

    df, spec = make_synthetic(num_tasks=tasks, mean_samples_per_task=12, days=35, seed=seed)
    rng = np.random.default_rng(seed)
    heavy = rng.choice(tasks, max(1, tasks // 50), replace=False)  # a few tasks with hundreds of samples
    extra = df[df.user_id.isin([f"u{i}" for i in heavy])]
    extra = pd.concat([extra.assign(timestamp=extra.timestamp - rng.uniform(0, 5 * DAY, len(extra)))
                       for _ in range(8)])
    df = pd.concat([df, extra], ignore_index=True)
    df["timestamp"] = df["timestamp"].round()
    df = df.drop_duplicates(["user_id", "timestamp"]).reset_index(drop=True)
    df.loc[df.user_id == "u1", "timestamp"] = 1.0  # only old samples: no adapted row (cold start if served)
    spec = spec.fit(df)
    keras.utils.set_random_seed(seed)
    model, _ = build_models(spec, embedding_dim=4)
    for v in model.trainable_variables:  # non-trivial weights without paying for training
        v.assign(rng.normal(0, 0.4, v.shape).astype("float32"))
    adapter = export_adapter(model, root, "stress", steps=STEPS, learning_rate=LEARNING_RATE)

    data = pd.concat([df, df.sample(7, random_state=seed)], ignore_index=True)
    data.loc[len(df):, "activity"] = np.nan  # 7 bad rows: dead letter
    data = data.sample(frac=1.0, random_state=seed)
    day = (data.timestamp // (7 * DAY)).astype(int).clip(lower=0)
    for d, part in data.groupby(day):
        for i in range(2):
            name = f"day={d}/part-{i}.parquet" if layout == "partitioned" else f"flat/part-{d}-{i}.parquet"
            os.makedirs(os.path.dirname(os.path.join(root, "input", name)), exist_ok=True)
            part.iloc[i::2].to_parquet(os.path.join(root, "input", name), index=False)
    serving = pd.DataFrame({"user_id": ["u1", "u2", "new_a", "new_b"], "segment": ["s1", None, "s2", None]})
    serving.to_parquet(os.path.join(root, "serving.parquet"))
    return dict(root=root, input=os.path.join(root, "input", "*", "*.parquet"), adapter=adapter, model=model,
                spec=spec, df=df, serving=serving, num_buckets=num_buckets)


def expected_rows(case: dict) -> dict:
    """{task key: (source, embedding)} from the Keras model itself: adapted rows for tasks with samples
    in the window (their most recent MAX_SAMPLES), cold-start rows for served tasks without."""
    import tensorflow as tf

    from beam_pipelines.adapter_handler import default_features
    from limaml_tf.artifacts import COLD_START_KEY
    from limaml_tf.tasks import paired_tasks

    model, spec, df = case["model"], case["spec"], case["df"]
    window = df[(df.timestamp >= AS_OF - WINDOW_DAYS * DAY) & (df.timestamp < AS_OF)]
    keys = np.sort(window.user_id.unique())
    out = {}
    for start in range(0, len(keys), 512):
        part = window[window.user_id.isin(set(keys[start:start + 512]))]
        a = paired_tasks(part, part, spec, max_support=MAX_SAMPLES, max_query=1).arrays
        last = a["support_mask"].sum(1).astype(int) - 1
        latest = {k: v[np.arange(len(v)), last] for k, v in a["support"].items()}
        enc = model.encode_samples({k: tf.constant(v) for k, v in a["support"].items()}, a["support_mask"].shape)
        emb = model.meta_embeddings(enc, a["support_label"], a["support_mask"], model.encoder(latest), STEPS,
                                    LEARNING_RATE, "latest").numpy()
        out.update((k, ("adapted", e)) for k, e in zip(a["task_key"], emb))
    cold = case["serving"][~case["serving"].user_id.isin(out)]
    cold = pd.concat([cold, pd.DataFrame({"user_id": [COLD_START_KEY]})], ignore_index=True)
    emb = model.embed(model.encoder(default_features(spec, len(cold), cold))).numpy()
    out.update((k, ("cold_start", e)) for k, e in zip(cold.user_id, emb))
    return out


def compare(rows: pd.DataFrame, expected: dict, atol: float = 1e-5) -> dict:
    """Counts of lost (expected, absent), duplicated (extra copies of a key), changed (other embedding or
    source) and unexpected (not expected at all) rows."""
    dup = int(rows.task_key.duplicated().sum())
    got = rows.drop_duplicates("task_key").set_index("task_key")
    common = [k for k in expected if k in got.index]
    want = np.stack([expected[k][1] for k in common]) if common else np.zeros((0, 1))
    have = np.stack(got.loc[common, "embedding"].to_numpy()) if common else np.zeros((0, 1))
    bad = ~np.isclose(have, want, rtol=1e-4, atol=atol).all(axis=1)
    bad |= got.loc[common, "source"].to_numpy() != np.array([expected[k][0] for k in common])
    return {"lost": len(expected) - len(common), "duplicated": dup, "changed": int(bad.sum()),
            "unexpected": int((~got.index.isin(list(expected))).sum())}


def refused_counts(message: str) -> dict:
    """What the completeness check saw in a run it refused (nothing was committed)."""
    missing = re.search(r"\((\d+)\), unexpected", message)
    dup = re.search(r"duplicated \[(.*?)\]", message)
    return {"lost": int(missing.group(1)) if missing else -1, "duplicated": len(dup.group(1).split(",")) if dup
            and dup.group(1) else 0, "changed": -1, "unexpected": -1}


class FlakyPackBucket(PackBucket):
    """PackBucket whose worker process dies the first time it reaches bucket `bucket` (once: the
    `marker` file remembers it), mid-bundle: the runner has to redo the lost work."""

    def __init__(self, *args, marker: str, bucket: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker, self.bucket = marker, bucket

    def process(self, element):
        if element[0] == self.bucket and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(3)
        yield from super().process(element)


@contextlib.contextmanager
def dask_cluster(workers: int, **options):
    """A local Dask cluster of `workers` single-thread processes (`options`: more LocalCluster arguments, e.g.
    memory_limit=0); yields the Beam arguments that run a pipeline on it."""
    import distributed

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env={"PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "2"}, **options) as cluster:
        yield ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]


def run_once(case: dict, out: str, workers: int = 2, beam_args=(), retry_marker: str | None = None) -> dict:
    """One refresh of `case` into `out`; its counts against `expected_rows` (cached in the case)."""
    from unittest import mock

    from beam_pipelines import refresh_embeddings as rx

    if "expected" not in case:
        case["expected"] = expected_rows(case)
    patch = (mock.patch.object(rx, "PackBucket", functools.partial(FlakyPackBucket, marker=retry_marker))
             if retry_marker else contextlib.nullcontext())
    start = time.perf_counter()
    try:
        with patch:
            s = rx.refresh(case["input"], case["adapter"], out, AS_OF, days=WINDOW_DAYS, max_samples=MAX_SAMPLES,
                           tasks_per_batch=TASKS_PER_BATCH, num_buckets=case["num_buckets"],
                           serving_tasks=os.path.join(case["root"], "serving.parquet"), online_store=None,
                           workers=workers, tf_threads=1, beam_args=list(beam_args), batch_rows=500)
    except RuntimeError as e:
        if "incomplete" not in str(e):
            raise
        return {"refused": True, **refused_counts(str(e)), "seconds": round(time.perf_counter() - start, 1),
                "error": str(e)[:300]}
    counts = compare(rx.read_embeddings(s["run_dir"]), case["expected"])
    return {"refused": False, **counts, "dead_letter": s["dead_letter"], "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="refresh stress: repeated runs, every row checked against the model")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--tasks", type=int, default=1500)
    p.add_argument("--buckets", type=int, default=37)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--layout", choices=("partitioned", "flat"), default="partitioned",
                   help="input files: day=<d>/part-<i>.parquet (same names in every directory) or one directory")
    p.add_argument("--runner", choices=("fnapi", "dask"), default="fnapi")
    p.add_argument("--retry", action="store_true", help="kill the worker at one bucket once per run (dask only)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    if args.retry and args.runner != "dask":
        p.error("--retry needs --runner dask (FnApiRunner does not retry failed work)")
    work = args.workdir or tempfile.mkdtemp(prefix="refresh-stress-")
    case = make_case(os.path.join(work, "case"), args.tasks, args.buckets, layout=args.layout)
    failed = 0
    with dask_cluster(args.workers) if args.runner == "dask" else contextlib.nullcontext(()) as beam_args:
        for r in range(args.runs):
            marker = os.path.join(work, f"retried-{r}") if args.retry else None
            res = run_once(case, os.path.join(work, "out"), args.workers, beam_args, marker)
            res["retried"] = bool(marker and os.path.exists(marker))
            bad = res["refused"] or any(res[k] for k in ("lost", "duplicated", "changed", "unexpected"))
            failed += bad
            print(f"run {r + 1:>3}/{args.runs}: " + json.dumps(res), flush=True)
    print(f"{args.runs - failed}/{args.runs} runs with 0 lost, 0 duplicated, 0 changed rows "
          f"({args.runner}, {args.workers} workers, {args.tasks} tasks, {args.buckets} buckets, {args.layout} input"
          f"{', a worker killed once per run' if args.retry else ''})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
