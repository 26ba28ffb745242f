# Quick start: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_DIR ?= workdirs/demo

.PHONY: demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m trainers.demo --workdir=$(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -n 2 tests  # two worker processes (pytest-xdist): ~13 min here

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m benchmarks.optimizers
	$(PY) benchmarks/coherence.py
	$(PY) -m benchmarks.coherence_models
	$(PY) -m benchmarks.measure_calls
	$(PY) -m benchmarks.keras_steps
	$(PY) -m benchmarks.transformer_rules
	$(PY) -m benchmarks.dense_forms
	$(PY) -m benchmarks.conv_rules
	$(PY) -m benchmarks.filter_grads
	$(PY) -m benchmarks.exact_fallback
	$(PY) -m benchmarks.distribute
	$(PY) benchmarks/memory.py

clean:
	rm -rf workdirs .pytest_cache
