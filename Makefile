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

.PHONY: setup run test dry-run clean

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

clean:
	rm -rf results/data results/predictions results/scores results/aggregate results/charts results/logs .snakemake
