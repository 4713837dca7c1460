"""Reading interaction logs in batches, for the Beam pipelines.

Inputs are Parquet files (one row per interaction) or TFRecord files of `tf.train.Example` (one Example
per interaction, one feature per column). Files are read in batches of rows as Arrow tables, so no stage
pays Beam's per-element cost per interaction, and rows stay Arrow / NumPy (no Python object per row) up
to the adapter. Files are read through Beam's `FileSystems` (local paths, gs://, s3://, hdfs:// alike).

Also here: the stage timers (`stage_time`, `timed`) every pipeline stage counts its own work with. The
row checks and the dead letter are in `beam_pipelines.row_checks`, the bucketing and the shuffle's format
in `beam_pipelines.shuffle`.
"""

from __future__ import annotations

import contextlib
import os
import time

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from limaml_tf.raw_data import FeatureError, LIST_KINDS
from limaml_tf.spec import FeatureSpec

FORMATS = ("parquet", "tfrecord")
# Rows per input batch: few, large elements (see docs/refresh.md#data-path-and-throughput).
BATCH_ROWS = 262_144


def list_files(pattern: str) -> list[str]:
    """Sorted files matching a glob (a directory means every file in it)."""
    if os.path.isdir(pattern) or pattern.endswith("/"):
        pattern = FileSystems.join(pattern.rstrip("/"), "*")
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list
                   if not os.path.basename(m.path).startswith((".", "_")))
    if not paths:
        raise FileNotFoundError(f"no input files match {pattern!r}: check --input")
    return paths


def detect_format(paths: list[str], fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise ValueError(f"--input-format must be one of {FORMATS}, got {fmt!r}")
        return fmt
    exts = {"tfrecord" if ".tfrecord" in p else "parquet" if p.endswith(".parquet") else None for p in paths}
    if len(exts) != 1 or None in exts:
        raise ValueError(f"cannot tell the format of {paths[:3]}...: name files *.parquet / *.tfrecord "
                         "or pass --input-format parquet|tfrecord")
    return exts.pop()


STAGE_TIME = "stage_us"  # Beam metric namespace: microseconds each stage spent on its own work


@contextlib.contextmanager
def stage_time(stage: str):
    """Counts the time spent in the block in the Beam counter STAGE_TIME/`stage` (summed over workers)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        beam.metrics.Metrics.counter(STAGE_TIME, stage).inc(int((time.perf_counter() - start) * 1e6))


def timed(stage: str, items):
    """Yields from `items`, counting the time spent producing them in STAGE_TIME/`stage` (not the time
    downstream stages fused into the same bundle spend on each yielded element)."""
    it = iter(items)
    while True:
        with stage_time(stage):
            item = next(it, StopIteration)
        if item is StopIteration:
            return
        yield item



def _example_rows(records, spec: FeatureSpec) -> pd.DataFrame:
    """Serialized tf.train.Example (one interaction each) -> DataFrame, one column per feature key."""
    import tensorflow as tf

    multi = {f.name for f in spec.features if f.kind in LIST_KINDS}
    rows = []
    for rec in records:
        row = {}
        for key, feat in tf.train.Example.FromString(rec).features.feature.items():
            kind = feat.WhichOneof("kind")
            values = list(getattr(feat, kind).value) if kind else []
            values = [v.decode() if isinstance(v, bytes) else v for v in values]
            row[key] = values if key in multi else (values[0] if len(values) == 1 else None)
        rows.append(row)
    return pd.DataFrame(rows)


def interaction_example(row: dict, spec: FeatureSpec) -> bytes:
    """One interaction as a tf.train.Example (the TFRecord input format of the pipelines)."""
    import tensorflow as tf

    multi = {f.name for f in spec.features if f.kind in LIST_KINDS}
    feats = {}
    for key, v in row.items():
        if key in multi:
            v = [s for s in v.split("|") if s] if isinstance(v, str) else list(v)
        vals = v if isinstance(v, (list, tuple, np.ndarray)) else [v]
        if all(isinstance(x, (float, np.floating)) for x in vals):
            feats[key] = tf.train.Feature(float_list=tf.train.FloatList(value=vals))
        elif all(isinstance(x, (int, np.integer)) for x in vals):
            feats[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=vals))
        else:
            feats[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(x).encode() for x in vals]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_interactions_tfrecord(df: pd.DataFrame, path: str, spec: FeatureSpec) -> str:
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as w:
        for row in df.to_dict("records"):
            w.write(interaction_example(row, spec))
    return path


class ReadInteractions(beam.DoFn):
    """file path -> (batch id, Arrow table of up to `batch_rows` interactions).

    The batch id is the file's full path and the batch's index in it: unique across the input (the
    grouping stages drop a batch delivered twice by its id, so two batches must never share one, as
    day=1/part-0.parquet and day=2/part-0.parquet would by file name)."""

    def __init__(self, fmt: str, spec: FeatureSpec, batch_rows: int = BATCH_ROWS):
        self.fmt, self.spec_json, self.batch_rows = fmt, spec.to_json(), batch_rows

    def setup(self):
        self.spec = FeatureSpec.from_json(self.spec_json)

    def process(self, path):
        return timed("read", self._batches(path))

    def _batches(self, path):
        if self.fmt == "parquet":
            with FileSystems.open(path) as f:
                for i, batch in enumerate(pq.ParquetFile(f).iter_batches(self.batch_rows)):
                    yield f"{path}:{i:06d}", pa.Table.from_batches([batch])
        else:
            import tensorflow as tf

            ds = tf.data.TFRecordDataset(path).batch(self.batch_rows)
            for i, records in enumerate(ds.as_numpy_iterator()):
                yield f"{path}:{i:06d}", to_arrow(_example_rows(records, self.spec))


def parquet_metadata(path: str):
    """The footer of a Parquet input file; FeatureError naming the file when it is not readable."""
    try:
        with FileSystems.open(path) as f:
            return pq.ParquetFile(f).metadata
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise FeatureError(f"input file {path!r} is not a readable Parquet file ({e}): re-write it, or move it "
                           "out of --input") from None


def check_input_columns(paths: list[str], spec: FeatureSpec, require_label: bool = True) -> None:
    """Before any worker starts (refresh: no joins add columns): every Parquet input has the columns the
    spec (the adapter's) needs, so a mismatched adapter fails the run instead of sending every row to the
    dead letter."""
    need = [spec.task_key, spec.timestamp] + ([spec.label] if require_label else [])
    need += [f.name for f in spec.features if f.kind == "numeric"]
    for path in paths:
        have = set(parquet_metadata(path).schema.names)
        missing = [c for c in need if c not in have]
        if missing:
            raise FeatureError(f"input file {path!r} lacks column(s) {missing} that the feature spec (the adapter's) "
                               f"needs: pass the adapter trained on this data (--adapter), or add the columns")


def read_interactions(p, pattern: str, spec: FeatureSpec, fmt: str | None = None, batch_rows: int = BATCH_ROWS):
    """PCollection of (batch id, Arrow table) from the files matching `pattern`."""
    paths = list_files(pattern)
    fmt = detect_format(paths, fmt)
    return (p | "ListFiles" >> beam.Create(paths)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadBatches" >> beam.ParDo(ReadInteractions(fmt, spec, batch_rows)))


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """A DataFrame as an Arrow table; a column of mixed Python types becomes text (the row checks then
    read numbers from it as pd.to_numeric(errors="coerce") does)."""
    cols = {}
    for c in df.columns:
        try:
            cols[str(c)] = pa.array(df[c], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            cols[str(c)] = pa.array(df[c].map(lambda v: None if v is None else str(v)), pa.string())
    return pa.table(cols)
