"""A missing system component (redis-server, a C++ compiler) skips its test locally but fails it under
CI, so CI cannot go green without the real components."""

import pytest

from conftest import in_ci, require_tool


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("yes", True), ("", False),
                                             ("false", False), ("0", False)])
def test_ci_detection(monkeypatch, value, expected):
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_missing_component_skips_locally(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        require_tool(None, "redis-server", "scripts/system_deps.sh")


def test_missing_component_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set: a missing component fails the run"):
        require_tool(None, "a C++ compiler", "scripts/system_deps.sh")


def test_present_component_is_returned(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert require_tool("/usr/bin/redis-server", "redis-server", "") == "/usr/bin/redis-server"


def test_the_system_tests_use_it(require_tool):
    """The redis and C++ loader tests go through require_tool (not skipif / pytest.skip)."""
    import inspect

    import test_feature_store
    import test_serving_export

    assert "require_tool(shutil.which(\"redis-server\")" in inspect.getsource(test_feature_store.redis_url)
    assert "require_tool(load_check.compiler()" in inspect.getsource(test_serving_export.test_cpp_loader_runs_the_export)
