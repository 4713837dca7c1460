# The two set-up-and-run commands of README: `make demo` (main job end to end) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q --disable-pip-version-check
# pytest-xdist processes: one per core of the CI machine
TEST_WORKERS ?= 2

.PHONY: demo test test-fast bench

$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e ".[all]"
	bash scripts/system_deps.sh
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/limaml demo --workdir runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# the edit-test loop: every test but those marked heavy (end-to-end runs, fresh processes), under 2 minutes
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not heavy" tests

bench: $(VENV)/.installed
	$(PY) -m benchmarks
