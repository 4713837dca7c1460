import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

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

BACKGROUND = pytest.StashKey()  # the runs' process, in the process that started it
BACKGROUND_OWNER = pytest.StashKey()  # True in the process that made the shared directory
CRASH_SEEDS = (11, 6, 3)  # kill points (writes of a run): 6 in the export, 19 in the refresh, 34 in the publish


def start_background_runs(top: str) -> subprocess.Popen:
    """tests/background_runs.py as a background process writing into `top` (its output: driver.out,
    its exit code: exit_code once it has ended)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "2"}
    seeds = " ".join(map(str, CRASH_SEEDS))
    script = f'"$0" -m tests.background_runs "$1" {seeds} > "$1/driver.out" 2>&1; echo $? > "$1/exit.tmp"; mv "$1/exit.tmp" "$1/exit_code"'
    return subprocess.Popen(["bash", "-c", script, sys.executable, top], cwd=root, env=env, start_new_session=True)


def _background_dir(config) -> str:
    """One directory per test session, shared by pytest-xdist's workers (set by the controller)."""
    if "LIMAML_BACKGROUND_DIR" not in os.environ:
        os.environ["LIMAML_BACKGROUND_DIR"] = tempfile.mkdtemp(prefix="limaml-background-")
        config.stash[BACKGROUND_OWNER] = True
    return os.environ["LIMAML_BACKGROUND_DIR"]


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist): workers inherit it
        _background_dir(config)


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
        top = _background_dir(config)
        try:  # the first process of the session to get here starts the runs (xdist: one worker)
            os.mkdir(os.path.join(top, "started"))
        except FileExistsError:
            return
        config.stash[BACKGROUND] = start_background_runs(top)


def pytest_sessionfinish(session):
    proc = session.config.stash.get(BACKGROUND, None)
    if proc is not None and proc.poll() is None:
        other_readers = hasattr(session.config, "workerinput") and not (session.shouldfail or session.shouldstop)
        try:  # an xdist worker started them: the other worker may still read the results
            proc.wait(timeout=1800 if other_readers else 0)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # bash, the driver and its runs
            proc.wait()
    if session.config.stash.get(BACKGROUND_OWNER, False):
        shutil.rmtree(os.environ.pop("LIMAML_BACKGROUND_DIR"), ignore_errors=True)


@pytest.fixture(scope="session")
def background_runs(request):
    """(directory, results.json, output) of tests/background_runs.py, once it has finished."""
    top = pathlib.Path(_background_dir(request.config))
    if not (top / "started").exists():  # selected after collection (e.g. by -k): start them now
        (top / "started").mkdir()
        request.config.stash[BACKGROUND] = start_background_runs(str(top))
    deadline = time.monotonic() + 1800
    while not (top / "exit_code").exists():  # the runs may belong to another xdist worker
        assert time.monotonic() < deadline, "tests/background_runs.py did not finish in 30 minutes"
        time.sleep(1)
    output = (top / "driver.out").read_text()
    assert (top / "exit_code").read_text().strip() == "0", output[-3000:]
    return top, json.loads((top / "results.json").read_text()), output


# -- LIMAML_TEST_CPU=1: CPU seconds per test (this process + reaped children), robust on a busy machine --

def _cpu_seconds() -> float:
    import resource
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not os.environ.get("LIMAML_TEST_CPU"):
        yield
        return
    start = _cpu_seconds()
    yield
    item.config.stash.setdefault(CPU_SECONDS, {})[item.nodeid] = _cpu_seconds() - start


CPU_SECONDS = pytest.StashKey()


def pytest_terminal_summary(terminalreporter, config):
    used = config.stash.get(CPU_SECONDS, None)
    if used:
        terminalreporter.write_line(f"CPU seconds, {sum(used.values()):.0f} in all; the 30 largest:")
        for nodeid, seconds in sorted(used.items(), key=lambda kv: -kv[1])[:30]:
            terminalreporter.write_line(f"{seconds:8.1f}  {nodeid}")
