"""Row checks and the dead letter of the Beam pipelines.

`check_rows` sends every row the model cannot use to the dead-letter output with the reason (missing task
key, NaN/inf numeric feature, unknown column, ...): counted, never silently dropped. Vectorized with
pyarrow.compute / numpy. The dead letter is written through `beam_pipelines.sinks` (committed exactly
once).
"""

from __future__ import annotations

import json
import os

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from beam_pipelines.interactions import to_arrow
from beam_pipelines.sinks import WriteShards
from limaml_tf.raw_data import MAX_EPOCH_SECONDS
from limaml_tf.spec import FeatureSpec

DEAD_LETTER_COLUMNS = ("source", "reason", "row")


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
