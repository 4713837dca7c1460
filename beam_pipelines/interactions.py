"""Pieces shared by the Beam pipelines: read interaction logs in batches, check rows, bucket tasks.

* Inputs are Parquet files (one row per interaction) or TFRecord files of `tf.train.Example`
  (one Example per interaction, one feature per column). Files are read in batches of rows
  (pandas DataFrames), so no stage pays Beam's per-element cost per interaction.
* `check_rows` sends every row the model cannot use to the dead-letter output with the reason
  (missing task key, NaN/inf numeric feature, unknown column, ...): counted, never silently dropped.
* Rows are keyed by `bucket = crc32(task_key) % num_buckets` (stable across processes and runs,
  unlike Python's salted `hash`), so one GroupByKey brings every row of a task to one worker
  while elements stay few and large.

Files are read and written through Beam's `FileSystems` (local paths, gs://, s3://, hdfs:// alike);
the dead letter is written through `beam_pipelines.sinks` (committed exactly once).
"""

from __future__ import annotations

import json
import os
import zlib

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.sinks import WriteShards
from limaml_tf.spec import LIST_KINDS, MAX_EPOCH_SECONDS, FeatureError, FeatureSpec
from limaml_tf.tasks import keep_most_recent

FORMATS = ("parquet", "tfrecord")
DEAD_LETTER_COLUMNS = ("source", "reason", "row")


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


def stable_bucket(keys: pd.Series, num_buckets: int) -> np.ndarray:
    """crc32(key) % num_buckets per row (computed once per distinct key)."""
    codes, uniques = pd.factorize(keys.astype(str))
    per_key = np.fromiter((zlib.crc32(k.encode()) % num_buckets for k in uniques), np.int64, len(uniques))
    return per_key[codes]


# -- reading ------------------------------------------------------------------

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
    """file path -> (batch id, DataFrame of up to `batch_rows` interactions).

    The batch id is the file's full path and the batch's index in it: unique across the input (the
    grouping stages drop a batch delivered twice by its id, so two batches must never share one, as
    day=1/part-0.parquet and day=2/part-0.parquet would by file name)."""

    def __init__(self, fmt: str, spec: FeatureSpec, batch_rows: int = 65_536):
        self.fmt, self.spec_json, self.batch_rows = fmt, spec.to_json(), batch_rows

    def setup(self):
        self.spec = FeatureSpec.from_json(self.spec_json)

    def process(self, path):
        if self.fmt == "parquet":
            with FileSystems.open(path) as f:
                for i, batch in enumerate(pq.ParquetFile(f).iter_batches(self.batch_rows)):
                    yield f"{path}:{i:06d}", batch.to_pandas()
        else:
            import tensorflow as tf

            ds = tf.data.TFRecordDataset(path).batch(self.batch_rows)
            for i, records in enumerate(ds.as_numpy_iterator()):
                yield f"{path}:{i:06d}", _example_rows(records, self.spec)


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


def read_interactions(p, pattern: str, spec: FeatureSpec, fmt: str | None = None, batch_rows: int = 65_536):
    """PCollection of (batch id, DataFrame) from the files matching `pattern`."""
    paths = list_files(pattern)
    fmt = detect_format(paths, fmt)
    return (p | "ListFiles" >> beam.Create(paths)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadBatches" >> beam.ParDo(ReadInteractions(fmt, spec, batch_rows)))


# -- checking -----------------------------------------------------------------

def to_seconds(col: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):
        out = col.astype("int64").astype("float64") / 1e9
        return out.where(col.notna())
    return pd.to_numeric(col, errors="coerce").astype("float64")


def check_rows(df: pd.DataFrame, spec: FeatureSpec, require_label: bool = True,
               ignore_columns=()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Splits rows into (usable rows, normalized) and (bad rows with a `reason` column).

    The first problem of a row is its reason. Usable rows have: task key as str, timestamp in
    float seconds, label 0/1, finite numeric features, "" for a missing categorical value.
    """
    reasons: list[str] = [""]  # reason code per row: 0 = fine, i = reasons[i]
    code = np.zeros(len(df), np.int32)

    def flag(bad, why: str):
        bad = np.asarray(bad, bool) & (code == 0)
        if bad.any():
            reasons.append(why)
            code[bad] = len(reasons) - 1

    known = {*spec.task_key_columns, spec.timestamp, spec.label, *(f.name for f in spec.features), *ignore_columns}
    for c in df.columns:
        if c not in known:
            flag(df[c].notna(), f"unknown column {c!r}: add it to the feature spec or pass --ignore-columns {c}")
    required = [spec.task_key, spec.timestamp] + ([spec.label] if require_label else [])
    required += [f.name for f in spec.features if f.kind == "numeric"]
    for c in required:
        if c not in df.columns:
            flag(np.ones(len(df), bool), f"missing column {c!r}: add it to the input or remove it from the spec")
    out = {}
    if spec.task_key in df.columns:
        keys, uniques = pd.factorize(df[spec.task_key])  # NaN/None -> -1; test each distinct key once
        blank = np.array([str(k).strip() == "" for k in uniques] + [True])
        flag(blank[keys], f"missing task key {spec.task_key!r}")
        out[spec.task_key] = np.append(uniques.astype(str), "")[keys]
    if spec.timestamp in df.columns:
        out[spec.timestamp] = to_seconds(df[spec.timestamp])
        flag(~np.isfinite(out[spec.timestamp]), f"missing or non-numeric timestamp {spec.timestamp!r}")
        flag(out[spec.timestamp].abs() > MAX_EPOCH_SECONDS, f"timestamp {spec.timestamp!r} looks like milliseconds "
             f"(> {MAX_EPOCH_SECONDS:.0e} s): write epoch seconds (divide by 1000)")
    if require_label and spec.label in df.columns:
        label = pd.to_numeric(df[spec.label], errors="coerce")
        flag(~label.isin([0, 1]), f"label {spec.label!r} must be 0 or 1 (NaN or other value)")
        out[spec.label] = label.astype("float32")
    for f in spec.features:
        if f.name not in df.columns:
            if f.kind != "numeric":
                out[f.name] = ""
            continue
        col = df[f.name]
        if f.kind == "numeric":
            num = pd.to_numeric(col, errors="coerce").astype("float64")
            flag(~np.isfinite(num), f"NaN/inf or non-numeric value in numeric feature {f.name!r}")
            out[f.name] = num.astype("float32")
        elif f.kind == "categorical":
            out[f.name] = col.where(col.notna(), "").astype(str)
        else:
            out[f.name] = col.where(col.notna(), "")
    out = pd.DataFrame(out, index=df.index)
    bad = code > 0
    dead = pd.DataFrame({"reason": np.array(reasons, object)[code[bad]]}, index=df.index[bad])
    dead["row"] = df[bad].to_json(orient="records", lines=True, default_handler=str).splitlines() if bad.any() else []
    return out[~bad], dead


def dead_letter_records(source: str, dead: pd.DataFrame) -> list[dict]:
    return [{"source": source, "reason": r, "row": json.loads(row)} for r, row in zip(dead["reason"], dead["row"])]


def write_dead_letter_lines(parts, f) -> None:
    """[(source batch id, dead rows)] -> JSON lines, batches in id order (each once)."""
    for source, dead in sorted(dict(parts).items(), key=lambda kv: kv[0]):
        for rec in dead_letter_records(source, dead):
            f.write((json.dumps(rec, default=str) + "\n").encode())


def count_dead(element):
    """Counts a batch's dead rows per reason in Beam metrics; keys it for the one dead-letter file."""
    for why, n in element[1]["reason"].str.split(":").str[0].value_counts().items():
        beam.metrics.Metrics.counter("dead_letter", why).inc(int(n))
    return 0, element


class WriteDeadLetter(beam.PTransform):
    """(source batch id, dead rows) -> `directory`/dead-00000-of-00001.jsonl, committed exactly once
    (`beam_pipelines.sinks`)."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def expand(self, dead):
        return (dead | "CountDead" >> beam.Map(count_dead)
                | "WriteJsonLines" >> WriteShards(self.directory, "dead", ".jsonl", 1, write_dead_letter_lines))


def read_dead_letter(directory: str) -> pd.DataFrame:
    """All dead-letter records of a run (columns source, reason, row)."""
    files = sorted(p for p in (os.listdir(directory) if os.path.isdir(directory) else []) if p.endswith(".jsonl"))
    recs = [json.loads(line) for p in files for line in open(os.path.join(directory, p), encoding="utf-8")]
    return pd.DataFrame(recs, columns=list(DEAD_LETTER_COLUMNS))


class CheckAndBucket(beam.DoFn):
    """(batch id, DataFrame) -> ("dead", (batch id, bad rows)) and ("rows", (bucket, (batch id, rows))),
    and with `task_keys` ("tasks", the batch's task keys in the window, one a line) for the refresh's
    completeness check.

    Rows outside [start, end) by timestamp are skipped (counted in a metric, not bad)."""

    def __init__(self, spec: FeatureSpec, num_buckets: int, start: float | None = None, end: float | None = None,
                 ignore_columns=(), require_label: bool = True, max_samples: int | None = None,
                 task_keys: bool = False):
        self.spec_json, self.num_buckets, self.max_samples = spec.to_json(), num_buckets, max_samples
        self.task_keys = task_keys
        self.start, self.end, self.ignore_columns, self.require_label = start, end, tuple(ignore_columns), require_label

    def setup(self):
        self.spec = FeatureSpec.from_json(self.spec_json)

    def process(self, element):
        source, df = element
        ok, dead = check_rows(df.reset_index(drop=True), self.spec, self.require_label, self.ignore_columns)
        if len(dead):
            yield "dead", (source, dead)
        t = ok[self.spec.timestamp]
        keep = np.ones(len(ok), bool)
        if self.start is not None:
            keep &= t.to_numpy() >= self.start
        if self.end is not None:
            keep &= t.to_numpy() < self.end
        beam.metrics.Metrics.counter("rows", "outside_window").inc(int((~keep).sum()))
        beam.metrics.Metrics.counter("rows", "used").inc(int(keep.sum()))
        ok = ok[keep]
        if self.task_keys and len(ok):
            yield "tasks", "\n".join(sorted(set(ok[self.spec.task_key])))
        if self.max_samples and len(ok):  # "most recent N" is associative: cut before the shuffle
            ok = keep_most_recent(ok, self.spec, self.max_samples).drop(columns=["_t", "_row"])
        if len(ok):
            for bucket, part in ok.groupby(stable_bucket(ok[self.spec.task_key], self.num_buckets), sort=True):
                yield "rows", (int(bucket), (source, compact(part)))


def select(kind: str):
    """Picks one kind of a ("kind", value) tagged element stream (portable across runners, unlike
    multi-output ParDo which Beam's DaskRunner does not separate)."""
    return beam.FlatMap(lambda e: [e[1]] if e[0] == kind else [])


def compact(df: pd.DataFrame) -> pd.DataFrame:
    """String columns as pandas categoricals: a shuffle then pickles each distinct string once."""
    out = {}
    for c in df.columns:
        try:
            out[c] = df[c].astype("category") if df[c].dtype == object else df[c]
        except TypeError:  # lists (multi-valued features from TFRecord) are unhashable
            out[c] = df[c]
    return pd.DataFrame(out, index=df.index)


def expand(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype({c: object for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)})


def concat_sorted(parts) -> pd.DataFrame:
    """Concatenates (batch id, DataFrame) parts in batch-id order, so row order (the tie-break of
    equal timestamps) does not depend on the order a GroupByKey delivered them. A batch delivered
    twice (at-least-once runners; Beam 2.77's DaskRunner re-delivers elements) is used once."""
    unique = dict(parts)
    return expand(pd.concat([unique[k] for k in sorted(unique)], ignore_index=True)) if unique else pd.DataFrame()
