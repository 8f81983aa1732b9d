# hepscan: two set-up commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# TORCH=cpu (default, what CI tests) or TORCH=cu12: the PyPI torch wheel, which on Linux x86_64
# is the CUDA 12 build (cuDNN, cuBLAS and NCCL come as nvidia-* wheels), and Horovod rebuilt with
# NCCL GPU operations (.ci/install-horovod.sh; docs/gpu.md). `make install-gpu` = TORCH=cu12.
TORCH ?= cpu
TORCH_VERSION := 2.13.0
ifeq ($(TORCH),cpu)
STAMP := $(VENV)/.hepscan-installed
TORCH_PIP := torch==$(TORCH_VERSION)
TORCH_SWAP := true
HOROVOD_GPU :=
else ifeq ($(TORCH),cu12)
STAMP := $(VENV)/.hepscan-installed-cu12
TORCH_PIP := --index-url https://pypi.org/simple torch==$(TORCH_VERSION)
# a CPU build (2.13.0+cpu) satisfies ==2.13.0: remove it first so pip fetches the CUDA one
TORCH_SWAP := $(PY) -c "import torch, sys; sys.exit(torch.version.cuda is None)" 2>/dev/null \
	|| $(PY) -m pip uninstall -y -q torch
HOROVOD_GPU := NCCL
else
$(error TORCH must be cpu or cu12, not '$(TORCH)')
endif

.PHONY: install install-gpu demo test lint typecheck pytest system-deps clean slurm-up slurm-down studies benchmarks \
	unfold-cms prior-shift-closure generative-jets

# CPU torch first (a wheel on disk here); anything that depends on torch installed before it would
# pull a multi-GB CUDA build. Horovod is then built from its sdist against that torch.
$(STAMP): pyproject.toml .ci/install-horovod.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(TORCH_SWAP)
	$(PY) -m pip install -q $(TORCH_PIP)
	$(PY) -m pip install -q -e ".[all,test]"
	PYTHON=$(PY) HOROVOD_GPU=$(HOROVOD_GPU) bash .ci/install-horovod.sh
	touch $(STAMP)

install: $(STAMP)

install-gpu:
	$(MAKE) install TORCH=cu12
	$(PY) benchmarks/gpu_check.py --quick

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
	$(PY) -m pytest -q --durations=25

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
	$(PY) -m benchmarks.studies.param_classifier
	$(PY) -m benchmarks.studies.vae_anomaly
	PYTHONPATH=. $(PY) -m benchmarks.studies.recoil_regression
	$(MAKE) unfold-cms prior-shift-closure generative-jets

# Real data (issue 10, item 7): simulate zll, preprocess, scan, register 2 models, apply them
# (`hepscan apply`'s Python API) to the CMS file uproot-Zmumu.root; ~3 min on 2 cores.
# PYTHONPATH=. : the CMS selection (configs/preprocess_zmumu_cms.yaml) lives in benchmarks/.
unfold-cms: install
	PYTHONPATH=. $(PY) -m benchmarks.studies.unfold_cms --figure docs/figures/cms_zmumu_unfolded.png

# Closure of the demo model (configs/demo.yaml scan) on held-out zll with truth tilted ±20 %
# (issue 10, item 8): chi2/ndf for ML with 0/1/2 prior iterations vs IBU.
prior-shift-closure: install
	PYTHONPATH=. $(PY) -m benchmarks.studies.prior_shift_closure \
		--figure docs/figures/prior_shift_closure.png

# Fast detector simulation (issue 12): flow vs GAN vs resolution-classifier sampling vs the
# simulator on jets and jets_tail; each family the best of a 24-trial TPE + ASHA scan on jets
# (50k rows per split), retrained on all 320k training rows; last line flow_auc=<value>.
# ~30-40 min on a quiet 2-core machine (docs/studies.md, study 10).
generative-jets: install
	PYTHONPATH=. $(PY) -m benchmarks.studies.generative_jets

# Speed goals: each prints its figures and `ratio=` against a baseline measured in the same run.
benchmarks: install
	$(PY) benchmarks/preprocess.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/scan_overhead.py
	$(PY) benchmarks/search_efficiency.py
	$(PY) benchmarks/horovod_vs_ddp.py
	$(PY) benchmarks/train_memory.py
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
