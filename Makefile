# make lab: a venv with Cave and JupyterLab, the kernel installed, JupyterLab open on examples/.
# make test: the test extras, lint, type check, the whole test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: lab install test lint bench clean test-under-load soak test-checkpoint-fuzz

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

# The whole suite three times in a row while two processes keep both cores busy (issue 11): a
# test that races wall-clock timers fails here long before it fails in CI.
test-under-load: lint
	$(PY) -c 'while True: pass' & b1=$$!; $(PY) -c 'while True: pass' & b2=$$!; \
	trap 'kill $$b1 $$b2' EXIT; \
	for i in 1 2 3; do echo "== run $$i of 3, under load"; $(VENV)/bin/pytest $(PYTEST_ARGS) || exit 1; done

# The full 1,000-turn soak (the suite runs a bounded 100-turn version).
soak: $(VENV)/.test-deps
	CAVE_SOAK_TURNS=1000 $(VENV)/bin/pytest -p no:cacheprovider -o timeout=3600 -s tests/agent/test_soak.py
# The full spawn-safety soak of strict mode (the suite runs 200 steps).
.PHONY: strict-soak
strict-soak: $(VENV)/.test-deps
	CAVE_STRICT_SOAK_STEPS=1000 $(VENV)/bin/pytest tests/strict/test_strict_soak.py
