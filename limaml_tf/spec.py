"""The one declarative feature spec (no Keras: Beam workers and the serving client import it).

The spec is the single description of the data: training, the refresh pipeline
and serving all read it (it is saved as JSON beside every exported artifact, see
`limaml_tf.artifacts`). Raw values are floats (numeric), strings (categorical) and
lists of strings padded with "" (multi-valued); `limaml_tf.features.FeatureEncoder`
turns them into model-ready tensors inside the TensorFlow graph.

Sequences (a task's previous interactions, built causally by `limaml_tf.sequences`) are two kinds
of fixed length `max_len`, **most recent first**, padded at the end:

  sequence          strings, padded with "" (e.g. the item ids of the previous interactions);
  numeric_sequence  floats, padded with 0.0 (e.g. their labels, log time gaps).

A sequence feature has no mask of its own: position j is real when a categorical `sequence`
of the same `max_len` has a non-empty value there (the sequences of a spec describe the same
interactions, so their real lengths agree row by row; `validate` checks it). Given as lists,
a sequence's real length is the list's length.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # TensorFlow is imported where it is used: Beam drivers read specs without it
    import tensorflow as tf

KINDS = ("numeric", "categorical", "multi_valued", "sequence", "numeric_sequence")
LIST_KINDS = ("multi_valued", "sequence", "numeric_sequence")  # a fixed-length list of values per sample
SEQUENCE_KINDS = ("sequence", "numeric_sequence")
MULTI_VALUE_SEPARATOR = "|"


# Timestamps are epoch seconds; a value above this (year 5138) is milliseconds (or finer).
MAX_EPOCH_SECONDS = 1e11


class FeatureError(ValueError):
    """Bad input data: the message names the field and the fix."""


class ArtifactError(ValueError):
    """A file this package cannot read (not JSON, another package version, ...): the message names
    the file and the fix."""


class WriteError(OSError):
    """An output that cannot be written (read-only directory, full disk): the message names the path
    and the fix; `errno` is the original one."""


def check_seconds(seconds: np.ndarray, field: str) -> None:
    """FeatureError unless every value is a finite epoch time in seconds (not milliseconds)."""
    seconds = np.asarray(seconds, dtype="float64")
    bad = ~np.isfinite(seconds)
    if bad.any():
        raise FeatureError(f"{field} has {int(bad.sum())} missing (NaN/inf) value(s): drop or fill those rows")
    if len(seconds) and np.abs(seconds).max() > MAX_EPOCH_SECONDS:
        raise FeatureError(f"{field} looks like milliseconds (max {seconds.max():.0f} > {MAX_EPOCH_SECONDS:.0e} "
                           "seconds): give epoch seconds, e.g. divide by 1000")


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    kind: Literal["numeric", "categorical", "multi_valued", "sequence", "numeric_sequence"]
    num_bins: int = 0  # categorical / multi_valued: hash buckets (ignored with a vocabulary)
    vocabulary: tuple[str, ...] | None = None  # categorical: known values; others -> id 0
    max_len: int = 0  # multi_valued: values kept per sample; sequences: their length
    mean: float = 0.0  # numeric / numeric_sequence: standardization stats (set by FeatureSpec.fit)
    std: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise FeatureError(f"feature {self.name!r}: kind {self.kind!r} is unknown: set kind to one of {KINDS}")
        if not self.is_numeric and not self.vocabulary and self.num_bins < 1:
            raise FeatureError(f"feature {self.name!r}: set num_bins >= 1 or a vocabulary")
        if self.kind in LIST_KINDS and self.max_len < 1:
            raise FeatureError(f"feature {self.name!r}: {self.kind} needs max_len >= 1 (its values per sample)")
        if self.vocabulary is not None:
            object.__setattr__(self, "vocabulary", tuple(str(v) for v in self.vocabulary))

    @property
    def is_numeric(self) -> bool:
        return self.kind in ("numeric", "numeric_sequence")

    @property
    def cardinality(self) -> int:
        """Number of ids the encoder can emit (including 0). A categorical `sequence` keeps id 0 for
        padding and id 1 for an unknown value (a real past interaction with an item outside the
        vocabulary still counts), so its vocabulary starts at 2."""
        if self.is_numeric:
            return 0
        if self.kind == "sequence" and self.vocabulary:
            return 2 + len(self.vocabulary)
        return 1 + (len(self.vocabulary) if self.vocabulary else self.num_bins)

    @property
    def raw_dtype(self) -> tf.DType:
        import tensorflow as tf

        return tf.float32 if self.is_numeric else tf.string

    def raw_shape(self) -> tuple:
        return (self.max_len,) if self.kind in LIST_KINDS else ()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["vocabulary"] = list(self.vocabulary) if self.vocabulary is not None else None
        return d


SINGLE_DEFINITION = "task"  # the name of the one task definition of a spec without `task_keys`


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """`task_keys` (optional): several task definitions, {definition name: task-key column}, e.g.
    {"user": "user_id", "user_x_genre": "user_genre"}; `task_key` is the primary one's column (the
    tasks that drive a training bundle), every other column must refine it (each of its keys belongs
    to one primary task). See docs/task_definitions.md."""
    task_key: str
    timestamp: str
    label: str
    meta_features: tuple[Feature, ...]
    other_features: tuple[Feature, ...]
    task_keys: tuple[tuple[str, str], ...] = ()  # (definition, column) pairs, sorted; () = one definition

    def __post_init__(self):
        object.__setattr__(self, "meta_features", tuple(self.meta_features))
        object.__setattr__(self, "other_features", tuple(self.other_features))
        names = [f.name for f in self.features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise FeatureError(f"feature names appear twice in the spec: {sorted(dup)}")
        self._check_task_keys()
        reserved = {*self.task_key_columns, self.timestamp, self.label, "meta_embedding"}
        clash = reserved.intersection(names)
        if clash:
            raise FeatureError(f"features {sorted(clash)} clash with task_key/task_keys/timestamp/label/meta_embedding")

    def _check_task_keys(self):
        pairs = dict(self.task_keys) if self.task_keys else {}
        if not isinstance(pairs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()):
            raise FeatureError(f"task_keys must map definition names to column names, got {self.task_keys!r}")
        object.__setattr__(self, "task_keys", tuple(sorted(pairs.items())))
        if not pairs:
            return
        bad = [d for d in pairs if not d.replace("_", "").isalnum()]
        if bad:
            raise FeatureError(f"task_keys: definition names {bad} must be letters, digits and '_': rename them")
        if self.task_key not in pairs.values():
            raise FeatureError(f"task_keys {pairs} lack the primary task key column {self.task_key!r}: add it under "
                               "a definition name, e.g. {'user': " + repr(self.task_key) + ", ...}")
        if len(set(pairs.values())) != len(pairs):
            raise FeatureError(f"task_keys {pairs}: two definitions share a column: give each its own column")

    @property
    def definitions(self) -> dict[str, str]:
        """{definition: task-key column}, sorted by name (the order of the meta embeddings);
        {"task": task_key} for a spec with one definition."""
        return dict(self.task_keys) if self.task_keys else {SINGLE_DEFINITION: self.task_key}

    @property
    def primary_definition(self) -> str:
        return next(d for d, c in self.definitions.items() if c == self.task_key)

    @property
    def task_key_columns(self) -> list[str]:
        return list(self.definitions.values())

    def for_definition(self, definition: str) -> "FeatureSpec":
        """This spec with `definition` as the primary one (its column as `task_key`): what the refresh of
        that definition's embeddings groups by."""
        if definition not in self.definitions:
            raise FeatureError(f"unknown task definition {definition!r}: the spec has {list(self.definitions)}")
        return dataclasses.replace(self, task_key=self.definitions[definition])

    @property
    def features(self) -> tuple[Feature, ...]:
        return self.meta_features + self.other_features

    @property
    def meta_feature_names(self) -> list[str]:
        return [f.name for f in self.meta_features]

    @property
    def other_feature_names(self) -> list[str]:
        return [f.name for f in self.other_features]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise FeatureError(f"no feature named {name!r} in the spec; known: {[f.name for f in self.features]}")

    # -- serialization ---------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "task_key": self.task_key,
            "timestamp": self.timestamp,
            "label": self.label,
            "meta_features": [f.to_dict() for f in self.meta_features],
            "other_features": [f.to_dict() for f in self.other_features],
            **({"task_keys": dict(self.task_keys)} if self.task_keys else {}),  # absent: one definition
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        fields = {f.name for f in dataclasses.fields(Feature)}

        def feats(items):
            out = []
            for f in items:
                unknown = sorted(set(f) - fields) if isinstance(f, dict) else None
                if unknown is None or unknown or "name" not in f or "kind" not in f:
                    raise FeatureError(f"feature spec entry {f!r}: a feature is a dict with 'name', 'kind' and "
                                       f"only the keys {sorted(fields)}" + (f"; remove {unknown}" if unknown else ""))
                out.append(Feature(**{**f, "vocabulary": tuple(f["vocabulary"]) if f.get("vocabulary") else None}))
            return tuple(out)

        keys = ("task_key", "timestamp", "label", "meta_features", "other_features")
        missing = [k for k in keys if k not in d] if isinstance(d, dict) else list(keys)
        if missing:
            raise FeatureError(f"feature spec lacks {missing}: write it with FeatureSpec.to_json() (keys {list(keys)})")
        return cls(d["task_key"], d["timestamp"], d["label"], feats(d["meta_features"]), feats(d["other_features"]),
                   d.get("task_keys") or ())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "feature spec") -> "FeatureSpec":
        """The spec from its JSON text; errors name `source` (e.g. the file it was read from)."""
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ArtifactError(f"{source} is not JSON ({e}): write it with FeatureSpec.to_json()") from None
        try:
            return cls.from_dict(d)
        except FeatureError as e:
            raise FeatureError(f"{source}: {e}") from None

    # -- data --------------------------------------------------------------
    def fit(self, df: pd.DataFrame) -> "FeatureSpec":
        """Returns a copy with numeric standardization stats computed on `df` (training data)."""
        self.validate(df)

        def fitted(f: Feature) -> Feature:
            if not f.is_numeric:
                return f
            col = pd.Series(np.concatenate([np.asarray(_number_list(v), "float64") for v in df[f.name]] or [[]])
                            if f.kind == "numeric_sequence" else df[f.name].astype("float64"))
            if col.empty:
                return f
            std = float(col.std()) if len(col) > 1 else 1.0
            return dataclasses.replace(f, mean=float(col.mean()), std=std if std > 1e-12 else 1.0)

        return dataclasses.replace(self, meta_features=tuple(map(fitted, self.meta_features)),
                                   other_features=tuple(map(fitted, self.other_features)))

    def validate(self, df: pd.DataFrame, require_label: bool = True) -> None:
        """Raises FeatureError naming the column and the fix for anything the pipeline cannot use."""
        required = [*self.task_key_columns, self.timestamp] + ([self.label] if require_label else [])
        required += [f.name for f in self.features]
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise FeatureError(f"missing column(s) {missing}: add them to the data or remove them from the spec")
        for column in self.task_key_columns:
            try:
                keys = pd.Series(df[column].unique())  # each distinct key once
            except TypeError:  # unhashable: lists, dicts
                raise FeatureError(f"column {column!r} (task key) holds lists or other non-scalar values: give "
                                   "one string or integer per row") from None
            if keys.isna().any() or (keys.astype(str).str.strip() == "").any():
                raise FeatureError(f"column {column!r} (task key) has missing or blank values: drop those rows")
        self._check_refines(df)
        ts = df[self.timestamp]
        if pd.api.types.is_datetime64_any_dtype(ts):
            check_seconds(np.where(ts.isna(), np.nan, 0.0), f"column {self.timestamp!r} (timestamp)")
        elif pd.api.types.is_numeric_dtype(ts) and not pd.api.types.is_bool_dtype(ts):
            check_seconds(ts.to_numpy(dtype="float64", na_value=np.nan), f"column {self.timestamp!r} (timestamp)")
        else:
            raise FeatureError(f"column {self.timestamp!r} (timestamp) must be numeric epoch seconds or datetime, "
                               f"got {ts.dtype}: convert it (e.g. pd.to_datetime)")
        if require_label:
            label = df[self.label]
            if not pd.api.types.is_numeric_dtype(label) and not pd.api.types.is_bool_dtype(label):
                raise FeatureError(f"column {self.label!r} (label) must be 0/1, got dtype {label.dtype}")
            if label.isna().any():
                raise FeatureError(f"column {self.label!r} (label) has NaN in {int(label.isna().sum())} rows: "
                                   "drop or fill them")
            bad = ~label.isin([0, 1])
            if bad.any():
                raise FeatureError(f"column {self.label!r} (label) must be 0 or 1; found {label[bad].iloc[0]!r}")
        for f in self.features:
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
        self._check_sequences(df)
        self._check_duplicates(df, required)

    def _check_refines(self, df: pd.DataFrame) -> None:
        """Every non-primary definition's key belongs to one primary task (a user x genre key to one user):
        a training bundle forms those tasks from its primary task's samples."""
        for definition, column in self.definitions.items():
            if column == self.task_key:
                continue
            owners = df.groupby(df[column].astype(str), sort=False)[self.task_key].nunique()
            if len(owners) and owners.max() > 1:
                raise FeatureError(f"column {column!r} (task key of definition {definition!r}) must refine "
                                   f"{self.task_key!r}: its value {owners.idxmax()!r} appears under "
                                   f"{int(owners.max())} {self.task_key!r} values; include the {self.task_key!r} "
                                   "value in each key (e.g. user + '|' + genre)")

    def _check_sequences(self, df: pd.DataFrame) -> None:
        """Sequence values are lists (most recent first) of at most max_len non-empty strings / finite
        numbers, and the sequences of one max_len have the same real length on every row."""
        lengths = {}
        for f in self.features:
            if f.kind not in SEQUENCE_KINDS:
                continue
            n = np.zeros(len(df), np.int64)
            for i, v in enumerate(df[f.name].to_numpy()):
                try:
                    items = _number_list(v) if f.kind == "numeric_sequence" else _string_list(v)
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
        if any(f.kind == "numeric_sequence" for f in self.features):
            masks = {f.max_len for f in self.features if f.kind == "sequence"}
            alone = [f.name for f in self.features if f.kind == "numeric_sequence" and f.max_len not in masks]
            if alone:
                raise FeatureError(f"numeric_sequence feature(s) {alone} have no categorical `sequence` feature of the "
                                   "same max_len, which marks their real positions: add one (e.g. the item ids)")

    def _check_duplicates(self, df: pd.DataFrame, columns: list[str]) -> None:
        """Rows identical in every spec column (a logged event twice) are an error; rows of one task with
        the same timestamp but different values are kept, in their original order."""
        same_time = df.duplicated([self.task_key, self.timestamp], keep=False)
        if not same_time.any():
            return
        unhashable = (list, tuple, np.ndarray, dict, set)
        candidates = df.loc[same_time, columns].map(lambda v: repr(v) if isinstance(v, unhashable) else v)
        dup = candidates.duplicated()
        if dup.any():
            first = candidates[dup].iloc[0]
            raise FeatureError(f"{int(dup.sum())} row(s) repeat another row in every column (e.g. {self.task_key}="
                               f"{first[self.task_key]!r}, {self.timestamp}={first[self.timestamp]!r}): drop them "
                               "with df.drop_duplicates() (rows of one task at the same time that differ are kept)")

    def raw_arrays(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Raw feature columns as numpy arrays in the encoder's input format."""
        out = {}
        for f in self.features:
            col = df[f.name]
            if f.kind == "numeric":
                out[f.name] = col.to_numpy(dtype=np.float32)
            elif f.kind == "categorical":
                out[f.name] = col.astype(str).to_numpy(dtype=object)
            elif f.kind == "numeric_sequence":
                out[f.name] = numeric_sequence_to_array(col, f.max_len)
            else:
                out[f.name] = multi_values_to_array(col, f.max_len)
        return out

    def input_signature(self, batch_dims: tuple = (None,)) -> dict[str, tf.TensorSpec]:
        import tensorflow as tf

        return {f.name: tf.TensorSpec(batch_dims + f.raw_shape(), f.raw_dtype, name=f.name) for f in self.features}

    def dummy_inputs(self, batch: int = 2) -> dict[str, tf.Tensor]:
        import tensorflow as tf

        return {f.name: tf.zeros((batch,) + f.raw_shape(), f.raw_dtype) for f in self.features}


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


def _string_list(v) -> list[str]:
    if isinstance(v, str):
        return [x for x in v.split(MULTI_VALUE_SEPARATOR) if x]
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return []
    if isinstance(v, (list, tuple, np.ndarray)) and all(isinstance(x, str) for x in v):
        return list(v)
    raise TypeError(f"not a list of strings: {v!r}")


def _number_list(v) -> np.ndarray:
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
    """Lists of numbers (or "0.5|1" strings) -> [n, max_len] float32, padded with 0.0 (see module docstring)."""
    out = np.zeros((len(col), max_len), np.float32)
    for i, v in enumerate(col.to_numpy()):
        values = _number_list(v)[:max_len]
        out[i, : len(values)] = values
    return out
