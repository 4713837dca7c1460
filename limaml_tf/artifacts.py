"""The artifact contract, without Keras: what the exporter writes and what the Beam pipelines, the
serving client and the TFRecord reader read.

Imported by `limaml_tf.export` (the writer) and by every reader, none of which may import Keras or
the model (Beam workers, the serving client). It holds the file names, the readers and writers of
the spec and metadata saved beside an artifact, the atomic directory, the adapter's input packing
and the layout of a committed refresh run.

Layout (`saved_models/README.md`):

  saved_models/<name>/<version>/        SavedModel; assets.extra/ holds SPEC_FILE and
                                        SERVING_METADATA_FILE (+ warm-up requests) for a serving
                                        export, SPEC_FILE and CONFIG_FILE for an adapter
  saved_models/models.config            TF Serving's model_config_list
  <output>/runs/as_of=<time>/           a committed refresh run: EMBEDDINGS_DIR/*.parquet,
                                        DEAD_LETTER_DIR/*.jsonl, SUCCESS_FILE (its summary)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from limaml_tf.spec import FeatureSpec, WriteError

SPEC_FILE = "feature_spec.json"
CONFIG_FILE = "limaml_config.json"  # adapter: steps, learning_rate, aggregation, embedding_dim, model_version
SERVING_METADATA_FILE = "serving_metadata.json"
WARMUP_FILE = "tf_serving_warmup_requests"
EXTRA_DIR = "assets.extra"
MODELS_CONFIG = "models.config"
SERVING_SIGNATURE = "serving_default"
EMBEDDING_INPUT = "meta_embedding"
OUTPUT = "probability"
AGGREGATIONS = ("latest", "mean", "max", "cosine")

# the adapter SavedModel's endpoints (see limaml_tf.export.export_adapter)
EMBED_TASKS = "embed_tasks"
COLD_START = "cold_start"

# a committed refresh run
SUCCESS_FILE = "_SUCCESS.json"
EMBEDDINGS_DIR = "embeddings"
DEAD_LETTER_DIR = "dead_letter"
EMBEDDING_COLUMNS = ("task_key", "embedding", "model_version", "computed_at", "source")
COLD_START_KEY = "__cold_start__"  # the row for a task never seen: the model's cold-start embedding


def store_key(definition: str | None, task_key: str) -> str:
    """The feature store's key of a task: the task key itself (one task definition), or
    "<definition>=<task key>" for an adapter exported for one of several definitions, so every
    definition's rows live in one feature view and one lookup fetches a request's embeddings."""
    return str(task_key) if definition is None else f"{definition}={task_key}"


# -- writing -----------------------------------------------------------------------------------

_WRITE_FIXES = {errno.EACCES: "make it writable or choose another output directory",
                errno.EPERM: "make it writable or choose another output directory",
                errno.EROFS: "the file system is read-only: choose another output directory",
                errno.ENOSPC: "the disk is full: free space or choose another output directory",
                errno.EDQUOT: "the disk quota is exceeded: free space or choose another output directory"}


@contextlib.contextmanager
def output_errors(path: str):
    """Re-raises a permission / read-only / full-disk OSError while writing `path` as a WriteError
    naming the path and the fix (other errors pass unchanged)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        if e.errno not in _WRITE_FIXES:
            raise
        raise WriteError(e.errno, f"cannot write {path!r} ({os.strerror(e.errno)}): {_WRITE_FIXES[e.errno]}") from e


def temp_prefix(path: str, kind: str = "tmp") -> str:
    """`.<name>.<kind>-<pid>-`: hidden from readers (TF Serving, `model_versions`, run listings), and
    names the writing process, so a later writer can remove what a killed one left (`remove_stale`)."""
    return f".{os.path.basename(path)}.{kind}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(parent: str) -> list[str]:
    """Removes the temp files / directories in `parent` that a writer killed mid-write left behind (named
    by `temp_prefix`, their process no longer running). Returns what it removed."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        match = re.fullmatch(r"\..+\.(?:tmp|old)-(\d+)-.*", name)
        if not match or _alive(int(match.group(1))):
            continue
        path = os.path.join(parent, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        removed.append(path)
    return removed


def _exchange(a: str, b: str) -> bool:
    """Swaps two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system
    cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yields a temp dir beside `path`; on success it takes the place of `path` in one rename (an old
    `path` is swapped out atomically where the system can, else renamed away first), on failure it is
    removed, so readers never see a half-written directory. What a killed writer left is removed by the
    next writer in the same directory."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    with output_errors(path):
        os.makedirs(parent, exist_ok=True)
        remove_stale(parent)
        tmp = tempfile.mkdtemp(prefix=temp_prefix(path), dir=parent)
    try:
        yield tmp
        if not os.path.exists(path):
            os.rename(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
        else:
            old = tempfile.mkdtemp(prefix=temp_prefix(path, "old"), dir=parent)
            os.rename(path, os.path.join(old, "x"))
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        with output_errors(path):
            raise e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str, text: str) -> str:
    """Writes `text` to `path` through a temp file in the same directory and a rename."""
    parent = os.path.dirname(path) or "."
    with output_errors(path):
        remove_stale(parent)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=parent)
    try:
        with output_errors(path), os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_extra(export_dir: str, name: str, text: str) -> None:
    extra = os.path.join(export_dir, EXTRA_DIR)
    os.makedirs(extra, exist_ok=True)
    with open(os.path.join(extra, name), "w", encoding="utf-8") as f:
        f.write(text)


# -- reading -----------------------------------------------------------------------------------

def read_extra(export_dir: str, name: str) -> str:
    path = os.path.join(export_dir, EXTRA_DIR, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: {export_dir!r} is not an export of limaml_tf.export "
                                "(or it was copied without its assets.extra/)")
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_spec(path: str) -> FeatureSpec:
    """The feature spec beside an artifact (`<dir>/assets.extra/feature_spec.json`) or in a JSON file."""
    if os.path.isdir(path):
        return FeatureSpec.from_json(read_extra(path, SPEC_FILE), os.path.join(path, EXTRA_DIR, SPEC_FILE))
    if not os.path.exists(path):
        raise FileNotFoundError(f"feature spec {path!r} does not exist: pass a JSON file written by "
                                "FeatureSpec.to_json() or an export directory")
    with open(path, encoding="utf-8") as f:
        return FeatureSpec.from_json(f.read(), f"feature spec {path!r}")


def read_adapter(path: str) -> tuple[FeatureSpec, dict]:
    """(feature spec, config) of an adapter export: config has steps, learning_rate, aggregation,
    embedding_dim, model_version, tensorflow_version."""
    return read_spec(path), json.loads(read_extra(path, CONFIG_FILE))


def read_serving_metadata(path: str) -> tuple[FeatureSpec, dict]:
    """(feature spec, metadata) of a serving export (signature, embedding_dim, cold-start embedding ...)."""
    return read_spec(path), json.loads(read_extra(path, SERVING_METADATA_FILE))


def is_saved_model(path: str) -> bool:
    return os.path.exists(os.path.join(path, "saved_model.pb"))


def model_versions(model_dir: str) -> list[int]:
    """Integer version subdirectories of `model_dir`, ascending (what TF Serving considers; temp dirs
    written by `atomic_directory` start with "." and are never listed)."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(d) for d in os.listdir(model_dir)
                  if d.isdigit() and os.path.isdir(os.path.join(model_dir, d)))


def resolve_adapter(path: str, aggregation: str | None = None) -> str:
    """The adapter export to run: `path` itself, the latest `<version>/` under it (the
    `saved_models/<name>/<version>/` layout), or the one adapter under it exported with `aggregation`
    (aggregation is fixed at export: export one per setting, e.g. adapters/latest, adapters/mean)."""
    if aggregation is not None and aggregation not in AGGREGATIONS:
        raise ValueError(f"--aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    versions = model_versions(path)
    if is_saved_model(path):
        candidates = [path]
    elif versions:
        candidates = [os.path.join(path, str(versions[-1]))]
    elif os.path.isdir(path):
        candidates = sorted(os.path.join(path, d) for d in os.listdir(path) if is_saved_model(os.path.join(path, d)))
    else:
        raise FileNotFoundError(f"adapter {path!r} does not exist: export one with limaml_tf.export.export_adapter")
    found = {c: read_adapter(c)[1]["aggregation"] for c in candidates}
    match = [c for c, a in found.items() if aggregation in (None, a)]
    if len(match) != 1:
        have = {os.path.basename(c): a for c, a in found.items()} or "no adapters"
        raise ValueError(f"--adapter {path!r}: need exactly one adapter with aggregation={aggregation!r}, found "
                         f"{have}. Export one per setting with export_adapter(..., aggregation=...) or pass "
                         "--aggregation to pick one")
    return match[0]


# -- TF Serving's model_config_list ------------------------------------------------------------

def write_models_config(base_dir: str, model_name: str, serving_root: str = "/models",
                        versions: list[int] | None = None, labels: dict[str, int] | None = None) -> str:
    """Adds `model_name` to `<base_dir>/models.config`, the model_config_list that
    `tensorflow_model_server --model_config_file` reads; base paths point at `serving_root`, where the
    container mounts `base_dir`. A new entry serves the latest version; an existing one keeps its version
    policy and labels unless `versions` (served versions: policy `specific`) or `labels` (e.g.
    {"stable": 1, "canary": 2}) are given. Written atomically."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = os.path.join(base_dir, MODELS_CONFIG)
    config = read_models_config(base_dir) or model_server_config_pb2.ModelServerConfig()
    entries = config.model_config_list.config
    entry = next((c for c in entries if c.name == model_name), None)
    if entry is None:
        entry = entries.add()
        entry.model_version_policy.latest.num_versions = 1
    entry.name = model_name
    entry.base_path = f"{serving_root.rstrip('/')}/{model_name}"
    entry.model_platform = "tensorflow"
    if versions is not None:
        entry.model_version_policy.specific.ClearField("versions")
        entry.model_version_policy.specific.versions.extend(int(v) for v in versions)
    if labels is not None:
        entry.version_labels.clear()
        entry.version_labels.update({str(k): int(v) for k, v in labels.items()})
    return atomic_write_text(path, text_format.MessageToString(config))


def read_models_config(base_dir: str):
    """The ModelServerConfig proto of `<base_dir>/models.config`, or None when there is none."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = os.path.join(base_dir, MODELS_CONFIG)
    if not os.path.exists(path):
        return None
    config = model_server_config_pb2.ModelServerConfig()
    with open(path, encoding="utf-8") as f:
        text_format.Parse(f.read(), config)
    return config


# -- the adapter's inputs ----------------------------------------------------------------------

def adapter_inputs(bundle: dict) -> dict[str, np.ndarray]:
    """`embed_tasks` inputs from the support set of a task bundle (`limaml_tf.tasks`): each task's key,
    its recent samples, labels and mask, and its latest real sample (padded tasks: key "")."""
    mask = np.asarray(bundle["support_mask"], np.float32)
    last = np.maximum(mask.sum(1).astype(int) - 1, 0)
    rows = np.arange(len(mask))
    out = {"task_key": np.asarray([str(k) for k in bundle["task_key"]], dtype=object),
           "support_label": np.asarray(bundle["support_label"], np.float32), "support_mask": mask}
    for name, value in bundle["support"].items():
        out[f"support_{name}"] = value
        out[f"latest_{name}"] = value[rows, last]
    return out


# -- a refresh run's rows ----------------------------------------------------------------------

def embeddings_table(keys, embeddings: np.ndarray, model_version: str, computed_at, source: str) -> pa.Table:
    """Rows (task_key, embedding float32[d], model_version, computed_at, source) of a refresh run;
    `source` is "adapted" or "cold_start"."""
    embeddings = np.ascontiguousarray(embeddings, np.float32)
    n, d = embeddings.shape
    values = pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)),
                                      pa.array(embeddings.ravel()))
    return pa.table({
        "task_key": pa.array([str(k) for k in keys], pa.string()),
        "embedding": values,
        "model_version": pa.array([model_version] * n, pa.string()),
        "computed_at": pa.array([computed_at] * n, pa.timestamp("us", tz="UTC")),
        "source": pa.array([source] * n, pa.string()),
    })


def read_embeddings(run_dir: str, columns=None):
    """The embedding rows of a refresh run directory as a DataFrame, sorted by task key."""
    df = pq.read_table(os.path.join(run_dir, EMBEDDINGS_DIR), columns=columns).to_pandas()
    return df.sort_values("task_key", kind="stable").reset_index(drop=True)


def read_run_summary(run_dir: str) -> dict:
    """The summary of a committed refresh run; FileNotFoundError if the run was never committed."""
    path = os.path.join(run_dir, SUCCESS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir!r} is not a committed refresh run (no {SUCCESS_FILE}): "
                                "publish only what the refresh pipeline committed")
    with open(path, encoding="utf-8") as f:
        return json.load(f)
