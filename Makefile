# Two commands do everything on a fresh clone:
#   make run    set up .venv, then run the embedded default pipeline and print where its report is
#   make test   set up .venv, then run the whole test suite
# `make help` lists every target.
#
# Environments: every dependency but torch is pinned in requirements/constraints.txt (`make lock`
# refreshes it). TORCH_SPEC picks the torch build and pins its version: the default, torch==2.13.0,
# takes the build the package index offers for this platform (PyPI: a CUDA build on Linux x86_64,
# the CPU build on macOS and Windows). A CPU-only or a specific CUDA build (-B: also on an existing
# .venv; pick the CUDA version your driver supports):
#   make -B setup TORCH_SPEC="torch==2.13.0+cpu --index-url https://download.pytorch.org/whl/cpu"
#   make -B setup TORCH_SPEC="torch==2.13.0+cu128 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
CONSTRAINTS := requirements/constraints.txt
# `make lock` resolves the dependencies afresh in this throwaway virtual environment.
LOCK_VENV ?= $(or $(TMPDIR),/tmp)/bigram-subnetworks-lock-venv
# The config a pipeline target runs (make masks CONFIG=config/smoke.yaml) and extra Snakemake
# arguments (make run SNAKEMAKE_ARGS="--config 'masks={\"lr\": 0.02}'").
CONFIG ?= params.yaml
SNAKEMAKE_ARGS ?=

BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
SNAKEMAKE = $(BIN)/snakemake --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

.PHONY: help setup lock run smoke data models masks analysis report dvc pull clean test test-fast \
	test-cluster lint check format

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(VENV)/.installed ## Create .venv: TORCH_SPEC's torch, then the project at the pinned versions

# Re-installs only when the dependencies or their pins change (idempotent). torch first, unpinned by
# the constraints (TORCH_SPEC may name another index); then everything else at its pinned version.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

# From a fresh virtual environment rather than `pip freeze` of .venv: a long-lived .venv keeps
# packages that no dependency needs any more (and versions pinned by hand), a fresh one holds
# exactly what pyproject's ranges resolve to today. The header comments of the file are kept;
# torch and its CUDA-only packages stay out (TORCH_SPEC pins torch).
lock: ## Re-resolve pyproject's ranges in a fresh venv and pin the result in requirements/constraints.txt
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev,hf,slurm]'
	{ grep '^#' $(CONSTRAINTS); $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable \
		| grep -v '^#' | grep -viE '^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)=='; \
	} > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)
	@echo "$(CONSTRAINTS): $$(grep -c '==' $(CONSTRAINTS)) pins; now run: make setup test"

run: setup ## The whole pipeline of CONFIG (default: the embedded default); prints the report's path
	$(SNAKEMAKE)

smoke: ## The whole pipeline on the tiny smoke config (about 2 minutes)
	$(MAKE) run CONFIG=config/smoke.yaml

data: setup ## Corpus, tokenizer, token sequences and bigram statistics of CONFIG
	$(SNAKEMAKE) data

models: setup ## ... and the models (pretrained here, or fetched)
	$(SNAKEMAKE) models

masks: setup ## ... and every mask
	$(SNAKEMAKE) masks

analysis: setup ## ... and every analysis table
	$(SNAKEMAKE) analysis

report: setup ## ... and the report (the same as run)
	$(SNAKEMAKE) all

dvc: setup ## Write dvc.yaml for CONFIG (then: dvc repro)
	$(BIN)/bsn dvc --config $(CONFIG)

# After cloning a shared run: fetch its artifacts from the DVC remote, then record them as current
# for Snakemake (a fresh clone has no Snakemake records of them).
pull: setup ## dvc pull, then mark the pulled artifacts current for Snakemake
	$(BIN)/dvc pull
	$(SNAKEMAKE) --touch

clean: setup ## Delete every output of CONFIG (its run and its data folders)
	$(SNAKEMAKE) --delete-all-output

# One pytest worker per core (pytest-xdist), each test module on one worker (--dist loadscope: a
# module's fixtures, the shared smoke run of test_workflow.py among them, are built once).
PYTEST_PARALLEL ?= -n auto --dist loadscope

test: setup ## The whole test suite (what CI runs); prints the ten slowest tests
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) --durations=10

test-fast: setup ## Unit tests only: no end-to-end pipeline runs (about a minute)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not workflow and not cluster and not slow"

# A single-node SLURM cluster with accounting on loopback (Debian packages, root), the smoke
# pipeline submitted through profiles/slurm, then the cluster is stopped again.
test-cluster: setup ## The smoke pipeline on a throwaway SLURM cluster (root, Debian)
	bash tests/cluster/slurm.sh install
	bash tests/cluster/slurm.sh start
	BSN_REQUIRE_SLURM=1 $(BIN)/python -m pytest -m cluster tests/test_cluster.py; \
		status=$$?; bash tests/cluster/slurm.sh stop; exit $$status

lint: setup ## ruff, snakefmt and snakemake --lint
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint > /dev/null

check: lint test ## lint, then test

format: setup ## Format the code
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/snakefmt Snakefile workflow/rules

