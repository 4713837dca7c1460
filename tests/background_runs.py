"""The suite's expensive end-to-end runs, in one background process started when the session starts
(tests/conftest.py), so they run beside the other tests on the second core; the tests that read their
results (test_crash_safety.py, test_cli.py) run last. `python -m tests.background_runs ROOT SEED...`
writes ROOT/results.json; each run's output goes to ROOT/driver.out.

The driver imports TensorFlow, Keras, Beam and Feast but runs no TensorFlow op; every run is a child it
forks (so each starts from a fresh TensorFlow runtime without paying the imports again), two at a time.

Crash safety: a run is killed at its k-th file-system write under its directory (an audit hook sees
open-for-write, rename, mkdir, remove, rmtree, copy, sqlite connect; the process SIGKILLs itself just
before that operation runs), k drawn from the seed over the writes of the setup's run:

  setup        export version 1 of "ranker" + its adapter, refresh as of AS_OF[0] and publish to Feast
  per seed     copy of the setup; export version 2 + refresh as of AS_OF[1] + publish, killed at write k
               -> a snapshot of the directory as the kill left it -> the same run again, not killed
  training     `limaml train --config examples/synthetic.yaml` on a small CSV, killed at the k-th write
               after its first backup -> the same command again (it resumes from the backup; --no-export)
               -> `limaml export` of the trained model.keras (serving export + adapter)
               -> `limaml evaluate` of it on a held-out CSV
  movielens    `limaml train --config examples/movielens.yaml` on small MovieLens-format files
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys

AS_OF = (40 * 86_400.0, 50 * 86_400.0)
WRITES = {"open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "shutil.copyfile",
          "shutil.move", "os.truncate", "os.chmod", "sqlite3.connect"}
TRAIN_EPOCHS = 5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_write(event: str, args) -> str | None:
    """The path an audited file-system write touches (None for other events and reads)."""
    if event not in WRITES or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return None
    if event in ("os.rename", "shutil.copyfile", "shutil.move"):
        return os.fsdecode(args[1])  # what is written: the destination
    if event == "open":
        mode, flags = args[1], args[2] or 0
        if not ((mode and any(c in mode for c in "wax+")) or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
            return None
    return os.fsdecode(args[0])


def arm(root: str, kill_at: int | None, log: str, after: str | None = None) -> None:
    """Counts the writes under `root` (after the first write to a path ending in `after`, if given) into
    `log`; SIGKILLs the process just before write number `kill_at`."""
    state = {"n": 0, "armed": after is None}
    out = open(log, "w", buffering=1)

    def hook(event, args):
        path = is_write(event, args)
        if path is None or not os.path.abspath(path).startswith(root) or path == log:
            return
        if not state["armed"]:
            state["armed"] = path.endswith(after)
            return
        state["n"] += 1
        out.write(f"{state['n']} {event} {os.path.relpath(path, root)}\n")
        if state["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def fork(fn, *args) -> int:
    """Runs fn(*args) in a child process; returns its wait status as a signed code (-9: SIGKILL)."""
    import time
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException:  # noqa: BLE001 (report and exit: the parent reads the code)
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(f"[background_runs] {getattr(fn, '__name__', fn)}{args[1:]}: {time.perf_counter() - start:.1f} s", flush=True)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def export_and_refresh(root: str, model_seed: int, as_of: float) -> None:
    from beam_pipelines.refresh_embeddings import refresh
    from limaml_tf.export import export_serving
    from tests.serving_helpers import tiny_model

    model, _, df = tiny_model(seed=model_seed)
    export_serving(model, os.path.join(root, "saved_models"), "ranker", train_df=df)
    refresh(os.path.join(os.path.dirname(root), "interactions"), os.path.join(os.path.dirname(root), "adapter"),
            os.path.join(root, "out"), as_of, days=30, max_samples=8, tasks_per_batch=8, workers=1)


def setup(top: str) -> None:
    from limaml_tf.export import export_adapter
    from limaml_tf.synthetic import make_synthetic
    from tests.serving_helpers import tiny_model

    model, _, df = tiny_model(seed=0)
    os.makedirs(os.path.join(top, "interactions"))
    df.to_parquet(os.path.join(top, "interactions", "part-0.parquet"))
    shutil.move(export_adapter(model, os.path.join(top, "export"), "ranker", version=1), os.path.join(top, "adapter"))
    train_df, _ = make_synthetic(num_tasks=40, mean_samples_per_task=20, seed=3)
    train_df.to_csv(os.path.join(top, "train.csv"), index=False)
    make_synthetic(num_tasks=20, mean_samples_per_task=20, seed=4)[0].to_csv(os.path.join(top, "held_out.csv"), index=False)
    template = os.path.join(top, "template")
    arm(template, None, os.path.join(top, "setup-writes.log"))  # how many writes a run makes
    export_and_refresh(template, 0, AS_OF[0])


def train(top: str, kill_at: int | None) -> None:
    out = os.path.join(top, "train")
    if kill_at:
        arm(out, kill_at, os.path.join(top, "train-writes.log"), after="training_metadata.json")
    argv = ["train", "--config", os.path.join(REPO, "examples", "synthetic.yaml"), "--data-path",
            os.path.join(top, "train.csv"), "--epochs", str(TRAIN_EPOCHS), "--out", out, "--no-export"]
    cli(argv)


def cli(argv: list[str]) -> None:
    from limaml_cli import main

    code = main(argv)
    if code:
        raise SystemExit(code)


def train_chain(top: str, seed: int) -> dict:
    """`limaml train` killed at a random write after its first backup, then the same command again."""
    import numpy as np

    k = int(np.random.default_rng(seed).integers(1, 9))
    out = {"kill_at": k, "killed": fork(train, top, k), "resumed": fork(train, top, None)}
    model = os.path.join(top, "train", "model.keras")
    out["export"] = fork(cli, ["export", model, "--saved-models", os.path.join(top, "exported"), "--model-name",
                               "again", "--data", os.path.join(top, "train.csv")])
    out["evaluate"] = fork(cli, ["evaluate", model, "--data", os.path.join(top, "held_out.csv"), "--out",
                                 os.path.join(top, "evaluate.json")])
    return out


def seed_chain(top: str, seed: int, total: int) -> dict:
    """A copy of the setup; the export + refresh killed at write k; a snapshot; the same run again."""
    import numpy as np

    k = int(np.random.default_rng(seed).integers(1, total + 1))
    root = os.path.join(top, f"seed-{seed}")
    shutil.copytree(os.path.join(top, "template"), root)
    log = os.path.join(top, f"seed-{seed}-writes.log")
    killed = fork(lambda: (arm(root, k, log), export_and_refresh(root, 1, AS_OF[1])))
    with open(log) as f:
        last = f.read().splitlines()[-1:]
    shutil.copytree(root, os.path.join(top, f"seed-{seed}-after-kill"), symlinks=True)
    next_log = os.path.join(top, f"seed-{seed}-next-writes.log")
    return {"kill_at": k, "killed": killed, "last_write": last[0] if last else "",
            "next_run": fork(lambda: (arm(root, None, next_log), export_and_refresh(root, 1, AS_OF[1])))}


def movielens(top: str) -> dict:
    import pathlib

    from tests.movielens_fixtures import write_ml100k

    data = write_ml100k(pathlib.Path(top) / "ml-100k", extra_users=30, ratings_per_user=16)
    return {"train": fork(cli, ["train", "--config", os.path.join(REPO, "examples", "movielens.yaml"),
                                "--data-path", str(data), "--epochs", "1", "--out", os.path.join(top, "movielens"),
                                "--no-export"])}


def in_parallel(jobs: dict, top: str, slots: int = 2) -> dict:
    """Runs the jobs ({name: (fn, args)}), each in a forked process, `slots` at a time; returns their
    results. (The driver never ran a TensorFlow op, so its forks may fork again.)"""
    pending, running, results = list(jobs.items()), {}, {}
    while pending or running:
        while pending and len(running) < slots:
            name, (fn, args) = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                try:
                    out = fn(*args)
                    with open(os.path.join(top, f"{name}.json"), "w") as f:
                        json.dump(out, f)
                finally:
                    os._exit(0)
            running[pid] = name
        pid, _ = os.wait()
        name = running.pop(pid)
        with open(os.path.join(top, f"{name}.json")) as f:
            results[name] = json.load(f)
    return results


def main(top: str, seeds: list[int]) -> dict:
    top = os.path.abspath(top)
    results = {"setup": fork(setup, top)}
    with open(os.path.join(top, "setup-writes.log")) as f:
        total = sum(1 for _ in f)
    jobs = {"train": (train_chain, (top, seeds[0])), "movielens": (movielens, (top,))}
    jobs.update({f"seed-{s}": (seed_chain, (top, s, total)) for s in seeds})
    results.update(in_parallel(jobs, top), writes_per_run=total)
    with open(os.path.join(top, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    import apache_beam  # noqa: F401 (imported once here; the children only run)
    import feast  # noqa: F401
    import feast.infra.offline_stores.dask  # noqa: F401
    import feast.infra.online_stores.sqlite  # noqa: F401
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import beam_pipelines.refresh_embeddings  # noqa: F401
    import limaml_cli  # noqa: F401
    import limaml_tf.export  # noqa: F401
    import limaml_tf.feature_store  # noqa: F401
    import tests.serving_helpers  # noqa: F401

    main(sys.argv[1], [int(s) for s in sys.argv[2:]])
