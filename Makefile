# hepscan: two set-up commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hepscan-installed

.PHONY: install demo test lint typecheck pytest system-deps clean

# CPU torch first (a wheel on disk here); anything that depends on torch installed before it would
# pull a multi-GB CUDA build. Horovod is then built from its sdist against that torch.
$(STAMP): pyproject.toml .ci/install-horovod.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all,test]"
	PYTHON=$(PY) bash .ci/install-horovod.sh
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests drive for real: headless Chromium (MLflow UI check) and SLURM
# (the local test cluster installs what it lacks itself).
system-deps:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: install
	$(PY) -u -m scan.demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

pytest: install system-deps
	$(PY) -m pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
