# Quick start: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NEWEST := .ci/constraints/newest.txt
DEMO_DIR ?= workdirs/demo

.PHONY: demo test test-fast test-versions lint docs bench clean

# The newest supported pair (TF 2.21 + Keras 3.15), held by its constraints file.
$(STAMP): setup.cfg pyproject.toml $(NEWEST)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(NEWEST) -e '.[test]'
	touch $(STAMP)

$(VENV)/.%-installed: $(STAMP)
	$(PY) -m pip install --quiet -c $(NEWEST) -e '.[test,$*]'
	touch $@

demo: $(STAMP)
	$(PY) -m trainers.demo --workdir=$(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile tests  # everything, two worker processes (pytest-xdist; a file's module fixtures run once): ~15 min here

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -m "not slow" tests  # without subprocess / end-to-end tests: <= 3 min

# The floor (TF 2.18 + Keras 3.12, Python 3.10: whole suite) and a middle pair (TF 2.20 +
# Keras 3.13, Python 3.12: core files), each in its own venv under .venvs/ (.ci/versions.sh).
test-versions:
	.ci/versions.sh

lint: $(VENV)/.lint-installed
	$(VENV)/bin/ruff check .

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

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
	$(PY) -m benchmarks.whole_set_coherence
	$(PY) -m benchmarks.alignment
	$(PY) -m benchmarks.filter_grads
	$(PY) -m benchmarks.exact_fallback
	$(PY) -m benchmarks.distribute
	$(PY) benchmarks/memory.py

clean:
	rm -rf workdirs .pytest_cache site
