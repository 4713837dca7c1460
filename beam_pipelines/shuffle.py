"""Bucketing rows by task and carrying them across the Beam pipelines' shuffle.

Rows are keyed by `bucket = crc32(task_key) % num_buckets` (stable across processes and runs, unlike
Python's salted `hash`), so one GroupByKey brings every row of a task to one worker while elements stay
few and large. A bucket's part of an input batch crosses the shuffle as Arrow IPC bytes (`to_ipc`):
Beam's coder copies bytes as they are, where a pickled DataFrame would be unpickled and pickled again by
FnApiRunner's driver at every GroupByKey. With a shuffle directory the bytes go to a file of their own
(`spill_part`) and only its path crosses the runner's GroupByKey (see docs/refresh.md#runners).
"""

from __future__ import annotations

import hashlib
import uuid
import zlib

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.interactions import timed
from beam_pipelines.row_checks import check_rows
from limaml_tf.spec import FeatureSpec
from limaml_tf.tasks import recent_order


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
    bytes as they are; FnApiRunner holds a GroupByKey's whole input in the driver, which zstd keeps
    smaller, see docs/refresh.md#data-path-and-throughput)."""
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
    None without parts. A batch delivered twice (at-least-once runners re-deliver elements, see
    docs/refresh.md#runners) is used once."""
    unique = dict(parts)
    if not unique:
        return None
    return pa.concat_tables([from_ipc(unique[k]) for k in sorted(unique)], promote_options="default")
