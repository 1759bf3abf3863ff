# Two commands for a fresh machine:
#   make run    # default study (config.yaml) on CPU, offline -> results/
#   make test   # the whole test suite
# Both create .venv and install requirements.txt first when missing or outdated.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
CORES  ?= 2
PYTEST_ARGS ?=

.PHONY: setup run test dry-run lint format clean slurm-up slurm-down slurm-status test-slurm

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

run: setup
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/report.html

dry-run: setup
	$(BIN)/snakemake -n

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# snakemake --lint (only the findings rules/common.smk justifies) and snakefmt --check, as tests/test_lint_format.py;
# `make format` rewrites the Snakefile and rules/*.smk with the pinned snakefmt.
lint: setup
	$(BIN)/python -m pytest -q tests/test_lint_format.py

format: setup
	$(BIN)/snakefmt Snakefile rules/

# Local single-node SLURM test cluster (root + apt; see docs/slurm.md). `make test` runs tests/test_slurm.py
# against it when it is up and skips that test otherwise; .ci/run starts and stops it around `make test`.
slurm-up:
	.ci/slurm/install.sh
	.ci/slurm/cluster.sh start

slurm-down:
	.ci/slurm/cluster.sh stop

slurm-status:
	.ci/slurm/cluster.sh status

test-slurm: setup
	SFW_REQUIRE_SLURM=1 $(BIN)/python -m pytest tests/test_slurm.py $(PYTEST_ARGS)

# Everything the workflow writes (results/ less the shipped results/README.md, as in .gitignore) and Snakemake's
# own records.
clean:
	find results -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf .snakemake
