"""Meta-embedding refresh (LiMAML Algorithm 2b) as an Apache Beam pipeline.

  interactions (Parquet / TFRecord) in the window [as_of - days, as_of)
    -> check rows (bad rows -> dead letter, with the reason)
    -> bucket by crc32(task key) -> GroupByKey (every row of a task on one worker)
    -> per bucket: keep each task's most recent N samples, cut the tasks (sorted by key) into
       fixed-shape batches [T tasks, N samples], run the adapter artifact's `embed_tasks`
       (k SGD steps of the meta block per task + aggregation, all saved in the artifact)
    -> the last partial batch of every bucket goes to one "tail" stage, which also embeds the
       cold-start tasks (listed in --serving-tasks, no recent samples) with `cold_start`
    -> Parquet rows (task_key, embedding float32[d], model_version, computed_at)
    -> committed atomically as runs/<as_of>/ and then published to the Feast online store.

Workers load only the adapter SavedModel (`tf.saved_model.load`, once per worker process via
`apache_beam.utils.shared.Shared`): no model code, no Keras objects. Every batch has the same
shape, so the loaded function runs one graph for the whole job.

Reproducible: batches are cut deterministically (stable bucket hash, tasks sorted by key, input
batches ordered by id), and computed_at is the --as-of time, not the wall clock: re-running the
same --as-of gives identical rows. A failed run never replaces the last committed run and
publishes nothing, so the previous embeddings stay served.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import shutil
import sys
import time

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils import shared

from beam_pipelines.interactions import (CheckAndBucket, WriteDeadLetter, compact, concat_sorted, expand,
                                         read_dead_letter, read_interactions, select, stable_bucket)
from limaml_tf.export import CONFIG_FILE, SPEC_FILE, adapter_inputs, atomic_directory, read_extra
from limaml_tf.features import FeatureSpec
from limaml_tf.tasks import TaskSet, _pad_sets, keep_most_recent, pad_task_count

log = logging.getLogger(__name__)
DAY = 86_400.0
AGGREGATIONS = ("latest", "mean", "max", "cosine")
RUNNERS = {  # names users type -> what we run (never the Prism-first default DirectRunner)
    "DirectRunner": "FnApiRunner",
    "DaskRunner": "apache_beam.runners.dask.dask_runner.DaskRunner",
}


# -- the adapter artifact -------------------------------------------------------

def adapter_metadata(path: str) -> tuple[FeatureSpec, dict]:
    """(feature spec, config) saved beside an adapter by `limaml_tf.export.export_adapter`."""
    return FeatureSpec.from_json(read_extra(path, SPEC_FILE)), json.loads(read_extra(path, CONFIG_FILE))


def _is_saved_model(path: str) -> bool:
    return os.path.exists(os.path.join(path, "saved_model.pb"))


def resolve_adapter(path: str, aggregation: str | None = None) -> str:
    """The adapter to run: `path` itself, or the one adapter under `path` exported with `aggregation`.

    Aggregation (latest / mean / max / cosine) is fixed when the adapter is exported; export one per
    setting (e.g. adapters/latest, adapters/mean) and pick one here."""
    if aggregation is not None and aggregation not in AGGREGATIONS:
        raise ValueError(f"--aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if _is_saved_model(path):
        candidates = [path]
    elif os.path.isdir(path):
        candidates = sorted(os.path.join(path, d) for d in os.listdir(path) if _is_saved_model(os.path.join(path, d)))
    else:
        raise FileNotFoundError(f"adapter {path!r} does not exist: export one with limaml_tf.export.export_adapter")
    found = {c: adapter_metadata(c)[1]["aggregation"] for c in candidates}
    match = [c for c, a in found.items() if aggregation in (None, a)]
    if len(match) != 1:
        have = {os.path.basename(c): a for c, a in found.items()} or "no adapters"
        raise ValueError(f"--adapter {path!r}: need exactly one adapter with aggregation={aggregation!r}, found "
                         f"{have}. Export one per setting with export_adapter(..., aggregation=...) or pass "
                         "--aggregation to pick one")
    return match[0]


def _load_adapter(path: str, tf_threads: int | None):
    import tensorflow as tf

    if tf_threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
            tf.config.threading.set_inter_op_parallelism_threads(tf_threads)
        except RuntimeError:  # TF already initialized in this process (in-process runners, tests)
            pass

    class Holder:  # Shared needs a weak-referenceable object
        pass

    holder = Holder()
    holder.model = tf.saved_model.load(path)
    return holder


_ADAPTERS = shared.Shared()


def default_features(spec: FeatureSpec, n: int, given: pd.DataFrame | None = None) -> dict:
    """Raw features for `cold_start`: given values where present, else numeric = the training mean
    (encodes to 0) and categorical = "" (the missing id)."""
    df = pd.DataFrame(index=range(n)) if given is None else given.reset_index(drop=True)
    for f in spec.features:
        default = f.mean if f.kind == "numeric" else ""
        df[f.name] = df[f.name].fillna(default) if f.name in df.columns else default
    return spec.raw_arrays(df)


def embeddings_table(keys, embeddings: np.ndarray, model_version: str, computed_at: dt.datetime,
                     kind: str) -> pa.Table:
    embeddings = np.ascontiguousarray(embeddings, np.float32)
    n, d = embeddings.shape
    values = pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)),
                                      pa.array(embeddings.ravel()))
    return pa.table({
        "task_key": pa.array([str(k) for k in keys], pa.string()),
        "embedding": values,
        "model_version": pa.array([model_version] * n, pa.string()),
        "computed_at": pa.array([computed_at] * n, pa.timestamp("us", tz="UTC")),
        "source": pa.array([kind] * n, pa.string()),  # "adapted" | "cold_start"
    })


class _EmbedBase(beam.DoFn):
    def __init__(self, adapter: str, out_dir: str, computed_at: dt.datetime, max_samples: int,
                 tasks_per_batch: int, tf_threads: int | None = None):
        self.adapter_path, self.out_dir, self.computed_at = adapter, out_dir, computed_at
        self.max_samples, self.tasks_per_batch, self.tf_threads = max_samples, tasks_per_batch, tf_threads

    def setup(self):
        self.spec, config = adapter_metadata(self.adapter_path)
        self.model_version = str(config["model_version"])
        self._holder = _ADAPTERS.acquire(lambda: _load_adapter(self.adapter_path, self.tf_threads),
                                         tag=self.adapter_path)  # keep the holder: Shared holds it weakly
        self.adapter = self._holder.model

    def adapted(self, rows: pd.DataFrame, keys: np.ndarray) -> np.ndarray:
        """Embeddings [len(keys), d] of tasks (rows sorted by task, time; keys in that order)."""
        tasks = _pad_sets(self.spec, keys, {"support": rows}, {"support": self.max_samples})
        out = []
        for start in range(0, len(tasks), self.tasks_per_batch):
            bundle = pad_task_count(tasks.subset(slice(start, start + self.tasks_per_batch)).arrays,
                                    self.tasks_per_batch)
            out.append(self.adapter.embed_tasks(adapter_inputs(bundle))["meta_embedding"].numpy())
        beam.metrics.Metrics.counter("embeddings", "adapted").inc(len(keys))
        return np.concatenate(out)[:len(keys)]

    def cold(self, serving: pd.DataFrame) -> np.ndarray:
        """Un-adapted embeddings (adapter `cold_start`) for tasks with no recent samples."""
        out = []
        for start in range(0, len(serving), self.tasks_per_batch):
            part = serving.iloc[start:start + self.tasks_per_batch]
            feats = {k: pad_task_count({"x": v}, self.tasks_per_batch)["x"]
                     for k, v in default_features(self.spec, len(part), part).items()}
            out.append(self.adapter.cold_start(feats)["meta_embedding"].numpy()[:len(part)])
        beam.metrics.Metrics.counter("embeddings", "cold_start").inc(len(serving))
        return np.concatenate(out)

    def write(self, name: str, tables: list[pa.Table]) -> str:
        path = FileSystems.join(self.out_dir, f"part-{name}.parquet")
        with FileSystems.create(path) as f:
            pq.write_table(pa.concat_tables(tables), f)
        return path


class EmbedBucket(_EmbedBase):
    """(bucket, {"rows": [(batch id, rows)], "serving": [serving-task rows]}) -> written Parquet path;
    the bucket's last partial batch and its cold-start tasks go on to the tail stage."""

    def process(self, element):
        bucket, groups = element
        rows = concat_sorted(groups["rows"])
        serving = pd.concat(list(groups["serving"]), ignore_index=True) if groups["serving"] else None
        spec = self.spec
        keys = np.empty(0, object)
        if len(rows):
            rows = keep_most_recent(rows, spec, self.max_samples)
            keys = rows[spec.task_key].drop_duplicates().to_numpy()
            n_full = len(keys) // self.tasks_per_batch * self.tasks_per_batch
            full = keys[:n_full]
            if n_full:
                in_full = rows[spec.task_key].isin(set(full)).to_numpy()
                emb = self.adapted(rows[in_full], full)
                log.info("refresh: bucket %d embedded %d tasks", bucket, n_full)  # progress in the worker logs
                yield "written", self.write(f"b{bucket:05d}",
                                            [embeddings_table(full, emb, self.model_version, self.computed_at,
                                                              "adapted")])
                rows = rows[~in_full]
            if len(rows):
                yield "tail", (0, ("adapted", bucket, compact(rows)))
        if serving is not None and len(serving):
            cold = serving[~serving[spec.task_key].isin(set(keys))].drop_duplicates(spec.task_key)
            if len(cold):
                yield "tail", (0, ("cold_start", bucket, cold))


class EmbedTail(_EmbedBase):
    """All buckets' leftovers in one place: fixed-shape batches again (only the very last is padded)."""

    def process(self, element):
        _, parts = element
        parts = sorted({(p[0], p[1]): p for p in parts}.values(), key=lambda p: (p[0], p[1]))  # once each
        tables = []
        for kind in ("adapted", "cold_start"):
            frames = [p[2] for p in parts if p[0] == kind]
            if not frames:
                continue
            df = expand(pd.concat(frames, ignore_index=True))
            if kind == "adapted":  # re-sort across buckets (each part is already cut to max_samples)
                df = keep_most_recent(df.drop(columns=["_t", "_row"]), self.spec, self.max_samples)
                keys = df[self.spec.task_key].drop_duplicates().to_numpy()
                emb = self.adapted(df, keys)
            else:
                df = df.sort_values(self.spec.task_key, kind="stable").reset_index(drop=True)
                keys = df[self.spec.task_key].to_numpy()
                emb = self.cold(df)
            tables.append(embeddings_table(keys, emb, self.model_version, self.computed_at, kind))
        yield self.write("tail", tables)


# -- options and the pipeline ---------------------------------------------------------

def parse_as_of(text: str | float) -> float:
    """--as-of: ISO-8601 time (UTC unless it has an offset) or epoch seconds -> epoch seconds."""
    try:
        return float(text)
    except (TypeError, ValueError):
        pass
    t = pd.Timestamp(text)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.value / 1e9


def run_tag(as_of: float) -> str:
    return "as_of=" + dt.datetime.fromtimestamp(as_of, dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def beam_options(beam_args: list[str], workers: int = 2) -> PipelineOptions:
    """Pipeline options with the runner named explicitly: default = Beam's FnApiRunner with
    `workers` processes (what DirectRunner runs for batch, without trying Prism first)."""
    args = list(beam_args)
    runner = None
    for i, a in enumerate(args):
        if a.startswith("--runner"):
            name = a.split("=", 1)[1] if "=" in a else args[i + 1]
            runner = RUNNERS.get(name, name)
            args[i] = f"--runner={runner}"
            if "=" not in a:
                del args[i + 1]
            break
    if runner is None:
        args.append("--runner=FnApiRunner")
        runner = "FnApiRunner"
    if runner == "FnApiRunner" and not any(a.startswith("--direct_running_mode") for a in args):
        mode = "multi_processing" if workers > 1 else "in_memory"
        args += [f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"]
    return PipelineOptions(args)


def _worker_pythonpath():
    """Multi-process workers import DoFns by module: give them the driver's code location."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p])


def run_and_wait(p: beam.Pipeline) -> None:
    """Runs `p` to completion (raising its error); closes the client DaskRunner opens, which would
    otherwise linger and keep reconnecting to a closed cluster."""
    result = p.run()
    result.wait_until_finish()
    client = getattr(result, "client", None)
    if client is not None:
        client.close()


def auto_buckets(input_pattern: str, rows_per_bucket: int = 400_000) -> int:
    """Buckets ~ input rows / rows_per_bucket (from Parquet footers; 8 otherwise)."""
    from beam_pipelines.interactions import list_files

    paths = list_files(input_pattern)
    if all(p.endswith(".parquet") for p in paths):
        rows = 0
        for p in paths:
            with FileSystems.open(p) as f:
                rows += pq.ParquetFile(f).metadata.num_rows
        return max(1, math.ceil(rows / rows_per_bucket))
    return 8


def build(p, *, input: str, adapter: str, out_dir: str, dead_dir: str, manifest_dir: str, as_of: float,
          days: float, max_samples: int, tasks_per_batch: int, num_buckets: int, input_format: str | None = None,
          serving_tasks: str | None = None, ignore_columns=(), tf_threads: int | None = None,
          batch_rows: int = 65_536):
    """Adds the refresh to pipeline `p`; returns the PCollection of written file paths."""
    spec, _ = adapter_metadata(adapter)
    computed_at = dt.datetime.fromtimestamp(as_of, dt.timezone.utc)
    checked = (read_interactions(p, input, spec, input_format, batch_rows)
               | "CheckAndBucket" >> beam.ParDo(CheckAndBucket(spec, num_buckets, as_of - days * DAY, as_of,
                                                               ignore_columns, max_samples=max_samples,
                                                               manifest_dir=manifest_dir)))
    dead_paths = (checked | "DeadRows" >> select("dead")
                  | "WriteDeadLetter" >> beam.ParDo(WriteDeadLetter(dead_dir)))
    grouped_in = {"rows": checked | "Rows" >> select("rows")}
    if serving_tasks:
        serving = pd.read_parquet(serving_tasks)
        if spec.task_key not in serving.columns:
            raise ValueError(f"--serving-tasks {serving_tasks!r} needs a {spec.task_key!r} column (the task key)")
        serving[spec.task_key] = serving[spec.task_key].astype(str)
        parts = [(int(b), part) for b, part in serving.groupby(stable_bucket(serving[spec.task_key], num_buckets))]
    else:
        parts = []
    grouped_in["serving"] = p | "ServingTasks" >> beam.Create(parts)
    args = (adapter, out_dir, computed_at, max_samples, tasks_per_batch, tf_threads)
    embedded = (grouped_in | "GroupByBucket" >> beam.CoGroupByKey()
                | "EmbedBuckets" >> beam.ParDo(EmbedBucket(*args)))
    tail_paths = (embedded | "Tails" >> select("tail") | "GroupTails" >> beam.GroupByKey()
                  | "EmbedTail" >> beam.ParDo(EmbedTail(*args)))
    return ((embedded | "Written" >> select("written"), tail_paths, dead_paths)
            | "AllFiles" >> beam.Flatten() | "Done" >> beam.Map(lambda path: path))


def refresh(input: str, adapter: str, output: str, as_of, days: float = 30.0, max_samples: int = 64,
            tasks_per_batch: int = 128, aggregation: str | None = None, num_buckets: int = 0,
            input_format: str | None = None, serving_tasks: str | None = None, ignore_columns=(),
            online_store: str | None = "sqlite", store_dir: str | None = None, workers: int = 2,
            tf_threads: int | None = None, beam_args=(), batch_rows: int = 65_536) -> dict:
    """Runs the refresh; commits runs/<as_of>/ under `output` atomically, then publishes it to the
    Feast online store (`online_store`: "sqlite", "redis://host:port" or None). Returns the summary."""
    start = time.perf_counter()
    adapter = resolve_adapter(adapter, aggregation)
    spec, config = adapter_metadata(adapter)
    as_of = parse_as_of(as_of)
    num_buckets = num_buckets or auto_buckets(input)
    run_dir = os.path.join(os.path.abspath(output), "runs", run_tag(as_of))
    _worker_pythonpath()
    with atomic_directory(run_dir) as tmp:
        out_dir, dead_dir = os.path.join(tmp, "embeddings"), os.path.join(tmp, "dead_letter")
        manifest_dir = os.path.join(tmp, ".manifest")
        for d in (out_dir, dead_dir, manifest_dir):
            os.makedirs(d)
        p = beam.Pipeline(options=beam_options(list(beam_args), workers))
        build(p, input=input, adapter=adapter, out_dir=out_dir, dead_dir=dead_dir, manifest_dir=manifest_dir,
              as_of=as_of, days=days,
              max_samples=max_samples, tasks_per_batch=tasks_per_batch, num_buckets=num_buckets,
              input_format=input_format, serving_tasks=serving_tasks, ignore_columns=ignore_columns,
              tf_threads=tf_threads, batch_rows=batch_rows)
        run_and_wait(p)
        # The model's cold-start row (all features missing): what serving uses for a task never seen.
        loaded = _load_adapter(adapter, None)
        default = loaded.model.cold_start(default_features(spec, 1))["meta_embedding"].numpy()
        from limaml_tf.feature_store import COLD_START_KEY

        computed_at = dt.datetime.fromtimestamp(as_of, dt.timezone.utc)
        pq.write_table(embeddings_table([COLD_START_KEY], default, str(config["model_version"]), computed_at,
                                        "cold_start"), os.path.join(out_dir, "part-default.parquet"))
        rows = read_embeddings(tmp)
        dead = read_dead_letter(dead_dir)
        summary = {
            "as_of": computed_at.isoformat(), "window_days": days, "adapter": adapter,
            "model_version": str(config["model_version"]), "steps": config["steps"],
            "aggregation": config["aggregation"], "embedding_dim": config["embedding_dim"],
            "rows": len(rows), "adapted": int((rows["source"] == "adapted").sum()),
            "cold_start": int((rows["source"] == "cold_start").sum()), "dead_letter": len(dead),
            "dead_letter_reasons": dead["reason"].value_counts().to_dict(), "num_buckets": num_buckets,
            "pipeline_seconds": round(time.perf_counter() - start, 3),
        }
        check_complete(rows, manifest_dir)
        with open(os.path.join(tmp, "_SUCCESS.json"), "w") as f:
            json.dump(summary, f, indent=1)
        shutil.rmtree(manifest_dir)
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
    committed): a runner that loses or repeats work must not publish silently wrong embeddings."""
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
                           "embeddings stay served. Re-run (on FnApiRunner, try --workers 1)")


def read_embeddings(run_dir: str) -> pd.DataFrame:
    """The embedding rows of a run directory, sorted by task key."""
    df = pq.read_table(os.path.join(run_dir, "embeddings")).to_pandas()
    return df.sort_values("task_key", kind="stable").reset_index(drop=True)


# -- command line -------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="interaction files: a glob or directory (Parquet or TFRecord)")
    p.add_argument("--input-format", choices=("parquet", "tfrecord"), default=None, help="default: from file names")
    p.add_argument("--adapter", required=True, help="adapter SavedModel (or a directory of them, see --aggregation)")
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


def run_from_args(args, beam_args) -> dict:
    summary = refresh(args.input, args.adapter, args.output, args.as_of, args.days, args.max_samples,
                      args.tasks_per_batch, args.aggregation, args.num_buckets, args.input_format,
                      args.serving_tasks, [c for c in args.ignore_columns.split(",") if c],
                      None if args.online_store == "none" else args.online_store, args.store_dir, args.workers,
                      args.tf_threads, beam_args)
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
