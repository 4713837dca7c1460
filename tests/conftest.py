import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import pytest  # noqa: E402

import limaml_tf as lt  # noqa: E402


def in_ci() -> bool:
    """CI sets the CI environment variable (GitHub Actions, GitLab, Buildkite, ...: CI=true)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(found, what: str, fix: str):
    """Returns `found` (e.g. a path from shutil.which) when it is set. When it is not, the test is
    skipped locally but fails under CI: CI must not go green without the real components."""
    if found:
        return found
    message = f"{what} is not installed ({fix})"
    if in_ci():
        pytest.fail(f"{message}. CI is set: a missing component fails the run instead of skipping the test",
                    pytrace=False)
    pytest.skip(message)


@pytest.fixture(name="require_tool")
def require_tool_fixture():
    """The `require_tool` helper, for tests that need a system component (redis-server, a C++ compiler)."""
    return require_tool


@pytest.fixture(scope="session")
def synthetic():
    """A small synthetic data set and its fitted spec (session-wide: read-only)."""
    df, spec = lt.make_synthetic(num_tasks=40, mean_samples_per_task=30, seed=3)
    return df, spec.fit(df)


def with_id_feature(df, spec):
    """(df, spec, feature) with the task key copied into a categorical "user_key" meta feature whose
    vocabulary is the tasks of `df` (the input of an ID meta block)."""
    keys = tuple(sorted(df[spec.task_key].unique()))
    feature = lt.Feature("user_key", "categorical", vocabulary=keys)
    spec = spec.__class__(spec.task_key, spec.timestamp, spec.label, spec.meta_features + (feature,),
                          spec.other_features)
    return df.assign(user_key=df[spec.task_key]), spec, feature


def tiny_blocks(spec, activation="tanh", output_dim=3):
    meta = lt.MLPMetaBlock(spec.meta_features, output_dim=output_dim, hidden_units=(4,), embedding_dim=2,
                           activation=activation)
    glob = lt.MLPGlobalBlock(spec.other_features, hidden_units=(5,), embedding_dim=2, activation=activation)
    return meta, glob


@pytest.fixture
def float64():
    old, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(old)
    keras.config.set_dtype_policy(old_policy)


# -- tests/background_runs.py: the expensive end-to-end runs, beside the other tests -------------

BACKGROUND = pytest.StashKey()
CRASH_SEEDS = (11, 6, 3)  # kill points (writes of a run): 6 in the export, 19 in the refresh, 34 in the publish


def start_background_runs() -> tuple:
    """tests/background_runs.py as a background process: (process, its directory, its output file)."""
    import subprocess
    import sys
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    top = tempfile.mkdtemp(prefix="limaml-background-")
    out = open(os.path.join(top, "driver.out"), "w")
    env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.background_runs", top, *map(str, CRASH_SEEDS)],
                            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, top, out


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow (stress runs: minutes); LIMAML_SLOW=1 does the same")


def pytest_collection_modifyitems(session, config, items):
    """Tests marked slow are skipped unless asked for (--run-slow / LIMAML_SLOW=1). Tests reading the
    background runs go last, and the runs start as soon as the session does (when one of them is
    selected), so they overlap every other test."""
    if not (config.getoption("--run-slow") or os.environ.get("LIMAML_SLOW", "") not in ("", "0")):
        skip = pytest.mark.skip(reason="slow: run with --run-slow or LIMAML_SLOW=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
    waiting = [item for item in items if "background_runs" in getattr(item, "fixturenames", ())]
    if waiting:
        items[:] = [item for item in items if item not in waiting] + waiting
        config.stash[BACKGROUND] = start_background_runs()


def pytest_sessionfinish(session):
    proc, top, out = session.config.stash.get(BACKGROUND, (None, None, None))
    if proc is not None:
        if proc.poll() is None:
            proc.kill()  # the session ended before a test waited for it
            proc.wait()
        out.close()
        import shutil
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def background_runs(request):
    """(directory, results.json, output) of tests/background_runs.py, once it has finished."""
    import json
    import pathlib

    proc, top, out = request.config.stash.get(BACKGROUND, (None, None, None))
    if proc is None:
        proc, top, out = request.config.stash[BACKGROUND] = start_background_runs()
    code = proc.wait(timeout=1800)
    out.flush()
    output = (pathlib.Path(top) / "driver.out").read_text()
    assert code == 0, output[-3000:]
    return pathlib.Path(top), json.loads((pathlib.Path(top) / "results.json").read_text()), output
