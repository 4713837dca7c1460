"""Raw data against a feature spec: the value kinds and formats, the checks of a DataFrame
(`validate_frame`, behind `FeatureSpec.validate`) and the conversion of its columns to the arrays
the encoder reads. No Keras, no TensorFlow: Beam workers and the serving client import it.

The formats are described in `limaml_tf.spec`: floats (numeric), strings (categorical), lists of
strings padded with "" (multi-valued, or "a|b|c" strings), and sequences of fixed length `max_len`,
most recent first (`sequence`: strings padded with ""; `numeric_sequence`: floats padded with 0.0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from limaml_tf.api_export import limaml_export

KINDS = ("numeric", "categorical", "multi_valued", "sequence", "numeric_sequence")
LIST_KINDS = ("multi_valued", "sequence", "numeric_sequence")  # a fixed-length list of values per sample
SEQUENCE_KINDS = ("sequence", "numeric_sequence")
MULTI_VALUE_SEPARATOR = "|"


# Timestamps are epoch seconds; a value above this (year 5138) is milliseconds (or finer).
MAX_EPOCH_SECONDS = 1e11


@limaml_export
class FeatureError(ValueError):
    """Bad input data: the message names the field and the fix."""


def check_seconds(seconds: np.ndarray, field: str) -> None:
    """FeatureError unless every value is a finite epoch time in seconds (not milliseconds)."""
    seconds = np.asarray(seconds, dtype="float64")
    bad = ~np.isfinite(seconds)
    if bad.any():
        raise FeatureError(f"{field} has {int(bad.sum())} missing (NaN/inf) value(s): drop or fill those rows")
    if len(seconds) and np.abs(seconds).max() > MAX_EPOCH_SECONDS:
        raise FeatureError(f"{field} looks like milliseconds (max {seconds.max():.0f} > {MAX_EPOCH_SECONDS:.0e} "
                           "seconds): give epoch seconds, e.g. divide by 1000")


# -- checks of a DataFrame -------------------------------------------------------
def validate_frame(spec, df: pd.DataFrame, require_label: bool = True) -> None:
    """Raises FeatureError naming the column and the fix for anything in `df` the pipeline cannot use
    with the `limaml_tf.spec.FeatureSpec` `spec`."""
    required = [*spec.task_key_columns, spec.timestamp] + ([spec.label] if require_label else [])
    required += [f.name for f in spec.features]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise FeatureError(f"missing column(s) {missing}: add them to the data or remove them from the spec")
    for column in spec.task_key_columns:
        try:
            keys = pd.Series(df[column].unique())  # each distinct key once
        except TypeError:  # unhashable: lists, dicts
            raise FeatureError(f"column {column!r} (task key) holds lists or other non-scalar values: give "
                               "one string or integer per row") from None
        if keys.isna().any() or (keys.astype(str).str.strip() == "").any():
            raise FeatureError(f"column {column!r} (task key) has missing or blank values: drop those rows")
    _check_refines(spec, df)
    ts = df[spec.timestamp]
    if pd.api.types.is_datetime64_any_dtype(ts):
        check_seconds(np.where(ts.isna(), np.nan, 0.0), f"column {spec.timestamp!r} (timestamp)")
    elif pd.api.types.is_numeric_dtype(ts) and not pd.api.types.is_bool_dtype(ts):
        check_seconds(ts.to_numpy(dtype="float64", na_value=np.nan), f"column {spec.timestamp!r} (timestamp)")
    else:
        raise FeatureError(f"column {spec.timestamp!r} (timestamp) must be numeric epoch seconds or datetime, "
                           f"got {ts.dtype}: convert it (e.g. pd.to_datetime)")
    if require_label:
        label = df[spec.label]
        if not pd.api.types.is_numeric_dtype(label) and not pd.api.types.is_bool_dtype(label):
            raise FeatureError(f"column {spec.label!r} (label) must be 0/1, got dtype {label.dtype}")
        if label.isna().any():
            raise FeatureError(f"column {spec.label!r} (label) has NaN in {int(label.isna().sum())} rows: "
                               "drop or fill them")
        bad = ~label.isin([0, 1])
        if bad.any():
            raise FeatureError(f"column {spec.label!r} (label) must be 0 or 1; found {label[bad].iloc[0]!r}")
    for f in spec.features:
        if f.kind == "multi_valued":
            values = df[f.name].to_numpy()
            ok = [v is None or isinstance(v, str) or (isinstance(v, float) and np.isnan(v))
                  or (isinstance(v, (list, tuple, np.ndarray)) and all(isinstance(s, str) for s in v))
                  for v in values]
            if not all(ok):
                bad = values[ok.index(False)]
                raise FeatureError(f"multi-valued feature {f.name!r} has the value {bad!r} ({type(bad).__name__}): "
                                   f"give lists of strings or '{MULTI_VALUE_SEPARATOR}'-separated strings")
        if f.kind == "numeric":
            col = df[f.name]
            if not pd.api.types.is_numeric_dtype(col):
                raise FeatureError(f"numeric feature {f.name!r} has dtype {col.dtype}: convert it to float")
            if not np.isfinite(col.to_numpy(dtype="float64")).all():
                raise FeatureError(f"numeric feature {f.name!r} has NaN/inf values: fill or drop them")
    _check_sequences(spec, df)
    _check_duplicates(spec, df, required)


def _check_refines(spec, df: pd.DataFrame) -> None:
    """Every non-primary definition's key belongs to one primary task (a user x genre key to one user):
    a training bundle forms those tasks from its primary task's samples."""
    for definition, column in spec.definitions.items():
        if column == spec.task_key:
            continue
        owners = df.groupby(df[column].astype(str), sort=False)[spec.task_key].nunique()
        if len(owners) and owners.max() > 1:
            raise FeatureError(f"column {column!r} (task key of definition {definition!r}) must refine "
                               f"{spec.task_key!r}: its value {owners.idxmax()!r} appears under "
                               f"{int(owners.max())} {spec.task_key!r} values; include the {spec.task_key!r} "
                               "value in each key (e.g. user + '|' + genre)")


def _check_sequences(spec, df: pd.DataFrame) -> None:
    """Sequence values are lists (most recent first) of at most max_len non-empty strings / finite
    numbers, and the sequences of one max_len have the same real length on every row."""
    lengths = {}
    for f in spec.features:
        if f.kind not in SEQUENCE_KINDS:
            continue
        n = np.zeros(len(df), np.int64)
        for i, v in enumerate(df[f.name].to_numpy()):
            try:
                items = number_list(v) if f.kind == "numeric_sequence" else string_list(v)
            except (TypeError, ValueError):
                items = None
            if items is None or (f.kind == "numeric_sequence" and not np.isfinite(items).all()) or \
                    (f.kind == "sequence" and "" in items):
                what = "finite numbers" if f.kind == "numeric_sequence" else "non-empty strings"
                raise FeatureError(f"{f.kind} feature {f.name!r} has the value {v!r} on row {i}: give a list of "
                                   f"{what}, most recent first (an empty list when there is no history)")
            if len(items) > f.max_len:
                raise FeatureError(f"{f.kind} feature {f.name!r} has {len(items)} values on row {i}, more than "
                                   f"its max_len {f.max_len}: keep the {f.max_len} most recent (or raise max_len)")
            n[i] = len(items)
        other = lengths.setdefault(f.max_len, (f.name, n))
        if other[0] != f.name and (other[1] != n).any():
            i = int(np.argmax(other[1] != n))
            raise FeatureError(f"sequence features {other[0]!r} and {f.name!r} (max_len {f.max_len}) describe the "
                               f"same interactions but have {other[1][i]} and {n[i]} values on row {i}: build them "
                               "together (limaml_tf.sequences.add_sequences)")
    if any(f.kind == "numeric_sequence" for f in spec.features):
        masks = {f.max_len for f in spec.features if f.kind == "sequence"}
        alone = [f.name for f in spec.features if f.kind == "numeric_sequence" and f.max_len not in masks]
        if alone:
            raise FeatureError(f"numeric_sequence feature(s) {alone} have no categorical `sequence` feature of the "
                               "same max_len, which marks their real positions: add one (e.g. the item ids)")


def _check_duplicates(spec, df: pd.DataFrame, columns: list[str]) -> None:
    """Rows identical in every spec column (a logged event twice) are an error; rows of one task with
    the same timestamp but different values are kept, in their original order."""
    same_time = df.duplicated([spec.task_key, spec.timestamp], keep=False)
    if not same_time.any():
        return
    unhashable = (list, tuple, np.ndarray, dict, set)
    candidates = df.loc[same_time, columns].map(lambda v: repr(v) if isinstance(v, unhashable) else v)
    dup = candidates.duplicated()
    if dup.any():
        first = candidates[dup].iloc[0]
        raise FeatureError(f"{int(dup.sum())} row(s) repeat another row in every column (e.g. {spec.task_key}="
                           f"{first[spec.task_key]!r}, {spec.timestamp}={first[spec.timestamp]!r}): drop them "
                           "with df.drop_duplicates() (rows of one task at the same time that differ are kept)")


# -- columns -> the encoder's input arrays ---------------------------------------
def multi_values_to_array(col: pd.Series, max_len: int) -> np.ndarray:
    """Lists (or "a|b|c" strings) -> [n, max_len] object array of strings, padded with ""."""
    values = col.to_numpy()
    try:  # repeated values (e.g. an item's tags on every interaction with it) are parsed once
        codes, values = pd.factorize(values, use_na_sentinel=False)
    except TypeError:  # lists are unhashable
        codes = None
    out = np.full((len(values), max_len), "", dtype=object)
    for i, v in enumerate(values):
        if isinstance(v, str):
            v = [s for s in v.split(MULTI_VALUE_SEPARATOR) if s]
        elif v is None or (isinstance(v, float) and np.isnan(v)):
            v = []
        v = [str(s) for s in v][:max_len]
        out[i, : len(v)] = v
    return out if codes is None else out[codes]


def string_list(v) -> list[str]:
    """A categorical sequence's values: a list / array of strings, or "a|b" (CSV); None / NaN: empty."""
    if isinstance(v, str):
        return [x for x in v.split(MULTI_VALUE_SEPARATOR) if x]
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return []
    if isinstance(v, (list, tuple, np.ndarray)) and all(isinstance(x, str) for x in v):
        return list(v)
    raise TypeError(f"not a list of strings: {v!r}")


def number_list(v) -> np.ndarray:
    """A numeric sequence's values: a list / array of numbers, or "0.5|1" (CSV); None: empty."""
    if isinstance(v, str):
        return np.asarray([float(x) for x in v.split(MULTI_VALUE_SEPARATOR) if x], "float64")
    if v is None:
        return np.zeros(0)
    arr = np.asarray(v)
    if arr.ndim != 1 or arr.dtype.kind not in "biuf":
        raise TypeError(f"not a list of numbers: {v!r}")
    return arr.astype("float64")


def numeric_sequence_to_array(col: pd.Series, max_len: int) -> np.ndarray:
    """Lists of numbers (or "0.5|1" strings) -> [n, max_len] float32, padded with 0.0 (see `limaml_tf.spec`)."""
    out = np.zeros((len(col), max_len), np.float32)
    for i, v in enumerate(col.to_numpy()):
        values = number_list(v)[:max_len]
        out[i, : len(values)] = values
    return out
