# Two commands do everything on a fresh clone:
#   make run    set up .venv, then run the embedded default pipeline (snakemake --cores all)
#   make test   set up .venv, then run the whole test suite
#
# CPU by default: TORCH_SPEC pins the CPU wheel. For a CUDA machine, install the matching build first,
# e.g.  make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
CORES ?= all
SNAKEMAKE_ARGS ?=

BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup run data pull test test-cluster lint check format clean-smoke

setup: $(VENV)/.installed

# Re-installs only when the project's dependencies change (idempotent).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: setup
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

data: setup
	$(BIN)/snakemake --cores $(CORES) data $(SNAKEMAKE_ARGS)

# After cloning a shared run: fetch its artifacts from the DVC remote, then mark them current for
# Snakemake (DVC checks files out in arbitrary order, so their modification times are meaningless).
pull: setup
	$(BIN)/dvc pull
	$(BIN)/snakemake --touch --cores 1 $(SNAKEMAKE_ARGS)

test: setup
	$(BIN)/python -m pytest

# A single-node SLURM cluster with accounting on loopback (Debian packages, root), the smoke
# pipeline submitted through workflow/profiles/slurm, then the cluster is stopped again.
test-cluster: setup
	bash tests/cluster/slurm.sh install
	bash tests/cluster/slurm.sh start
	BSN_REQUIRE_SLURM=1 $(BIN)/python -m pytest -m cluster tests/test_cluster.py; \
		status=$$?; bash tests/cluster/slurm.sh stop; exit $$status

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakefmt --check workflow/Snakefile workflow/rules
	$(BIN)/snakemake --lint --cores 1 > /dev/null

check: lint test

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/snakefmt workflow/Snakefile workflow/rules
