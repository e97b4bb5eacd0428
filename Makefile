# make lab: a venv with Cave and JupyterLab, the kernel installed, JupyterLab open on examples/.
# make test: the test extras, lint, type check, the whole test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: lab install test lint bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY)
	$(PIP) install -q -e '.[lab]'
	$(PY) -m cave.cli install --sys-prefix

lab: install
	$(PY) -m jupyterlab examples/

$(VENV)/.test-deps: $(PY) pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $@

lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff check cave tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: $(VENV)/.test-deps
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The full spawn-safety soak of strict mode (the suite runs 200 steps).
.PHONY: strict-soak
strict-soak: $(VENV)/.test-deps
	CAVE_STRICT_SOAK_STEPS=1000 $(VENV)/bin/pytest tests/strict/test_strict_soak.py
