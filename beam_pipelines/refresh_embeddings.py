"""Meta-embedding refresh (LiMAML Algorithm 2b) as an Apache Beam pipeline.

  interactions (Parquet / TFRecord) in the window [as_of - days, as_of)
    -> check rows (bad rows -> dead letter, with the reason)
    -> bucket by crc32(task key) -> CoGroupByKey with the serving tasks (every row of a task on one worker;
       on FnApiRunner the rows go through files under the run directory and only their paths through
       the runner, see `shuffle_dir` of `refresh`)
    -> per bucket (refresh_stages.PackBucket): keep each task's most recent N samples, cut the tasks
       (sorted by key) into batches of T tasks; serving tasks with no recent samples -> cold-start batches
    -> RunInference(AdapterModelHandler): the adapter artifact's `embed_tasks` (k SGD steps of the
       meta block + aggregation, all saved in the artifact) or `cold_start`, one padded [T, ...] batch a call
    -> GroupByKey(bucket) -> one Parquet file per bucket (embeddings/part-BBBBB-of-NNNNN.parquet) of
       (task_key, embedding float32[d], model_version, computed_at, source)
    -> committed atomically as runs/<as_of>/ and then published to the Feast online store.

Every file the workers write (embeddings, dead letter, the manifest of task keys for the completeness
check) goes through `beam_pipelines.sinks.WriteShards`: a temp file per attempt, renamed exactly once,
so a retried or duplicated bundle cannot change what is committed. No DoFn writes a final file itself.

The spec and config are read once from the adapter export, here, and passed to the stages. Workers
load only the adapter SavedModel (`beam_pipelines.adapter_handler`): no model code, no Keras.
Runner utilities (options, run-and-wait, bucket count, as-of parsing) are in `beam_pipelines.runner`.

Reproducible: batches are cut deterministically (stable bucket hash, tasks sorted by key, input
batches ordered by id), and computed_at is the --as-of time, not the wall clock: re-running the
same --as-of gives identical rows. A failed run never replaces the last committed run and
publishes nothing, so the previous embeddings stay served.

Several task definitions: run the refresh once per definition's adapter (`export_adapter(...,
definition=d)`; its spec groups by that definition's key column), each into its own --output and the
same --store-dir; the store keys its rows "<definition>=<task key>" (`limaml_tf.artifacts.store_key`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import time

import apache_beam as beam
import pandas as pd
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import StandardOptions

from beam_pipelines.adapter_handler import AdapterModelHandler
from beam_pipelines.interactions import (BATCH_ROWS, STAGE_TIME, check_input_columns, detect_format, list_files,
                                         read_interactions)
from beam_pipelines.refresh_stages import PackBucket, WriteEmbeddings, by_bucket
from beam_pipelines.row_checks import WriteDeadLetter, read_dead_letter
from beam_pipelines.runner import (DAY, auto_buckets, beam_options, parse_as_of, run_and_wait, run_tag,
                                   worker_pythonpath)
from beam_pipelines.shuffle import CheckAndBucket, select, stable_bucket
from beam_pipelines.sinks import WriteShards, remove_temp
from limaml_tf.artifacts import (AGGREGATIONS, COLD_START_KEY, DEAD_LETTER_DIR, EMBEDDINGS_DIR, SUCCESS_FILE,
                                 atomic_directory, read_adapter, read_embeddings, resolve_adapter)
from limaml_tf.spec import FeatureSpec
from limaml_tf.checks import positive_int

MANIFEST_DIR = ".manifest"


def write_lines(texts, f) -> None:
    """The manifest: each input batch's task keys in the window, one a line (sorted, each once)."""
    f.write("".join(t + "\n" for t in sorted(set(texts))).encode())


def serving_parts(serving_tasks: str | None, spec: FeatureSpec, num_buckets: int) -> list:
    """--serving-tasks (Parquet: task key + optional meta features) as (bucket, rows) parts, with the
    model's default row COLD_START_KEY (all features missing: what serving uses for a task never seen)."""
    default = pd.DataFrame({spec.task_key: [COLD_START_KEY]})
    serving = pd.read_parquet(serving_tasks) if serving_tasks else default
    if spec.task_key not in serving.columns:
        raise ValueError(f"--serving-tasks {serving_tasks!r} needs a {spec.task_key!r} column (the task key)")
    serving[spec.task_key] = serving[spec.task_key].astype(str)
    if serving_tasks:
        serving = pd.concat([serving[serving[spec.task_key] != COLD_START_KEY], default], ignore_index=True)
    return [(int(b), part) for b, part in serving.groupby(stable_bucket(serving[spec.task_key], num_buckets))]


def build(p, *, input: str, spec: FeatureSpec, adapter: str, model_version: str, run_dir: str, as_of: float,
          days: float, max_samples: int, tasks_per_batch: int, num_buckets: int, input_format: str | None = None,
          serving_tasks: str | None = None, ignore_columns=(), tf_threads: int | None = None,
          batch_rows: int = BATCH_ROWS, shuffle_dir: str | None = None):
    """Adds the refresh to pipeline `p` (writing under `run_dir`, through `beam_pipelines.sinks` only);
    returns the PCollection of written file paths. `spec` is the adapter's, read once by the caller.
    `shuffle_dir`: the shuffled rows go to files there (`shuffle.spill_part`), not through the runner."""
    computed_at = dt.datetime.fromtimestamp(as_of, dt.timezone.utc)
    checked = (read_interactions(p, input, spec, input_format, batch_rows)
               | "CheckAndBucket" >> beam.ParDo(CheckAndBucket(spec, num_buckets, as_of - days * DAY, as_of,
                                                               ignore_columns, max_samples=max_samples,
                                                               task_keys=True, shuffle_dir=shuffle_dir)))
    dead_paths = (checked | "DeadRows" >> select("dead")
                  | "WriteDeadLetter" >> WriteDeadLetter(os.path.join(run_dir, DEAD_LETTER_DIR)))
    manifest_paths = (checked | "TaskKeys" >> select("tasks") | "OneManifest" >> beam.Map(lambda keys: (0, keys))
                      | "WriteManifest" >> WriteShards(os.path.join(run_dir, MANIFEST_DIR), "tasks", ".txt", 1,
                                                       write_lines))
    grouped_in = {"rows": checked | "Rows" >> select("rows"),
                  "serving": p | "ServingTasks" >> beam.Create(serving_parts(serving_tasks, spec, num_buckets))}
    handler = AdapterModelHandler(adapter, tasks_per_batch, tf_threads)
    written = (grouped_in | "GroupByBucket" >> beam.CoGroupByKey()
               | "PackTasks" >> beam.ParDo(PackBucket(spec, max_samples, tasks_per_batch))
               | "Adapter" >> RunInference(handler)
               | "ByBucket" >> beam.Map(by_bucket)
               | "WriteEmbeddings" >> WriteEmbeddings(os.path.join(run_dir, EMBEDDINGS_DIR), num_buckets,
                                                      model_version, computed_at))
    return (written, dead_paths, manifest_paths) | "AllFiles" >> beam.Flatten()


def summarize(run_dir: str, rows: pd.DataFrame, adapter: str, config: dict, computed_at: dt.datetime,
              days: float, num_buckets: int) -> dict:
    """The run's summary (written as its SUCCESS_FILE) from what it wrote (`rows`: its embeddings)."""
    dead = read_dead_letter(os.path.join(run_dir, DEAD_LETTER_DIR))
    return {
        "as_of": computed_at.isoformat(), "window_days": days, "adapter": adapter,
        "model_version": str(config["model_version"]), "steps": config["steps"],
        "definition": config.get("definition"),  # several task definitions: the one this run embeds
        "aggregation": config["aggregation"], "embedding_dim": config["embedding_dim"],
        "rows": len(rows), "adapted": int((rows["source"] == "adapted").sum()),
        "cold_start": int((rows["source"] == "cold_start").sum()), "dead_letter": len(dead),
        "dead_letter_reasons": dead["reason"].value_counts().to_dict(), "num_buckets": num_buckets,
    }


def shuffle_directory(shuffle_dir: str | None, options, run_dir: str, as_of: float) -> str | None:
    """Where the run's shuffled rows go: None = through the runner's own shuffle ("beam").

    "auto": FnApiRunner, which holds a GroupByKey's whole input in the driver's memory (11.6 GiB at
    604,000 tasks), spills to `run_dir`/.shuffle (local disk, which its worker processes share); other
    runners shuffle themselves. Any other value is a directory every worker can read and write (e.g.
    gs://bucket/tmp): the run uses a subdirectory of its own there, deleted after the run."""
    if shuffle_dir in (None, "", "beam"):
        return None
    if shuffle_dir == "auto":
        runner = options.view_as(StandardOptions).runner
        return os.path.join(run_dir, ".shuffle") if runner == "FnApiRunner" else None
    return FileSystems.join(shuffle_dir, f"{run_tag(as_of)}-{os.urandom(6).hex()}")


def delete_directory(path: str | None) -> None:
    if path and FileSystems.exists(path):
        FileSystems.delete([path])


def refresh(input: str, adapter: str, output: str, as_of, days: float = 30.0, max_samples: int = 64,
            tasks_per_batch: int = 128, aggregation: str | None = None, num_buckets: int = 0,
            input_format: str | None = None, serving_tasks: str | None = None, ignore_columns=(),
            online_store: str | None = "sqlite", store_dir: str | None = None, workers: int = 2,
            tf_threads: int | None = None, beam_args=(), batch_rows: int = BATCH_ROWS,
            shuffle_dir: str | None = "auto") -> dict:
    """Runs the refresh; commits runs/<as_of>/ under `output` atomically, then publishes it to the
    Feast online store (`online_store`: "sqlite", "redis://host:port" or None). Returns the summary.
    `shuffle_dir`: "auto", "beam" or a directory (see `shuffle_directory`)."""
    start = time.perf_counter()
    for flag, value in (("--max-samples", max_samples), ("--tasks-per-batch", tasks_per_batch),
                        ("--workers", workers)):
        positive_int(flag, value)
    if num_buckets:
        positive_int("--num-buckets", num_buckets)
    if not (isinstance(days, (int, float)) and 0 < days < float("inf")):
        raise ValueError(f"--days must be a number of days > 0, got {days!r}: e.g. 30")
    as_of = parse_as_of(as_of)
    adapter = resolve_adapter(adapter, aggregation)
    spec, config = read_adapter(adapter)  # once: the stages get the spec from here
    model_version = str(config["model_version"])
    computed_at = dt.datetime.fromtimestamp(as_of, dt.timezone.utc)
    num_buckets = num_buckets or auto_buckets(input)
    paths = list_files(input)
    if detect_format(paths, input_format) == "parquet":
        check_input_columns(paths, spec)  # a mismatched adapter fails here, not row by row
    run_dir = os.path.join(os.path.abspath(output), "runs", run_tag(as_of))
    worker_pythonpath()
    with atomic_directory(run_dir) as tmp:
        options = beam_options(list(beam_args), workers)
        spill = shuffle_directory(shuffle_dir, options, tmp, as_of)
        p = beam.Pipeline(options=options)
        build(p, input=input, spec=spec, adapter=adapter, model_version=model_version, run_dir=tmp, as_of=as_of,
              days=days, max_samples=max_samples, tasks_per_batch=tasks_per_batch, num_buckets=num_buckets,
              input_format=input_format, serving_tasks=serving_tasks, ignore_columns=ignore_columns,
              tf_threads=tf_threads, batch_rows=batch_rows, shuffle_dir=spill)
        try:
            counters = run_and_wait(p)
        finally:
            delete_directory(spill)
        remove_temp(tmp)
        rows = read_embeddings(tmp)
        summary = summarize(tmp, rows, adapter, config, computed_at, days, num_buckets)
        summary["pipeline_seconds"] = round(time.perf_counter() - start, 3)
        # time each stage spent on its own work in the workers, summed over workers (the rest of the wall
        # time: runner start-up, serialization, shuffles, the driver's steps)
        summary["stage_seconds"] = {k.split("/")[1]: v / 1e6 for k, v in counters.items()
                                    if k.startswith(STAGE_TIME + "/")}
        summary["shuffle_bytes"] = counters.get("rows/shuffle_bytes", 0)
        summary["shuffle"] = "files" if spill else "runner"
        check_complete(rows, os.path.join(tmp, MANIFEST_DIR))
        with open(os.path.join(tmp, SUCCESS_FILE), "w") as f:
            json.dump(summary, f, indent=1)
        shutil.rmtree(os.path.join(tmp, MANIFEST_DIR))
    summary["run_dir"] = run_dir
    if online_store:
        from limaml_tf.feature_store import EmbeddingStore

        store = EmbeddingStore(store_dir or os.path.join(os.path.abspath(output), "feature_store"), online_store)
        summary["published"] = store.publish(run_dir)
        summary["store_dir"] = store.root
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def check_complete(rows: pd.DataFrame, manifest_dir: str) -> None:
    """Every task with rows in the window has exactly one adapted row, or the run fails (and is not
    committed): a runner that loses or repeats work must not publish silently wrong embeddings.
    `manifest_dir` holds the task keys each input batch had in the window, one a line."""
    expected = set()
    for name in os.listdir(manifest_dir):
        with open(os.path.join(manifest_dir, name)) as f:
            expected.update(k for k in f.read().split("\n") if k)
    adapted = rows.loc[rows["source"] == "adapted", "task_key"]
    dup = adapted[adapted.duplicated()]
    missing, extra = expected - set(adapted), set(adapted) - expected
    if len(dup) or missing or extra:
        raise RuntimeError(f"refresh output is incomplete: {len(expected)} tasks in the window, {len(adapted)} "
                           f"adapted rows; missing {sorted(missing)[:5]} ({len(missing)}), unexpected "
                           f"{sorted(extra)[:5]}, duplicated {list(dup[:5])}. Nothing was committed; the previous "
                           "embeddings stay served. Re-run; if it recurs, report the runner and this message")


# -- command line -------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="interaction files: a glob or directory (Parquet or TFRecord)")
    p.add_argument("--input-format", choices=("parquet", "tfrecord"), default=None, help="default: from file names")
    p.add_argument("--adapter", required=True, help="adapter SavedModel, a saved_models/<name>/ directory of versions (the latest "
                        "is used), or a directory of adapters, one per aggregation (see --aggregation)")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default=None,
                   help="select the adapter exported with this aggregation (checked against the artifact)")
    p.add_argument("--output", required=True, help="offline root: runs/<as_of>/ (Parquet) is written here")
    p.add_argument("--as-of", required=True, help="refresh time: ISO-8601 (UTC) or epoch seconds")
    p.add_argument("--days", type=float, default=30.0, help="window of recent interactions (X days before --as-of)")
    p.add_argument("--max-samples", type=int, default=64, help="most recent samples kept per task (N)")
    p.add_argument("--tasks-per-batch", type=int, default=128, help="tasks per adapter call (T, fixed shape)")
    p.add_argument("--num-buckets", type=int, default=0, help="task buckets (0 = from the input size)")
    p.add_argument("--serving-tasks", default=None,
                   help="Parquet of task keys seen in serving (+ optional meta features): those without recent "
                        "samples get the un-adapted (cold-start) embedding")
    p.add_argument("--ignore-columns", default="", help="comma-separated input columns that are not features")
    p.add_argument("--online-store", default="sqlite",
                   help="'sqlite' (embedded, default), 'redis://host:port[/db]', or 'none'")
    p.add_argument("--store-dir", default=None, help="Feast repo / registry dir (default <output>/feature_store)")
    p.add_argument("--workers", type=int, default=2, help="local worker processes (FnApiRunner multi_processing)")
    p.add_argument("--tf-threads", type=int, default=None, help="TensorFlow threads per worker")
    p.add_argument("--shuffle-dir", default="auto",
                   help="where the bucketed rows are shuffled: 'auto' (files under the run directory on FnApiRunner, "
                        "the runner's own shuffle elsewhere), 'beam' (the runner's), or a directory all workers "
                        "share (e.g. gs://bucket/tmp)")


def run_from_args(args, beam_args) -> dict:
    summary = refresh(args.input, args.adapter, args.output, args.as_of, args.days, args.max_samples,
                      args.tasks_per_batch, args.aggregation, args.num_buckets, args.input_format,
                      args.serving_tasks, [c for c in args.ignore_columns.split(",") if c],
                      None if args.online_store == "none" else args.online_store, args.store_dir, args.workers,
                      args.tf_threads, beam_args, shuffle_dir=args.shuffle_dir)
    print(json.dumps(summary, indent=1, default=str))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    run_from_args(args, beam_args)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
