"""Daily data pipeline: raw interaction logs (+ feature tables) -> task-grouped training TFRecords.

  logs (Parquet / TFRecord, one row per interaction)
    -> left-join feature tables by key (broadcast: each table must fit in a worker's memory)
    -> check rows (bad rows -> dead letter with the reason) and keep [--start, --end) by time
    -> bucket by crc32(task key) -> GroupByKey
    -> per bucket `limaml_tf.tasks.split_tasks` (most recent N per task, chronological 75/25
       support/query split: the exact function training uses in memory)
    -> one tf.train.Example per task (`limaml_tf.tfrecords.task_example`) -> sharded TFRecords
       + tasks_meta.json, committed atomically; read back with `limaml_tf.tfrecords.task_dataset`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import apache_beam as beam
import pandas as pd

from beam_pipelines.interactions import read_interactions, to_arrow
from beam_pipelines.row_checks import WriteDeadLetter, read_dead_letter
from beam_pipelines.runner import auto_buckets, beam_options, parse_as_of, run_and_wait, worker_pythonpath
from beam_pipelines.shuffle import CheckAndBucket, concat_sorted, select
from beam_pipelines.sinks import remove_temp
from limaml_tf.artifacts import DEAD_LETTER_DIR, SUCCESS_FILE, atomic_directory, read_spec
from limaml_tf.raw_data import FeatureError
from limaml_tf.spec import FeatureSpec
from limaml_tf.tasks import split_tasks
from limaml_tf.tfrecords import check_one_definition, task_example, write_meta


def parse_join(text: str) -> tuple[str, str]:
    path, sep, key = text.rpartition(":")
    if not sep or not path:
        raise ValueError(f"--join {text!r}: use PATH.parquet:KEY_COLUMN")
    return path, key


class JoinFeatures(beam.DoFn):
    """Left-joins small feature tables onto each batch of interactions (missing matches stay NaN /
    missing, so the row checks report them)."""

    def __init__(self, tables: list[tuple[pd.DataFrame, str]]):
        self.tables = tables

    def process(self, element):
        source, rows = element
        df = rows.to_pandas()
        for table, key in self.tables:
            df = df.merge(table, on=key, how="left", suffixes=("", "__table"))
        yield source, to_arrow(df)


class SplitBucket(beam.DoFn):
    """(bucket, [(batch id, rows)]) -> serialized task Examples (support/query split by time)."""

    def __init__(self, spec: FeatureSpec, max_samples: int, support_fraction: float, min_samples: int):
        self.spec_json, self.args = spec.to_json(), (max_samples, support_fraction, min_samples)

    def setup(self):
        self.spec = FeatureSpec.from_json(self.spec_json)

    def process(self, element):
        _, parts = element
        rows = concat_sorted(parts).to_pandas()
        try:
            tasks = split_tasks(rows, self.spec, *self.args)
        except FeatureError:  # no task in this bucket has min_samples samples
            beam.metrics.Metrics.counter("tasks", "too_few_samples").inc(rows[self.spec.task_key].nunique())
            return
        beam.metrics.Metrics.counter("tasks", "written").inc(len(tasks))
        for i in range(len(tasks)):
            yield task_example(self.spec, tasks.subset(i).arrays)


def build_training_data(input: str, spec: FeatureSpec | str, output: str, max_samples: int = 100,
                        support_fraction: float = 0.75, min_samples: int = 2, joins=(), start=None, end=None,
                        num_shards: int = 4, num_buckets: int = 0, input_format: str | None = None,
                        ignore_columns=(), workers: int = 2, beam_args=()) -> dict:
    """Runs the pipeline; `output` gets tasks-*.tfrecord + tasks_meta.json (+ dead_letter/), atomically."""
    spec = read_spec(spec) if isinstance(spec, str) else spec
    check_one_definition(spec)
    tables = [(pd.read_parquet(path), key) for path, key in map(parse_join, joins)]
    num_buckets = num_buckets or auto_buckets(input)
    start = None if start is None else parse_as_of(start, "--start")
    end = None if end is None else parse_as_of(end, "--end")
    s_len = max(int(max_samples * support_fraction), 1)
    worker_pythonpath()
    with atomic_directory(output) as tmp:
        dead_dir = os.path.join(tmp, DEAD_LETTER_DIR)
        os.makedirs(dead_dir)
        p = beam.Pipeline(options=beam_options(list(beam_args), workers))
        rows = read_interactions(p, input, spec, input_format)
        if tables:
            rows = rows | "JoinFeatures" >> beam.ParDo(JoinFeatures(tables))
        checked = rows | "CheckAndBucket" >> beam.ParDo(CheckAndBucket(spec, num_buckets, start, end,
                                                                       ignore_columns, max_samples=max_samples))
        _ = checked | "DeadRows" >> select("dead") | "WriteDeadLetter" >> WriteDeadLetter(dead_dir)
        _ = (checked | "Rows" >> select("rows") | "GroupByBucket" >> beam.GroupByKey()
             | "SplitTasks" >> beam.ParDo(SplitBucket(spec, max_samples, support_fraction, min_samples))
             | "WriteTasks" >> beam.io.WriteToTFRecord(os.path.join(tmp, "tasks"), file_name_suffix=".tfrecord",
                                                       num_shards=num_shards))
        run_and_wait(p)
        remove_temp(tmp)
        write_meta(tmp, spec, s_len, max_samples - s_len)
        dead = read_dead_letter(dead_dir)
        summary = {"output": os.path.abspath(output), "support_length": s_len, "query_length": max_samples - s_len,
                   "dead_letter": len(dead), "dead_letter_reasons": dead["reason"].value_counts().to_dict()}
        with open(os.path.join(tmp, SUCCESS_FILE), "w") as f:
            json.dump(summary, f, indent=1)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="interaction logs: glob or directory (Parquet or TFRecord)")
    p.add_argument("--input-format", choices=("parquet", "tfrecord"), default=None)
    p.add_argument("--spec", required=True, help="FeatureSpec JSON, or an exported artifact directory")
    p.add_argument("--output", required=True, help="directory for tasks-*.tfrecord + tasks_meta.json")
    p.add_argument("--join", action="append", default=[], help="feature table PATH.parquet:KEY (repeatable)")
    p.add_argument("--max-samples", type=int, default=100, help="most recent samples kept per task")
    p.add_argument("--support-fraction", type=float, default=0.75)
    p.add_argument("--min-samples", type=int, default=2)
    p.add_argument("--start", default=None, help="keep interactions at or after this time (ISO or epoch s)")
    p.add_argument("--end", default=None, help="keep interactions before this time")
    p.add_argument("--num-shards", type=int, default=4)
    p.add_argument("--num-buckets", type=int, default=0)
    p.add_argument("--ignore-columns", default="")
    p.add_argument("--workers", type=int, default=2)
    args, beam_args = p.parse_known_args(argv)
    summary = build_training_data(args.input, args.spec, args.output, args.max_samples, args.support_fraction,
                                  args.min_samples, args.join, args.start, args.end, args.num_shards,
                                  args.num_buckets, args.input_format,
                                  [c for c in args.ignore_columns.split(",") if c], args.workers, beam_args)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
