# hepscan: two set-up commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hepscan-installed

.PHONY: install demo test lint typecheck pytest system-deps clean slurm-up slurm-down studies benchmarks

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

# The local SLURM test cluster (root): two slurmd "nodes" in their own network namespaces.
slurm-up:
	bash slurm/testcluster/up.sh --nodes 2

slurm-down:
	bash slurm/testcluster/down.sh

# Physics studies in full mode (tables + PNGs under studies-output/); see docs/studies.md.
studies: install
	$(PY) -m benchmarks.studies.unfolding_table --jobs 2
	$(PY) -m benchmarks.studies.falling_spectrum --jobs 2
	$(PY) -m benchmarks.studies.prior_dependence
	$(PY) -m benchmarks.studies.resolution_jets

# Speed goals: each prints its figures and `ratio=` against a baseline measured in the same run.
benchmarks: install
	$(PY) benchmarks/preprocess.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/scan_overhead.py
	$(PY) benchmarks/search_efficiency.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
