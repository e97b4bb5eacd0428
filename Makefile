# make lab: a venv with Cave and JupyterLab, the kernel installed, JupyterLab open on examples/.
# make test: the test extras, lint, type check, the whole test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: lab install test lint bench clean test-checkpoint-fuzz

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

# The write-tracking differential test with many more examples than the suite runs (issue 9).
FUZZ_EXAMPLES ?= 400
test-checkpoint-fuzz: $(VENV)/.test-deps
	CAVE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) CAVE_FUZZ_STEPS=60 $(VENV)/bin/pytest -p no:cacheprovider \
		-o timeout=0 tests/checkpoint/test_checkpoint_tracking_fuzz.py

bench: $(VENV)/.test-deps
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
