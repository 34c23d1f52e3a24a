# czii — make targets. `make help` lists them. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CZII := $(BIN)/czii

# Knobs (override on the command line: make train CONFIG=configs/resnet18.yaml FOLD=1)
CONFIG ?= configs/cpu_tiny.yaml
FOLD ?= 0
DATA ?=
OUT ?=
WORK ?= work

.DEFAULT_GOAL := help
.PHONY: help setup test test-all demo simulate score clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the package with pinned dependencies

test: $(STAMP) ## run the fast test suite (what CI runs)
	$(BIN)/pytest

test-all: $(STAMP) ## run every test, slow ones included
	$(BIN)/pytest -m "not gpu"

simulate: $(STAMP) ## simulate a small dataset into $(WORK)/sim
	$(CZII) simulate --out $(WORK)/sim --preset small

clean: ## remove work/ outputs (keeps .venv)
	rm -rf $(WORK)
