"""The YAML config of `limaml train --config my_model.yaml` (examples in examples/), checked before
anything runs: an unknown key, a wrong type or a missing file is an error naming the key and the fix.

    data:      path (Parquet / CSV file or a directory of them; a MovieLens directory with `movielens`),
               format (auto | parquet | csv), movielens (ml-100k | ml-1m), synthetic ({num_tasks, seed, ...})
    features:  the FeatureSpec as a mapping (limaml_tf.spec), or "movielens" (limaml_tf.movielens.movielens_spec)
    model:     meta_block {type: mlp | id | transformer, ...}, or one such block per task definition of
               the spec's task_keys ({user: {type: mlp}, user_x_genre: {type: mlp, features: [...]}}),
               global_block {type: mlp | dcn, features: other | all | [names]},
               and LiMAMLModel's options (inner_steps, inner_learning_rate, first_order, ...)
    training:  epochs, tasks_per_batch, learning_rate, clipnorm, warmup_fraction, max_samples_per_task,
               seed, split [train end, valid end] quantiles of time, backup (resume after a crash)
    output:    dir (model.keras, logs/, metrics.json), saved_models, model_name, export

Paths are relative to the directory `limaml` runs in. Keras-free: building the model imports it.
"""

from __future__ import annotations

import dataclasses
import glob
import inspect
import os

import pandas as pd

from limaml_tf.raw_data import FeatureError
from limaml_tf.spec import FeatureSpec


class ConfigError(ValueError):
    """A config file this package cannot use: the message names the file, the key and the fix."""


SECTIONS = {
    "data": {"path": None, "format": "auto", "movielens": None, "synthetic": None},
    "features": None,
    "model": {"meta_block": {"type": "mlp", "output_dim": 8}, "global_block": {"type": "mlp"}},
    "training": {"epochs": 15, "tasks_per_batch": 32, "learning_rate": 3e-3, "clipnorm": 1.0, "warmup_fraction": 0.05,
                 "max_samples_per_task": 64, "seed": 0, "split": [0.7, 0.85], "backup": True,
                 "eval_max_samples_per_task": 32},
    "output": {"dir": "runs/limaml", "saved_models": "saved_models", "model_name": "limaml", "export": True},
}
META_BLOCKS = {"mlp": ("MLPMetaBlock", "features"), "id": ("IDEmbeddingMetaBlock", "feature"),
               "transformer": ("TransformerMetaBlock", "features")}
GLOBAL_BLOCKS = {"mlp": "MLPGlobalBlock", "dcn": "DCNGlobalBlock"}
FORMATS = ("auto", "parquet", "csv")


@dataclasses.dataclass
class TrainConfig:
    source: str  # the file the config came from (named in errors)
    data: dict
    features: dict | str
    model: dict
    training: dict
    output: dict

    def where(self, *keys) -> str:
        return f"{self.source}: {'.'.join(keys)}"


def load(path: str, overrides: dict | None = None) -> TrainConfig:
    """Reads and checks a config file; `overrides` ({"data.path": ..., "training.epochs": ...}) win over it."""
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"--config {path!r} does not exist: give a YAML file (examples/synthetic.yaml is one)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path!r} is not valid YAML ({' '.join(str(e).split())}): fix the syntax "
                          "(examples/synthetic.yaml is a valid one)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the file must be a mapping of sections {sorted(SECTIONS)}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}: the sections are {sorted(SECTIONS)}")
    merged = {}
    for name, default in SECTIONS.items():
        value = raw.get(name)
        if default is None or name == "model":
            merged[name] = value if value is not None else default
            continue
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{path}: {name} must be a mapping with keys {sorted(default)}")
        bad = sorted(set(value or {}) - set(default))
        if bad:
            raise ConfigError(f"{path}: unknown key(s) {[f'{name}.{k}' for k in bad]}: {name} takes {sorted(default)}")
        merged[name] = {**default, **(value or {})}
    for key, value in (overrides or {}).items():
        section, field = key.split(".")
        if value is not None:
            merged[section][field] = value
    if (overrides or {}).get("data.path"):  # a file given on the command line replaces generated data
        merged["data"]["synthetic"] = None
    config = TrainConfig(path, **merged)
    _check(config)
    return config


def _check(c: TrainConfig) -> None:
    d = c.data
    sources = [k for k in ("movielens", "synthetic") if d[k]]
    if len(sources) > 1 or (not sources and not d["path"]) or (d["synthetic"] and d["path"]):
        raise ConfigError(f"{c.where('data')}: give one of data.path (a Parquet / CSV file or directory), "
                          "data.movielens with data.path, or data.synthetic (see examples/)")
    if d["movielens"] and not d["path"]:
        raise ConfigError(f"{c.where('data', 'path')}: give the directory of the unzipped MovieLens archive "
                          "(or --data-path)")
    if d["format"] not in FORMATS:
        raise ConfigError(f"{c.where('data', 'format')} is {d['format']!r}: use one of {FORMATS}")
    if c.features is None and not d["synthetic"]:
        raise ConfigError(f"{c.where('features')} is missing: describe the columns (task_key, timestamp, label, "
                          "meta_features, other_features; see examples/synthetic.yaml) or use 'movielens'")
    if d["movielens"] and c.features not in (None, "movielens"):
        raise ConfigError(f"{c.where('features')}: MovieLens data has its features built in: write "
                          "`features: movielens`")
    if isinstance(c.features, str) and c.features != "movielens":
        raise ConfigError(f"{c.where('features')} is {c.features!r}: give the feature spec as a mapping, or "
                          "'movielens' (built in)")
    if not isinstance(c.model, dict):
        raise ConfigError(f"{c.where('model')} must be a mapping (meta_block, global_block, LiMAMLModel options)")
    meta, glob_ = c.model.get("meta_block") or {}, c.model.get("global_block") or {}
    if not isinstance(meta, dict):
        raise ConfigError(f"{c.where('model', 'meta_block')} must be a mapping: {{type: mlp, ...}}, or one such "
                          "mapping per task definition")
    for where, block in _meta_blocks(meta).items():
        if block.get("type", "mlp") not in META_BLOCKS:
            raise ConfigError(f"{c.where('model', *where, 'type')} is {block.get('type')!r}: use one of "
                              f"{sorted(META_BLOCKS)}")
    if glob_.get("type", "mlp") not in GLOBAL_BLOCKS:
        raise ConfigError(f"{c.where('model', 'global_block', 'type')} is {glob_.get('type')!r}: use one of "
                          f"{sorted(GLOBAL_BLOCKS)}")
    t = c.training
    for key in ("epochs", "tasks_per_batch", "max_samples_per_task", "eval_max_samples_per_task"):
        if isinstance(t[key], bool) or not isinstance(t[key], int) or t[key] < 1:
            raise ConfigError(f"{c.where('training', key)} is {t[key]!r}: give an integer >= 1")
    for key in ("learning_rate", "warmup_fraction"):
        if not isinstance(t[key], (int, float)) or not 0 <= t[key] < float("inf"):
            raise ConfigError(f"{c.where('training', key)} is {t[key]!r}: give a number >= 0")
    split = t["split"]
    if not (isinstance(split, list) and len(split) == 2 and all(isinstance(q, (int, float)) for q in split)
            and 0 < split[0] < split[1] < 1):
        raise ConfigError(f"{c.where('training', 'split')} is {split!r}: give two time quantiles 0 < a < b < 1 "
                          "(train before a, validation before b, test after), e.g. [0.7, 0.85]")


# -- data --------------------------------------------------------------------------------------

def _files(path: str, fmt: str) -> tuple[list[str], str]:
    if os.path.isdir(path):
        found = {f: sorted(glob.glob(os.path.join(path, f"*.{f}"))) for f in ("parquet", "csv")}
        kinds = [f for f, files in found.items() if files and fmt in ("auto", f)]
        if len(kinds) != 1:
            raise ConfigError(f"data.path {path!r} holds {({k: len(v) for k, v in found.items()})} Parquet / CSV "
                              "files: put one format in the directory (or set data.format)")
        return found[kinds[0]], kinds[0]
    if not os.path.exists(path):
        raise FileNotFoundError(f"data.path {path!r} does not exist: give a Parquet or CSV file (or a directory "
                                "of them) with --data-path or data.path")
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    kind = fmt if fmt != "auto" else {"parquet": "parquet", "pq": "parquet", "csv": "csv"}.get(ext)
    if kind is None:
        raise ConfigError(f"data.path {path!r}: cannot tell the format from the name: set data.format to "
                          "parquet or csv")
    return [path], kind


def read_table(path: str, spec: FeatureSpec | None = None, fmt: str = "auto") -> pd.DataFrame:
    """A Parquet / CSV file or directory as a DataFrame. CSV: the task key and categorical / multi-valued
    ("a|b") columns are read as text (empty = missing), a text timestamp is parsed as a date."""
    files, kind = _files(path, fmt)
    if kind == "parquet":
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    text = [] if spec is None else [spec.task_key] + [f.name for f in spec.features if f.kind != "numeric"]
    df = pd.concat([pd.read_csv(f, dtype={c: str for c in text}) for f in files], ignore_index=True)
    for c in text[1:]:
        if c in df:
            df[c] = df[c].fillna("")
    if spec is not None and spec.timestamp in df and df[spec.timestamp].dtype == object:
        try:
            df[spec.timestamp] = pd.to_datetime(df[spec.timestamp], utc=True)
        except (ValueError, TypeError) as e:
            raise FeatureError(f"column {spec.timestamp!r} (timestamp) of {path!r} is neither numbers nor dates "
                               f"({e}): give epoch seconds or ISO-8601 dates") from None
    return df


def load_data(c: TrainConfig) -> tuple[pd.DataFrame, FeatureSpec | None]:
    """(interactions, spec or None when it is fitted on the training period: MovieLens)."""
    d = c.data
    if d["synthetic"] is not None:
        from limaml_tf.synthetic import make_synthetic

        options = d["synthetic"] if isinstance(d["synthetic"], dict) else {}
        try:
            df, spec = make_synthetic(**options)
        except TypeError as e:
            raise ConfigError(f"{c.where('data', 'synthetic')}: {e}: see limaml_tf.synthetic.make_synthetic") from None
        return df, (spec if c.features is None else _spec(c))
    if d["movielens"]:
        from limaml_tf.movielens import load_tasks_frame

        # meta blocks keyed {user, user_x_genre}: the frame adds the user x main genre key (movielens_spec's task_keys)
        per_definition = any(len(w) == 2 for w in _meta_blocks(dict(c.model.get("meta_block") or {})))
        return load_tasks_frame(d["movielens"], d["path"], genre_tasks=per_definition), None
    spec = _spec(c)
    return read_table(d["path"], spec, d["format"]), spec


def _spec(c: TrainConfig) -> FeatureSpec:
    if not isinstance(c.features, dict):
        raise ConfigError(f"{c.where('features')}: give the feature spec as a mapping for this data")
    try:
        return FeatureSpec.from_dict(c.features)
    except FeatureError as e:
        raise ConfigError(f"{c.where('features')}: {e}") from None


def fit_spec(c: TrainConfig, spec: FeatureSpec | None, train_df: pd.DataFrame) -> FeatureSpec:
    """The spec with statistics (and, for MovieLens, vocabularies) from the training period."""
    if spec is None:
        from limaml_tf.movielens import movielens_spec

        return movielens_spec(train_df, user_id_feature=(c.model.get("meta_block") or {}).get("type") == "id")
    return spec.fit(train_df)


# -- model -------------------------------------------------------------------------------------

def _features(spec: FeatureSpec, value, default, where: str):
    if value is None:
        return default
    if value == "all":
        return spec.features
    if value == "other":
        return spec.other_features
    if value == "meta":
        return spec.meta_features
    if not isinstance(value, list):
        raise ConfigError(f"{where} is {value!r}: give 'meta', 'other', 'all' or a list of feature names")
    return tuple(spec.feature(name) for name in value)


def _block(cls, options: dict, where: str, **fixed):
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"} - set(fixed)
    bad = sorted(set(options) - params)
    if bad:
        raise ConfigError(f"{where}: unknown option(s) {bad}: {cls.__name__} takes {sorted(params)}")
    return cls(**fixed, **options)


def _meta_blocks(meta: dict) -> dict:
    """model.meta_block as {key path: block options}: one block, or one per task definition (a mapping whose
    values are all mappings, keyed by definition)."""
    if meta and all(isinstance(v, dict) for v in meta.values()):
        return {("meta_block", d): v for d, v in meta.items()}
    return {("meta_block",): meta}


def _meta_block(c: TrainConfig, spec: FeatureSpec, options: dict, where: tuple):
    from limaml_tf import blocks

    options = dict(options)
    meta_cls, feature_key = META_BLOCKS[options.pop("type", "mlp")]
    where = c.where("model", *where)
    if feature_key == "feature":
        name = options.pop("feature", None)
        if name is None:
            raise ConfigError(f"{where}.feature is missing: name the categorical meta feature the ID table "
                              "reads (e.g. user_id)")
        fixed = {"feature": spec.feature(name)}
    else:
        fixed = {"features": _features(spec, options.pop("features", None), spec.meta_features, f"{where}.features")}
    return _block(getattr(blocks, meta_cls), options, where, **fixed)


def build_meta_block(c: TrainConfig, spec: FeatureSpec):
    """One meta block, or {definition: meta block} when model.meta_block has one per task definition (they
    must be the spec's `task_keys` definitions)."""
    per_block = _meta_blocks(dict(c.model.get("meta_block") or {}))
    if list(per_block) == [("meta_block",)]:
        return _meta_block(c, spec, per_block[("meta_block",)], ("meta_block",))
    given, declared = sorted(w[1] for w in per_block), sorted(spec.definitions)
    if not spec.task_keys or given != declared:
        raise ConfigError(f"{c.where('model', 'meta_block')} has blocks for {given}, the feature spec declares the "
                          f"task definitions {declared}: give one block per definition of features.task_keys "
                          "(e.g. task_keys: {user: user_id, user_x_genre: user_genre})")
    return {where[1]: _meta_block(c, spec, options, where) for where, options in per_block.items()}


def build_model(c: TrainConfig, spec: FeatureSpec, total_steps: int):
    """The LiMAMLModel the config describes, compiled with the paper's outer optimizer
    (limaml_tf.training.make_optimizer: linear learning-rate scaling, clip, warm-up then cosine decay)."""
    from limaml_tf import blocks
    from limaml_tf.model import LiMAMLModel
    from limaml_tf.training import make_optimizer

    model = dict(c.model)
    model.pop("meta_block", None)
    glob_ = dict(model.pop("global_block", None) or {})
    meta_block = build_meta_block(c, spec)
    glob_where = c.where("model", "global_block")
    glob_cls = getattr(blocks, GLOBAL_BLOCKS[glob_.pop("type", "mlp")])
    features = _features(spec, glob_.pop("features", None), spec.other_features, f"{glob_where}.features")
    global_block = _block(glob_cls, glob_, glob_where, features=features)
    m = _block(LiMAMLModel, model, c.where("model"), meta_block=meta_block, global_block=global_block, spec=spec,
               name=c.output["model_name"])
    t = c.training
    m.compile(optimizer=make_optimizer(t["tasks_per_batch"], t["learning_rate"], clipnorm=t["clipnorm"],
                                       warmup_steps=int(t["warmup_fraction"] * total_steps), decay_steps=total_steps))
    return m
