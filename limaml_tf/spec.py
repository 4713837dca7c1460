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

from limaml_tf.api_export import limaml_export
from limaml_tf.raw_data import (KINDS, LIST_KINDS, FeatureError, multi_values_to_array, number_list,
                                numeric_sequence_to_array, validate_frame)

if TYPE_CHECKING:  # TensorFlow is imported where it is used: Beam drivers read specs without it
    import tensorflow as tf


class ArtifactError(ValueError):
    """A file this package cannot read (not JSON, another package version, ...): the message names
    the file and the fix."""


class WriteError(OSError):
    """An output that cannot be written (read-only directory, full disk): the message names the path
    and the fix; `errno` is the original one."""


@limaml_export
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


@limaml_export
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
            col = pd.Series(np.concatenate([np.asarray(number_list(v), "float64") for v in df[f.name]] or [[]])
                            if f.kind == "numeric_sequence" else df[f.name].astype("float64"))
            if col.empty:
                return f
            std = float(col.std()) if len(col) > 1 else 1.0
            return dataclasses.replace(f, mean=float(col.mean()), std=std if std > 1e-12 else 1.0)

        return dataclasses.replace(self, meta_features=tuple(map(fitted, self.meta_features)),
                                   other_features=tuple(map(fitted, self.other_features)))

    def validate(self, df: pd.DataFrame, require_label: bool = True) -> None:
        """Raises FeatureError naming the column and the fix for anything the pipeline cannot use
        (see `limaml_tf.raw_data.validate_frame`)."""
        validate_frame(self, df, require_label)

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
