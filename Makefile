# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3
# Every dependency, direct and transitive, pinned: installs take versions from here, never the newest release.
LOCK   := requirements/lock.txt
PIP    := pip==26.3
UV     := uv==0.13.9

.PHONY: install lock demo test test-all test-lens lint clean

# The lock is a constraints file: each extra installs only what it needs, at the locked version. torch is the
# local CPU build (requirements/pins.txt says why).
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(PIP)
	$(VENV)/bin/pip install -q -c $(LOCK) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# A one-seed icl_regression grid (baseline and both forms of myopic descent, default configs): trains both,
# prints the report table, then e(k) for both beside least squares and averaging.
demo: $(STAMP)
	$(VENV)/bin/constrained ablate configs/ablations/demo.yaml --jobs 2
	$(VENV)/bin/constrained curves runs/ablations/demo/baseline/seed0 runs/ablations/demo/myopic_kv/seed0 runs/ablations/demo/myopic_input/seed0

# The default suite: everything but tests marked slow or gpu.
test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	$(PY) -m pytest -m "not gpu"

# The TransformerLens tests (export and measure), with the optional `lens` extra installed first.
LENS_STAMP := $(VENV)/.installed-lens
$(LENS_STAMP): $(STAMP) pyproject.toml $(LOCK)
	$(VENV)/bin/pip install -q -c $(LOCK) -e ".[dev,lens]"
	touch $(LENS_STAMP)

test-lens: $(LENS_STAMP)
	$(PY) -m pytest -m lens

# Re-resolve every dependency (default, dev and lens extras) to the newest releases pyproject.toml and
# requirements/pins.txt allow, for Linux x86-64 and Python 3.11. Run it on purpose, then `make test test-lens`.
lock: $(STAMP)
	$(VENV)/bin/pip install -q $(UV)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra lens --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --constraint requirements/pins.txt \
		$(if $(wildcard /opt/wheels),--find-links /opt/wheels) --quiet -o $(LOCK)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs lightning_logs
