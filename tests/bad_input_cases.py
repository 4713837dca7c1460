"""The bad-input matrix: one row per bad input, run by tests/test_bad_inputs.py and rendered as
docs/reliability.md (`python -m tests.bad_input_cases` rewrites the doc; a test checks it is current).

A case's `run(ctx)` feeds the bad input where it enters the package. With an `error`, it must raise
that type with a message naming `field` and saying `fix`; without one (None), the input is accepted
by design and `run` checks what happens instead (`field` / `fix` then describe it for the doc).
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import sys
import zipfile
from contextlib import redirect_stderr
from typing import Callable

import numpy as np
import pandas as pd

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "reliability.md")


class CLIError(Exception):
    """`limaml ...` exited 1 with this one stderr line."""


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    area: str  # Python API, CLI, refresh pipeline, exporter, gRPC server, serving client
    bad_input: str
    run: Callable
    error: type | None  # None: accepted by design
    field: str  # text the message must contain: the field / file / flag
    fix: str  # text the message must contain: the fix
    status: str = ""  # gRPC server: the status code of the answer


# -- helpers the cases share (imports are local: rendering the doc needs no TensorFlow) ---------

def _with(df, **columns):
    return df.assign(**columns)


def _split(ctx, df=None, **kw):
    from limaml_tf.tasks import split_tasks
    return split_tasks(ctx.df if df is None else df, ctx.spec, **kw)


def _model(ctx, **kw):
    from limaml_tf import LiMAMLModel
    from tests.conftest import tiny_blocks
    return LiMAMLModel(*tiny_blocks(ctx.spec), ctx.spec, **kw)


def cli(argv: list[str]) -> None:
    """Runs `limaml argv` in-process; raises CLIError(the stderr line) when it fails as it should: exit
    status 1 and exactly one `limaml <cmd>: error:` line, no traceback."""
    from limaml_cli import main
    err = io.StringIO()
    with redirect_stderr(err):
        rc = main(argv)
    lines = [line for line in err.getvalue().splitlines() if line.startswith("limaml")]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err.getvalue(), (rc, err.getvalue())
    assert lines[0].startswith(f"limaml {argv[0]}: error: "), lines
    raise CLIError(lines[0])


def rpc(ctx, change, code: str, rows: int = 6) -> None:
    """Sends the served model a valid Predict request after `change(request)`; asserts the status
    code and re-raises the grpc.RpcError."""
    import grpc
    request = ctx.request(rows)
    change(request)
    try:
        ctx.stub.Predict(request, timeout=30)
    except grpc.RpcError as e:
        assert e.code().name == code, (e.code(), e.details())
        raise
    raise AssertionError("the request was served")


def _input(name, value):
    import tensorflow as tf
    return lambda r: r.inputs[name].CopyFrom(tf.make_tensor_proto(value))


def _huge_declared_shape(r):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    r.inputs["hour"].CopyFrom(tensor_pb2.TensorProto(  # one value, "repeat it 10^9 times"
        dtype=types_pb2.DT_FLOAT, float_val=[1.0],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=10 ** 9)])))


def _export_serving(ctx, base, **kw):
    from limaml_tf.export import export_serving
    export_serving(ctx.model, base, "ranker", **kw)


def _refresh(ctx, input_dir=None, **kw):
    from beam_pipelines.refresh_embeddings import refresh
    args = {"input": input_dir or ctx.interactions_dir, "adapter": ctx.adapter, "output": str(ctx.tmp / "out"),
            "as_of": 40 * 86400.0, "online_store": None, "workers": 1, **kw}
    return refresh(**args)


def _parquet_with_bad_footer(ctx):
    d = ctx.tmp / "corrupt"
    d.mkdir(exist_ok=True)
    path = d / "part-0.parquet"
    ctx.df.iloc[:20].to_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[:-12] + b"\0" * 12)  # footer length and magic bytes gone
    _refresh(ctx, str(d))


def _other_data_set(ctx):
    d = ctx.tmp / "other_data"
    d.mkdir(exist_ok=True)
    ctx.df.iloc[:20].drop(columns=["activity", "hour"]).rename(columns={"user_id": "member"}).to_parquet(
        d / "part-0.parquet")
    _refresh(ctx, str(d))


def _ms_rows_dead_letter(ctx):
    from beam_pipelines.row_checks import check_rows
    df = ctx.df.iloc[:5]
    ok, dead = check_rows(_with(df, timestamp=df["timestamp"] * 1000 + 1.7e12), ctx.spec)
    assert len(ok) == 0 and len(dead) == 5
    assert "'timestamp' looks like milliseconds" in dead["reason"].iloc[0]
    assert "divide by 1000" in dead["reason"].iloc[0]


def _other_version_keras(ctx):
    import keras
    path = ctx.tmp / "old.keras"
    model = ctx.model
    model.save(path)
    patched = ctx.tmp / "other_version.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(patched, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                assert config["config"]["limaml_version"]
                config["config"]["limaml_version"] = "9.9.0"
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    keras.models.load_model(patched)


def _spec_file(ctx, text: str) -> None:
    from limaml_tf.artifacts import read_spec
    path = ctx.tmp / "spec.json"
    path.write_text(text)
    read_spec(str(path))


def _spec_with(ctx, **feature_changes) -> str:
    d = ctx.spec.to_dict()
    d["other_features"][-1].update(feature_changes)  # the last one: 'hour', numeric
    return json.dumps(d)


def _read_only_export(ctx, monkeypatch):
    from limaml_tf.export import export_serving
    base = ctx.tmp / "read_only"
    base.mkdir(exist_ok=True)
    os.chmod(base, 0o555)
    if os.geteuid() == 0:  # root ignores the mode: fail the way the OS does for other users
        import tempfile
        real = tempfile.mkdtemp

        def mkdtemp(*a, dir=None, **kw):
            if dir and str(dir).startswith(str(base)):
                raise PermissionError(errno.EACCES, "Permission denied", dir)
            return real(*a, dir=dir, **kw)
        monkeypatch.setattr("limaml_tf.artifacts.tempfile.mkdtemp", mkdtemp)
    try:
        export_serving(ctx.model, str(base), "ranker")
    finally:
        os.chmod(base, 0o755)


def _full_disk_export(ctx, monkeypatch):
    from limaml_tf import export
    base = ctx.tmp / "full_disk"

    def write_extra(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(export, "write_extra", write_extra)
    try:
        export.export_serving(ctx.model, str(base), "ranker")
    finally:  # nothing half-written is visible: no version directory, no temp directory
        assert os.listdir(base / "ranker") == [], os.listdir(base / "ranker")


def _export_adapter(ctx, **kw):
    from limaml_tf.export import export_adapter
    export_adapter(ctx.model, str(ctx.tmp / "adapter_x"), "ranker", **kw)


def _read_serving_metadata(path):
    from limaml_tf.artifacts import read_serving_metadata
    read_serving_metadata(path)


def _million_samples(ctx):
    import time
    n = 10 ** 6
    one = ctx.df.iloc[np.arange(n) % len(ctx.df)].reset_index(drop=True)
    one = one.assign(user_id="heavy", timestamp=np.arange(n, dtype="float64"))
    start = time.perf_counter()
    tasks = _split(ctx, one, max_samples_per_task=64)
    assert len(tasks) == 1 and tasks.support_length + tasks.query_length == 64
    assert tasks.arrays["query_time"].max() == n - 1  # the most recent samples were kept
    assert time.perf_counter() - start < 30


def _unicode_and_long_keys(ctx):
    from beam_pipelines.shuffle import stable_bucket
    from limaml_tf.serving.client import InMemoryEmbeddingStore
    keys = {k: f"user-{i}-😀é中" + "x" * (10_000 if i % 2 else 0) for i, k in enumerate(ctx.df.user_id.unique())}
    df = ctx.df.assign(user_id=ctx.df.user_id.map(keys))
    tasks = _split(ctx, df, max_samples_per_task=16)
    assert set(tasks.task_keys) == set(keys.values())
    assert stable_bucket(pd.Series(list(keys.values())), 7).max() < 7
    store = InMemoryEmbeddingStore(2)
    store.put(list(keys.values()), np.ones((len(keys), 2)))
    assert store.get_embeddings(list(keys.values()))[1].all()


def _same_time_rows_kept(ctx):
    df = ctx.df
    twin = df.iloc[:1].assign(item_id="another-item")
    tasks = _split(ctx, pd.concat([df, twin], ignore_index=True), max_samples_per_task=None)
    user = df.user_id.iloc[0]
    i = list(tasks.task_keys).index(user)
    n = int(tasks.arrays["support_mask"][i].sum() + tasks.arrays["query_mask"][i].sum())
    assert n == (df.user_id == user).sum() + 1


def _store_put(ctx, embeddings):
    from limaml_tf.serving.client import InMemoryEmbeddingStore
    InMemoryEmbeddingStore(4).put(["u1", "u2"], embeddings)


def _ts(ctx, values):
    return _split(ctx, _with(ctx.df, timestamp=values))


def _nan_at(values, i=3):
    values = np.asarray(values, dtype="float64").copy()
    values[i] = np.nan
    return values


# -- the matrix ---------------------------------------------------------------------------------

def _cases():
    from limaml_tf.raw_data import FeatureError
    from limaml_tf.spec import ArtifactError, WriteError

    try:
        import grpc
        RpcError = grpc.RpcError
    except ImportError:  # rendering the doc only
        RpcError = type("RpcError", (Exception,), {})
    api, cli_, refresh, export, server, client = ("Python API", "CLI", "refresh pipeline", "exporter",
                                                  "gRPC server", "serving client")
    C = Case

    def S(id, bad_input, change, status, field, fix, rows=6):
        return Case(id, server, bad_input, lambda c: rpc(c, change, status, rows), RpcError, field, fix, status)

    return [
        # Python API: data
        C("nan_timestamp", api, "NaN in the timestamp column",
          lambda c: _ts(c, _nan_at(c.df.timestamp)), FeatureError, "'timestamp'", "drop or fill those rows"),
        C("millisecond_timestamps", api, "timestamps in milliseconds where seconds are expected",
          lambda c: _ts(c, c.df.timestamp * 1000 + 1.7e12), FeatureError, "'timestamp'", "divide by 1000"),
        C("string_timestamps", api, "timestamps as text",
          lambda c: _ts(c, c.df.timestamp.astype(str)), FeatureError, "'timestamp'", "pd.to_datetime"),
        C("label_out_of_range", api, "label 2 in a 0/1 label column",
          lambda c: _split(c, _with(c.df, label=c.df.label.where(c.df.index != 0, 2))), FeatureError,
          "'label'", "must be 0 or 1"),
        C("blank_task_key", api, "an empty-string task key",
          lambda c: _split(c, _with(c.df, user_id=c.df.user_id.where(c.df.index != 0, " "))), FeatureError,
          "'user_id'", "drop those rows"),
        C("multi_valued_number", api, "a number in a multi-valued (list) column",
          lambda c: _split(c, _with(c.df, item_tags=[3] + list(c.df.item_tags.iloc[1:]))), FeatureError,
          "'item_tags'", "lists of strings"),
        C("duplicate_rows", api, "a row repeated in every column (same task and timestamp)",
          lambda c: _split(c, pd.concat([c.df, c.df.iloc[:2]], ignore_index=True)), FeatureError,
          "2 row(s) repeat", "df.drop_duplicates()"),
        C("same_time_different_rows", api, "two different rows of one task at the same timestamp",
          _same_time_rows_kept, None, "kept, in their original row order", "documented: no error"),
        C("million_sample_task", api, "one task with 10^6 samples",
          _million_samples, None, "cut to the most recent max_samples_per_task", "no error, bounded memory"),
        C("unicode_long_task_keys", api, "Unicode and 10,000-character task keys",
          _unicode_and_long_keys, None, "keys round-trip (tasks, buckets, store)", "no error"),
        # Python API: arguments
        C("max_samples_zero", api, "split_tasks(max_samples_per_task=0)",
          lambda c: _split(c, max_samples_per_task=0), ValueError, "max_samples_per_task", "or None (no limit)"),
        C("min_samples_zero", api, "split_tasks(min_samples_per_task=0)",
          lambda c: _split(c, min_samples_per_task=0), ValueError, "min_samples_per_task", "positive count"),
        C("tasks_per_batch_zero", api, "TaskSet.dataset(tasks_per_batch=0)",
          lambda c: _split(c, max_samples_per_task=8).dataset(0), ValueError, "tasks_per_batch", "positive count"),
        C("batches_zero", api, "TaskSet.batches(0)",
          lambda c: list(_split(c, max_samples_per_task=8).batches(0)), ValueError, "tasks_per_batch",
          "positive count"),
        C("inner_steps_negative", api, "LiMAMLModel(inner_steps=-1)",
          lambda c: _model(c, inner_steps=-1), ValueError, "inner_steps", "must be an integer >= 0"),
        C("inner_learning_rate_nan", api, "LiMAMLModel(inner_learning_rate=nan)",
          lambda c: _model(c, inner_learning_rate=float("nan")), ValueError, "inner_learning_rate",
          "must be a finite number >= 0"),
        # Python API: files
        C("spec_not_json", api, "a feature spec file that is not JSON",
          lambda c: _spec_file(c, "task_key: user_id\n"), ArtifactError, "spec.json", "FeatureSpec.to_json()"),
        C("spec_unknown_kind", api, "a feature spec naming an unknown kind",
          lambda c: _spec_file(c, _spec_with(c, kind="float")), FeatureError, "feature 'hour'",
          "set kind to one of"),
        C("spec_unknown_key", api, "a feature spec entry with an unknown key",
          lambda c: _spec_file(c, _spec_with(c, colour="red")), FeatureError, "spec.json", "remove ['colour']"),
        C("keras_other_version", api, "a .keras file saved by another version of the package",
          _other_version_keras, ArtifactError, "limaml-tf 9.9.0", "pip install 'limaml-tf==9.9.0'"),
        # exporter
        C("read_only_output", export, "export_serving into a read-only directory",
          lambda c: _read_only_export(c, c.monkeypatch), WriteError, "read_only", "make it writable"),
        C("full_disk", export, "export_serving on a full disk (a write raises ENOSPC)",
          lambda c: _full_disk_export(c, c.monkeypatch), WriteError, "full_disk", "free space"),
        C("export_version_zero", export, "export_serving(version=0)",
          lambda c: _export_serving(c, str(c.tmp / "v0"), version=0), ValueError, "version", "positive integer"),
        C("export_existing_version", export, "export_serving over an existing version",
          lambda c: _export_serving(c, c.saved_models, version=1), FileExistsError, "exists",
          "export a new version"),
        C("adapter_bad_aggregation", export, "export_adapter(aggregation='median')",
          lambda c: _export_adapter(c, aggregation="median"), ValueError, "aggregation", "one of"),
        C("not_an_export", export, "reading serving metadata from a directory that is not an export",
          lambda c: _read_serving_metadata(str(c.tmp)), FileNotFoundError, "assets.extra",
          "export of limaml_tf.export"),
        # refresh pipeline
        C("as_of_garbage", refresh, "refresh(as_of='garbage')",
          lambda c: _refresh(c, as_of="garbage"), ValueError, "--as-of 'garbage'", "ISO-8601"),
        C("as_of_milliseconds", refresh, "refresh(as_of=<epoch milliseconds>)",
          lambda c: _refresh(c, as_of="1714521600000"), ValueError, "--as-of", "divide by 1000"),
        C("max_samples_zero_refresh", refresh, "refresh(max_samples=0)",
          lambda c: _refresh(c, max_samples=0), ValueError, "--max-samples", "positive count"),
        C("days_negative", refresh, "refresh(days=-1)",
          lambda c: _refresh(c, days=-1), ValueError, "--days", "e.g. 30"),
        C("corrupt_parquet_footer", refresh, "an interactions file with a corrupt Parquet footer",
          _parquet_with_bad_footer, FeatureError, "part-0.parquet", "re-write it"),
        C("adapter_spec_mismatch", refresh, "an adapter whose spec names columns the input lacks",
          _other_data_set, FeatureError, "['user_id', 'activity', 'hour']", "--adapter"),
        C("ms_rows_dead_letter", refresh, "interaction rows with millisecond timestamps",
          _ms_rows_dead_letter, None, "dead letter, reason: 'timestamp' looks like milliseconds",
          "divide by 1000"),
        C("no_input_files", refresh, "an --input glob matching no file",
          lambda c: _refresh(c, str(c.tmp / "nothing" / "*.parquet")), FileNotFoundError, "no input files",
          "check --input"),
        # gRPC server
        S("predict_wrong_dtype", "Predict: strings for a float input", _input("hour", np.array(["x"] * 6, object)),
          "INVALID_ARGUMENT", "input 'hour' has dtype string", "send float"),
        S("predict_wrong_shape", "Predict: a [6, 2] tensor for a [batch] input",
          _input("hour", np.zeros((6, 2), np.float32)), "INVALID_ARGUMENT", "input 'hour' has shape [6, 2]",
          "expects [-1]"),
        S("embedding_wrong_width", "Predict: a meta embedding of the wrong width",
          _input("meta_embedding", np.zeros((6, 5), np.float32)), "INVALID_ARGUMENT", "'meta_embedding'",
          "expects [-1, 4]"),
        S("embedding_nan", "Predict: NaN in the meta embedding",
          _input("meta_embedding", np.full((6, 4), np.nan, np.float32)), "INVALID_ARGUMENT",
          "'meta_embedding' has NaN", "send finite values"),
        S("request_too_large", "Predict: a request over the server's size limit (1,600 rows, limit 64 KiB)",
          lambda r: None, "RESOURCE_EXHAUSTED", "over the server's limit", "split the batch", rows=1600),
        S("declared_shape_huge", "Predict: one value declared as a [10^9] tensor", _huge_declared_shape,
          "INVALID_ARGUMENT", "input 'hour' declares shape", "split the batch"),
        S("unknown_model", "Predict: an unknown model name", lambda r: setattr(r.model_spec, "name", "rankr"),
          "NOT_FOUND", "model 'rankr'", "served models: ['ranker']"),
        S("unknown_version", "Predict: an unknown version",
          lambda r: r.model_spec.version.__setattr__("value", 7), "NOT_FOUND", "version 7",
          "available versions: [1]"),
        S("unknown_signature", "Predict: an unknown signature",
          lambda r: setattr(r.model_spec, "signature_name", "predict"), "INVALID_ARGUMENT", "'predict' not found",
          "has ['serving_default']"),
        S("unknown_input", "Predict: an input the signature does not take",
          _input("hours", np.zeros(6, np.float32)), "INVALID_ARGUMENT", "unknown input(s) ['hours']",
          "it takes: "),
        # serving client
        C("store_wrong_width", client, "storing meta embeddings of the wrong width",
          lambda c: _store_put(c, np.zeros((2, 5))), FeatureError, "size 5", "put the embeddings of the model"),
        C("store_nan", client, "storing a NaN meta embedding",
          lambda c: _store_put(c, [[0.0] * 4, [np.nan] * 4]), FeatureError, "['u2']", "recompute them"),
        # CLI
        C("cli_serve_missing_dir", cli_, "limaml serve --saved-models /nonexistent",
          lambda c: cli(["serve", "--saved-models", "/nonexistent", "--port", "0"]), CLIError,
          "--saved-models", "<name>/<version>/"),
        C("cli_reproduce_missing_data", cli_, "limaml reproduce --data-path /nonexistent",
          lambda c: cli(["reproduce", "--data-path", "/nonexistent", "--quick", "--out", str(c.tmp / "r")]),
          CLIError, "in '/nonexistent'", "unzipped official archive"),
        C("cli_refresh_as_of_garbage", cli_, "limaml refresh --as-of garbage",
          lambda c: cli(["refresh", "--input", str(c.tmp), "--adapter", str(c.tmp), "--output",
                         str(c.tmp / "o"), "--as-of", "garbage"]), CLIError, "--as-of 'garbage'", "ISO-8601"),
        C("cli_refresh_missing_adapter", cli_, "limaml refresh --adapter /nonexistent",
          lambda c: cli(["refresh", "--input", str(c.tmp), "--adapter", "/nonexistent", "--output",
                         str(c.tmp / "o"), "--as-of", "0"]), CLIError, "adapter '/nonexistent'", "export one"),
        C("cli_reproduce_tables_protocol", cli_, "limaml reproduce --protocol few-shot --tables 3",
          lambda c: cli(["reproduce", "--protocol", "few-shot", "--tables", "3"]), CLIError, "--tables 3",
          "only 'models'"),
        C("cli_train_missing_config", cli_, "limaml train --config a file that does not exist",
          lambda c: cli(["train", "--config", str(c.tmp / "none.yaml")]), CLIError, "--config", "give a YAML file"),
        C("cli_train_config_not_yaml", cli_, "limaml train --config a file that is not YAML",
          lambda c: _train_config(c, "data: [unclosed\n"), CLIError, "is not valid YAML", "fix the syntax"),
        C("cli_train_config_unknown_key", cli_, "a train config with an unknown key (training.epoch)",
          lambda c: _train_config(c, "data: {path: x.csv}\ntraining: {epoch: 3}\n"), CLIError,
          "training.epoch", "training takes"),
        C("cli_train_config_block_type", cli_, "a train config naming an unknown block type",
          lambda c: _train_config(c, "data: {path: x.csv}\nfeatures: movielens\nmodel: {meta_block: {type: rnn}}\n"),
          CLIError, "model.meta_block.type", "use one of"),
        C("cli_train_missing_data", cli_, "limaml train --data-path a file that does not exist",
          lambda c: _train_config(c, _SPEC_YAML, "--data-path", str(c.tmp / "none.csv")), CLIError,
          "data.path", "give a Parquet or CSV file"),
        C("cli_evaluate_missing_model", cli_, "limaml evaluate a .keras file that does not exist",
          lambda c: cli(["evaluate", str(c.tmp / "none.keras"), "--data", "x.csv"]), CLIError, "none.keras",
          "give a .keras file"),
    ]


_SPEC_YAML = """features: {task_key: u, timestamp: t, label: y, meta_features: [], other_features: [{name: x, kind: numeric}]}
data: {path: x.csv}
"""


def _train_config(ctx, text: str, *flags) -> None:
    path = ctx.tmp / "config.yaml"
    path.write_text(text)
    cli(["train", "--config", str(path), "--out", str(ctx.tmp / "train_out"), *flags])


CASES = _cases()


def render() -> str:
    """docs/reliability.md from CASES."""
    def cell(text):
        return str(text).replace("|", "\\|")

    lines = ["# Reliability: the bad-input matrix", "",
             "Every bad input below is a test (`tests/test_bad_inputs.py`, cases in `tests/bad_input_cases.py`). "
             "A rejected input raises the package's own error type (`FeatureError` / `ArtifactError` are "
             "`ValueError`s, `WriteError` is an `OSError`; the gRPC server answers with a status code) with a "
             "message naming the field and the fix; the CLI prints that message as one line "
             "`limaml <command>: error: ...` on stderr and exits 1 (`limaml --traceback ...` or "
             "`LIMAML_TRACEBACK=1` shows the traceback). Rows marked *accepted* are handled by design.",
             "", "Regenerate with `python -m tests.bad_input_cases` (a test fails when this file is stale).",
             "", f"{len(CASES)} cases.", "",
             "| # | area | bad input | error | message names | fix in the message |",
             "|---|---|---|---|---|---|"]
    for i, c in enumerate(CASES, 1):
        error = "*accepted*" if c.error is None else f"`{c.error.__name__}`"
        if c.status:
            error = f"gRPC `{c.status}`"
        lines.append(f"| {i} | {c.area} | {cell(c.bad_input)} | {error} | {cell(c.field)} | {cell(c.fix)} |")
    return "\n".join(lines + ["", CRASH_SAFETY]) + "\n"


CRASH_SAFETY = """## Crash safety

What is written is never seen half-written, and a killed writer is recovered by the next run:

| artifact | how it is written | after a kill |
|---|---|---|
| serving export `saved_models/<name>/<v>/`, adapter, refresh run `runs/as_of=.../` | in a hidden temp directory `.<name>.tmp-<pid>-*` beside it, renamed into place (an existing directory is swapped out in one `renameat2(RENAME_EXCHANGE)`) | TF Serving, `limaml serve` and the readers ignore the hidden directory; the next writer in that directory removes temp files of processes that no longer run |
| `models.config`, `embedding_store.json`, `metrics.json` | temp file + `os.replace` | the previous file |
| Feast registry | `feast apply` on a copy, renamed into place (Feast itself rewrites the file in place) | the previous registry |
| Feast online rows | SQLite transactions per chunk, after the run is committed | each row is a committed run's; the store's state still names the previous run; the next refresh rewrites them |
| `model.keras` (`limaml train`, `training.save_model`) | temp file + rename | the previous file |
| training | `keras.callbacks.BackupAndRestore` in `<out>/backup` (two copies) | the same command resumes at the last completed epoch |

`tests/test_crash_safety.py` kills (SIGKILL) an export + refresh + publish at the k-th file-system write of
the run, k drawn from seeds 11, 6 and 3 (writes 6: inside the export; 19: inside the refresh, before its run
is committed; 34: inside the publish to Feast), and checks that serving still reads the previous committed
version and embeddings, that no partial directory is visible, and that the next run succeeds and leaves no
temp file; it kills `limaml train --config examples/synthetic.yaml` after its first backup (seed 11) and
checks the same command resumes from it (`tests/background_runs.py` runs them)."""


if __name__ == "__main__":
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(render())
    print(f"wrote {DOC} ({len(CASES)} cases)", file=sys.stderr)
