"""Runner utilities shared by the Beam pipelines: pipeline options, run-and-wait, bucket count,
as-of parsing and the run tag.

Locally the pipelines run on Beam's FnApiRunner with several worker processes (what DirectRunner
runs for batch, without trying to download the Prism runner first); any other runner is chosen
with the standard `--runner=...` pipeline options (DaskRunner, DataflowRunner, FlinkRunner, ...).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os

import apache_beam as beam
import pandas as pd
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines.interactions import list_files, parquet_metadata
from limaml_tf.raw_data import FeatureError, check_seconds

DAY = 86_400.0
RUNNERS = {  # names users type -> what we run (never the Prism-first default DirectRunner)
    "DirectRunner": "FnApiRunner",
    "DaskRunner": "apache_beam.runners.dask.dask_runner.DaskRunner",
}


def parse_as_of(text: str | float, flag: str = "--as-of") -> float:
    """--as-of / --start / --end: ISO-8601 time (UTC unless it has an offset) or epoch seconds -> epoch seconds."""
    try:
        seconds = float(text)
    except (TypeError, ValueError):
        try:
            t = pd.Timestamp(text)
        except (TypeError, ValueError) as e:  # pandas' DateParseError is a ValueError
            raise ValueError(f"{flag} {text!r} is not a time ({e}): give ISO-8601 (e.g. 2024-05-01T00:00:00Z) "
                             "or epoch seconds") from None
        if t is pd.NaT:
            raise ValueError(f"{flag} {text!r} is not a time: give ISO-8601 (e.g. 2024-05-01T00:00:00Z) or "
                             "epoch seconds")
        t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
        seconds = t.value / 1e9
    try:
        check_seconds([seconds], f"{flag} {text!r}")
    except FeatureError as e:
        raise ValueError(str(e)) from None
    return seconds


def run_tag(as_of: float) -> str:
    """The directory name of the run for `as_of` (epoch seconds): as_of=YYYYmmddTHHMMSSffffffZ."""
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


def worker_pythonpath() -> None:
    """Multi-process workers import DoFns by module: give them the driver's code location."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p])


# Local worker processes (FnApiRunner multi_processing) start with the driver's environment plus this:
# TensorFlow's __init__ then looks for tf_keras (not installed) instead of eagerly importing Keras 3,
# which the workers never use (they load the adapter SavedModel only): each worker starts ~6 s sooner
# (13 s -> 7 s to import TensorFlow on the shared 2-core machine) and holds ~175 MB less.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1"}


@contextlib.contextmanager
def _environ(**values):
    """os.environ with `values` set inside the block, restored after it."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def fix_fnapi_flush_race() -> None:
    """Makes Beam's time-flushed data-plane stream (`TimeBasedBufferingClosableOutputStream`) take its
    flush lock in `write`: unlocked, a write made while the periodic flush hands the buffer to a full
    send queue is cleared unsent, and a stage's input loses whole chunks without an error (root cause
    and repro: docs/refresh.md, "Stress test"). Idempotent; applied by `run_and_wait` (the driver is
    where these streams live)."""
    from apache_beam.runners.worker import data_plane

    stream = data_plane.TimeBasedBufferingClosableOutputStream
    if getattr(stream.write, "locked_against_flush", False):
        return

    def write(self, b, nested=False):
        with self._flush_lock:
            data_plane.SizeBasedBufferingClosableOutputStream.write(self, b, nested)

    write.locked_against_flush = True
    stream.write = write


def run_and_wait(p: beam.Pipeline) -> dict:
    """Runs `p` to completion (raising its error); closes the client DaskRunner opens, which would
    otherwise linger and keep reconnecting to a closed cluster. Returns the run's Beam counters as
    {"namespace/name": value} (summed over steps; {} where the runner has no metrics, e.g. Dask)."""
    fix_fnapi_flush_race()
    with _environ(**WORKER_ENV):  # read by the worker processes p.run() starts
        result = p.run()
    result.wait_until_finish()
    client = getattr(result, "client", None)
    if client is not None:
        client.close()
    try:
        counters = result.metrics().query()["counters"]
    except NotImplementedError:
        return {}
    out = {}
    for c in counters:
        name = f"{c.key.metric.namespace}/{c.key.metric.name}"
        out[name] = out.get(name, 0) + (c.committed or 0)
    return out


def auto_buckets(input_pattern: str, rows_per_bucket: int = 1_000_000) -> int:
    """Buckets ~ input rows / rows_per_bucket (from Parquet footers; 8 otherwise)."""
    paths = list_files(input_pattern)
    if all(p.endswith(".parquet") for p in paths):
        rows = 0
        for p in paths:
            rows += parquet_metadata(p).num_rows
        return max(1, math.ceil(rows / rows_per_bucket))
    return 8
