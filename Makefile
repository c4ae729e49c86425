# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3

.PHONY: install demo test test-all test-lens lint clean

# torch==2.13.0 first: on the project's machines it is a local CPU build; a bare `torch`
# requirement would otherwise pull the multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# A one-seed icl_regression grid (baseline and myopic descent, default configs): trains both,
# prints the report table, then e(k) for both beside least squares and averaging.
demo: $(STAMP)
	$(VENV)/bin/constrained ablate configs/ablations/demo.yaml --jobs 2
	$(VENV)/bin/constrained curves runs/ablations/demo/baseline/seed0 runs/ablations/demo/myopic/seed0

# The default suite: everything but tests marked slow or gpu.
test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	$(PY) -m pytest -m "not gpu"

# The TransformerLens tests (export and measure), with the optional `lens` extra installed first.
LENS_STAMP := $(VENV)/.installed-lens
$(LENS_STAMP): $(STAMP) pyproject.toml
	$(VENV)/bin/pip install -q torch==2.13.0 -e ".[dev,lens]"
	touch $(LENS_STAMP)

test-lens: $(LENS_STAMP)
	$(PY) -m pytest -m lens

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs lightning_logs
