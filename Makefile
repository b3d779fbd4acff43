# Set-up and entry points. `make test` and `make demo` work on a fresh machine.
# TORCH_SPEC picks the torch install: the default is the CPU build 2.13.0; GPU users pass
# TORCH_SPEC="torch==<their version>" or TORCH_SPEC=keep to leave an installed torch alone.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup lint format test test-slow demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	if [ "$(TORCH_SPEC)" != "keep" ]; then $(PIP) install -q "$(TORCH_SPEC)"; fi
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	$(VENV)/bin/native3d demo --out runs/demo

bench: $(STAMP)
	$(PY) benchmarks/data_prep.py

clean:
	rm -rf $(VENV) runs .pytest_cache
