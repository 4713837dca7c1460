"""Pieces shared by the Beam pipelines: read interaction logs in batches, check rows, bucket tasks.

* Inputs are Parquet files (one row per interaction) or TFRecord files of `tf.train.Example`
  (one Example per interaction, one feature per column). Files are read in batches of rows as
  Arrow tables, so no stage pays Beam's per-element cost per interaction, and rows stay Arrow /
  NumPy (no Python object per row) up to the adapter.
* `check_rows` sends every row the model cannot use to the dead-letter output with the reason
  (missing task key, NaN/inf numeric feature, unknown column, ...): counted, never silently dropped.
  Vectorized with pyarrow.compute / numpy.
* Rows are keyed by `bucket = crc32(task_key) % num_buckets` (stable across processes and runs,
  unlike Python's salted `hash`), so one GroupByKey brings every row of a task to one worker
  while elements stay few and large. A bucket's part of an input batch crosses the shuffle as
  Arrow IPC bytes (`to_ipc`): Beam's coder copies bytes, where a pickled DataFrame was unpickled
  and pickled again by FnApiRunner's driver at every GroupByKey.

Files are read and written through Beam's `FileSystems` (local paths, gs://, s3://, hdfs:// alike);
the dead letter is written through `beam_pipelines.sinks` (committed exactly once).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
import zlib

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.sinks import WriteShards
from limaml_tf.spec import LIST_KINDS, MAX_EPOCH_SECONDS, FeatureError, FeatureSpec
from limaml_tf.tasks import recent_order

FORMATS = ("parquet", "tfrecord")
BATCH_ROWS = 262_144  # rows per input batch: few, large elements (an Arrow batch of ~30 MB)
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


def key_codes(keys) -> tuple[np.ndarray, list[str]]:
    """Task keys (Arrow strings or anything pandas holds) -> (int code per row, the distinct keys)."""
    if not isinstance(keys, (pa.Array, pa.ChunkedArray)):
        keys = pa.array(pd.Series(keys).astype(str), pa.string())
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    enc = pc.dictionary_encode(keys)
    return enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.to_pylist()


def key_buckets(keys: list[str], num_buckets: int) -> np.ndarray:
    """crc32(key) % num_buckets for each of `keys` (distinct keys: one Python call each)."""
    return np.fromiter((zlib.crc32(k.encode()) % num_buckets for k in keys), np.int64, len(keys))


def stable_bucket(keys, num_buckets: int) -> np.ndarray:
    """crc32(key) % num_buckets per row (computed once per distinct key)."""
    codes, uniques = key_codes(keys)
    return key_buckets(uniques, num_buckets)[codes]


def to_ipc(table: pa.Table) -> bytes:
    """An Arrow table as IPC stream bytes, zstd-compressed: what crosses a shuffle (Beam's coder copies
    bytes as they are; FnApiRunner holds a GroupByKey's whole input in the driver, where zstd makes it
    ~40 % smaller for ~0.1 s of CPU time per million rows)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes | str) -> pa.Table:
    """An Arrow table from IPC bytes, or from the file `spill_part` wrote them to (given its path)."""
    if isinstance(data, str):
        with FileSystems.open(data, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read()
    return pa.ipc.open_stream(data).read_all()


def spill_part(data: bytes, directory: str, bucket: int, source: str) -> str:
    """Writes one shuffled part (IPC bytes) to a file of its own under `directory` and returns its path:
    with a spilled shuffle only paths cross the runner's GroupByKey (FnApiRunner holds a GroupByKey's
    whole input in the driver's memory). The name is unique to the attempt, so a retried or duplicated
    bundle never overwrites a file that another attempt's element points to; a failed attempt's file is
    never pointed to, and the whole directory is deleted after the run."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    path = FileSystems.join(directory, f"b{bucket:05d}", f"{digest}-{uuid.uuid4().hex[:12]}.arrow")
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)
    return path


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


# -- checking -----------------------------------------------------------------

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


def _float64(col) -> np.ndarray:
    """A column as float64 (datetimes: epoch seconds), NaN where missing or not a number."""
    t = col.type
    if pa.types.is_timestamp(t):
        per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[t.unit]
        return pc.cast(pc.cast(col, pa.int64()), pa.float64()).to_numpy(zero_copy_only=False) / per_second
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t):
        col = pc.cast(col, pa.float64())
        return (pc.fill_null(col, np.nan) if col.null_count else col).to_numpy()
    return pd.to_numeric(col.to_pandas(), errors="coerce").to_numpy("float64")


def _strings(col):
    """A column as Arrow strings: str(value) per distinct value; missing (null, NaN) stays null."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    enc = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    text = [None if v is None or v != v else str(v) for v in enc.dictionary.to_pylist()]
    return pa.array(text, pa.string()).take(enc.indices)


def _present(col) -> np.ndarray:
    """True where a value is given (not null, not NaN)."""
    given = pc.is_valid(col)
    if pa.types.is_floating(col.type):
        given = pc.and_(given, pc.invert(pc.fill_null(pc.is_nan(col), False)))
    return given.to_numpy(zero_copy_only=False)


def check_rows(table: pa.Table | pd.DataFrame, spec: FeatureSpec, require_label: bool = True,
               ignore_columns=()) -> tuple[pa.Table, pd.DataFrame]:
    """Splits rows into (usable rows, normalized, as an Arrow table of the spec's columns) and (bad rows:
    a DataFrame with the `reason` and the row as JSON). Vectorized (pyarrow.compute / numpy); only the bad
    rows become Python objects.

    The first problem of a row is its reason. Usable rows have: task key as string, timestamp in
    float64 seconds, label 0/1 (float32), finite numeric features (float32), "" for a missing
    categorical value; multi-valued / sequence columns as given.
    """
    if isinstance(table, pd.DataFrame):
        table = to_arrow(table)
    n = table.num_rows
    reasons: list[str] = [""]  # reason code per row: 0 = fine, i = reasons[i]
    code = np.zeros(n, np.int32)

    def flag(bad, why: str):
        bad = np.asarray(bad, bool) & (code == 0)
        if bad.any():
            reasons.append(why)
            code[bad] = len(reasons) - 1

    have = set(table.column_names)
    known = {*spec.task_key_columns, spec.timestamp, spec.label, *(f.name for f in spec.features), *ignore_columns}
    for c in table.column_names:
        if c not in known:
            flag(_present(table.column(c)),
                 f"unknown column {c!r}: add it to the feature spec or pass --ignore-columns {c}")
    required = [spec.task_key, spec.timestamp] + ([spec.label] if require_label else [])
    required += [f.name for f in spec.features if f.kind == "numeric"]
    for c in required:
        if c not in have:
            flag(np.ones(n, bool), f"missing column {c!r}: add it to the input or remove it from the spec")
    out = {}
    if spec.task_key in have:
        key = _strings(table.column(spec.task_key))
        blank = pc.fill_null(pc.or_(pc.equal(pc.utf8_length(key), 0), pc.utf8_is_space(key)), True)
        flag(blank.to_numpy(zero_copy_only=False), f"missing task key {spec.task_key!r}")
        out[spec.task_key] = pc.fill_null(key, "")
    if spec.timestamp in have:
        t = _float64(table.column(spec.timestamp))
        flag(~np.isfinite(t), f"missing or non-numeric timestamp {spec.timestamp!r}")
        flag(np.abs(t) > MAX_EPOCH_SECONDS, f"timestamp {spec.timestamp!r} looks like milliseconds "
             f"(> {MAX_EPOCH_SECONDS:.0e} s): write epoch seconds (divide by 1000)")
        out[spec.timestamp] = t
    if require_label and spec.label in have:
        label = _float64(table.column(spec.label))
        flag((label != 0) & (label != 1), f"label {spec.label!r} must be 0 or 1 (NaN or other value)")
        out[spec.label] = label.astype(np.float32)
    for f in spec.features:
        if f.name not in have:
            if f.kind != "numeric":
                out[f.name] = pa.repeat("", n)
            continue
        col = table.column(f.name)
        if f.kind == "numeric":
            num = _float64(col)
            flag(~np.isfinite(num), f"NaN/inf or non-numeric value in numeric feature {f.name!r}")
            out[f.name] = num.astype(np.float32)
        elif f.kind == "categorical":
            out[f.name] = pc.fill_null(_strings(col), "")
        else:
            out[f.name] = col
    bad = code > 0
    dead = pd.DataFrame({"reason": np.array(reasons, object)[code[bad]]})
    if bad.any():
        rows = table.filter(pa.array(bad)).to_pandas()
        dead["row"] = rows.to_json(orient="records", lines=True, default_handler=str).splitlines()
    else:
        dead["row"] = []
    return pa.table(out).filter(pa.array(~bad)), dead


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
    """(batch id, Arrow table) -> ("dead", (batch id, bad rows)) and ("rows", (bucket, (batch id, rows as
    Arrow IPC bytes))), and with `task_keys` ("tasks", the batch's task keys in the window, one a line) for
    the refresh's completeness check. With `shuffle_dir` the rows go to a file there (`spill_part`) and the
    element carries its path instead of the bytes.

    Rows outside [start, end) by timestamp are skipped (counted in a metric, not bad). With `max_samples`,
    each task keeps only its most recent `max_samples` rows of the batch ("most recent N" is associative:
    the cut before the shuffle changes nothing after it, and the shuffle carries at most N rows a task a
    batch)."""

    def __init__(self, spec: FeatureSpec, num_buckets: int, start: float | None = None, end: float | None = None,
                 ignore_columns=(), require_label: bool = True, max_samples: int | None = None,
                 task_keys: bool = False, shuffle_dir: str | None = None):
        self.spec_json, self.num_buckets, self.max_samples = spec.to_json(), num_buckets, max_samples
        self.task_keys, self.shuffle_dir = task_keys, shuffle_dir
        self.start, self.end, self.ignore_columns, self.require_label = start, end, tuple(ignore_columns), require_label

    def setup(self):
        self.spec = FeatureSpec.from_json(self.spec_json)

    def process(self, element):
        return timed("check", self._check(element))

    def _check(self, element):
        source, table = element
        ok, dead = check_rows(table, self.spec, self.require_label, self.ignore_columns)
        if len(dead):
            yield "dead", (source, dead)
        t = ok.column(self.spec.timestamp).to_numpy()
        keep = np.ones(len(t), bool)
        if self.start is not None:
            keep &= t >= self.start
        if self.end is not None:
            keep &= t < self.end
        beam.metrics.Metrics.counter("rows", "outside_window").inc(int((~keep).sum()))
        beam.metrics.Metrics.counter("rows", "used").inc(int(keep.sum()))
        if not keep.any():
            return
        ok, t = ok.filter(pa.array(keep)), t[keep]
        codes, keys = key_codes(ok.column(self.spec.task_key))
        if self.task_keys:
            yield "tasks", "\n".join(sorted(keys))
        rows = recent_order(codes, t, self.max_samples)  # (task, time, row) order, most recent N each
        bucket = key_buckets(keys, self.num_buckets)[codes]
        rows = rows[np.argsort(bucket[rows], kind="stable")]
        ok, bucket = ok.take(pa.array(rows)), bucket[rows]
        starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(rows)]):
            data = to_ipc(ok.slice(s, e - s))
            beam.metrics.Metrics.counter("rows", "shuffle_bytes").inc(len(data))
            if self.shuffle_dir:
                data = spill_part(data, self.shuffle_dir, int(bucket[s]), source)
            yield "rows", (int(bucket[s]), (source, data))


def select(kind: str):
    """Picks one kind of a ("kind", value) tagged element stream (portable across runners, unlike
    multi-output ParDo which Beam's DaskRunner does not separate)."""
    return beam.FlatMap(lambda e: [e[1]] if e[0] == kind else [])


def concat_sorted(parts) -> pa.Table | None:
    """Concatenates (batch id, Arrow IPC bytes or a spilled part's path) parts in batch-id order, so row
    order (the tie-break of equal timestamps) does not depend on the order a GroupByKey delivered them;
    None without parts. A batch delivered twice (at-least-once runners; Beam 2.77's DaskRunner re-delivers
    elements) is used once."""
    unique = dict(parts)
    if not unique:
        return None
    return pa.concat_tables([from_ipc(unique[k]) for k in sorted(unique)], promote_options="default")
