# czii — make targets. `make help` lists them. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CZII := $(BIN)/czii

# Knobs (override on the command line: make train CONFIG=configs/resnet18.yaml FOLD=1 DATA=/path/to/kaggle)
CONFIG ?= configs/cpu_tiny.yaml
FOLD ?= 0
EXP ?= $(basename $(notdir $(CONFIG)))
WORK ?= work
RUN ?= $(WORK)/runs/$(EXP)
DATA ?=
MODELS ?= $(RUN)
SUBMISSION ?= submissions/$(EXP).csv
FORMAT ?= star
SOLUTION ?=
ROWS ?=
WEIGHTS ?=
ENSEMBLE ?= ensemble
KAGGLE_OUT ?= kaggle_dataset
DEVICE ?=
DATA_ARG = $(if $(DATA),--data $(DATA),)
DEVICE_ARG = $(if $(DEVICE),--device $(DEVICE),)
OVERWRITE ?=
OVERWRITE_ARG = $(if $(OVERWRITE),--overwrite,)

.DEFAULT_GOAL := help
.PHONY: help setup lint test test-all demo simulate train tune infer export score experiment leaderboard report ensemble kaggle bench bench-accuracy mutate clean

help: ## list the targets and their knobs
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  knobs: CONFIG=$(CONFIG) FOLD=$(FOLD) DATA=<kaggle dir|copick config> RUN=$(RUN) DEVICE=cpu|cuda MINUTES=$(MINUTES) OVERWRITE=1"
	@echo "         MODELS=$(MODELS) SUBMISSION=$(SUBMISSION) SOLUTION=<csv|copick|kaggle> VOXEL_SIZE=<Å, MRC inputs> FORMAT=$(FORMAT) EXPORT=<file>"

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,onnx]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the package with pinned dependencies

test: lint ## run the fast test suite after the linter (what CI runs; < 10 min on 2 cores)
	$(BIN)/pytest

lint: $(STAMP) ## ruff over src, tests and benchmarks (pyflakes and pycodestyle, [tool.ruff] in pyproject.toml)
	$(BIN)/ruff check src tests benchmarks

test-all: $(STAMP) ## run every test, slow ones included (not gpu)
	$(BIN)/pytest -m "not gpu"

# The demo: with no DATA, a simulated dataset and the CPU config; with DATA=<Kaggle dir>, the real pipeline (GPU config).
DEMO_RUN := $(WORK)/runs/demo
DEMO_CONFIG := configs/cpu_15min.yaml
REAL_CONFIG ?= configs/resnet34.yaml
REAL_EXP := $(basename $(notdir $(REAL_CONFIG)))

demo: $(STAMP) ## the main job: simulate → train 2 folds → tune → infer with TTA → score (CPU, < 20 min); DATA=<Kaggle dir> runs it on real data
ifeq ($(DATA),)
	$(CZII) simulate --out $(WORK)/sim --preset small --overwrite
	rm -rf $(DEMO_RUN)
	$(CZII) train --config $(DEMO_CONFIG) --fold 0 --out $(DEMO_RUN) --data $(WORK)/sim/copick_config.json $(DEVICE_ARG)
	$(CZII) train --config $(DEMO_CONFIG) --fold 1 --out $(DEMO_RUN) --data $(WORK)/sim/copick_config.json $(DEVICE_ARG)
	$(CZII) tune --run-dir $(DEMO_RUN)
	$(CZII) infer --models $(DEMO_RUN) --data $(WORK)/sim/kaggle --split test --out submissions/demo.csv --overwrite $(DEVICE_ARG)
	$(CZII) score --submission submissions/demo.csv --solution $(WORK)/sim/kaggle/solution.csv
else
	$(CZII) experiment --config $(REAL_CONFIG) --out $(WORK)/runs --data $(DATA) $(DEVICE_ARG)
	$(CZII) infer --models $(WORK)/runs/$(REAL_EXP) --data $(DATA) --split test --out submissions/$(REAL_EXP).csv --overwrite $(DEVICE_ARG)
endif

simulate: $(STAMP) ## simulate the small preset into $(WORK)/sim
	$(CZII) simulate --out $(WORK)/sim --preset small --overwrite

train: $(STAMP) ## train one fold: CONFIG=... FOLD=... [DATA=...]
	$(CZII) train --config $(CONFIG) --fold $(FOLD) --out $(RUN) $(DATA_ARG) $(DEVICE_ARG)

tune: $(STAMP) ## tune per-class thresholds on the out-of-fold picks of RUN
	$(CZII) tune --run-dir $(RUN)

infer: $(STAMP) ## ensemble + TTA inference of MODELS on DATA (test split) → SUBMISSION (OVERWRITE=1 replaces it)
	@test -n "$(DATA)" || { echo "make infer: DATA=<Kaggle dir|copick config> is required" >&2; exit 2; }
	$(CZII) infer --models $(MODELS) --data $(DATA) --split test --out $(SUBMISSION) $(OVERWRITE_ARG) $(DEVICE_ARG) $(if $(VOXEL_SIZE),--voxel-size $(VOXEL_SIZE))

export: $(STAMP) ## write SUBMISSION's scored picks as FORMAT (star, relion4, tbl, csv) to EXPORT
	@test -n "$(EXPORT)" || { echo "make export: EXPORT=<output file> is required" >&2; exit 2; }
	$(CZII) export --submission $(SUBMISSION) --format $(FORMAT) --out $(EXPORT) $(OVERWRITE_ARG)

score: $(STAMP) ## score SUBMISSION against SOLUTION (CSV, copick config or Kaggle dir)
	@test -n "$(SOLUTION)" || { echo "make score: SOLUTION=<solution CSV|copick config|Kaggle dir> is required" >&2; exit 2; }
	$(CZII) score --submission $(SUBMISSION) --solution $(SOLUTION)

experiment: $(STAMP) ## train every fold of CONFIG, tune, report, add a leaderboard row
	$(CZII) experiment --config $(CONFIG) --out $(WORK)/runs $(DATA_ARG) $(DEVICE_ARG)

leaderboard: $(STAMP) ## print submissions/leaderboard.csv, best first
	$(CZII) leaderboard

report: $(STAMP) ## rebuild the figures of RUN from its saved outputs
	$(CZII) report --run-dir $(RUN)

ensemble: $(STAMP) ## assemble ENSEMBLE from leaderboard ROWS="exp1 exp2" [WEIGHTS="1 2"] and score it out-of-fold
	$(CZII) ensemble --rows $(ROWS) $(if $(WEIGHTS),--weights $(WEIGHTS),) --out $(WORK)/ensembles/$(ENSEMBLE).yaml $(DATA_ARG) $(DEVICE_ARG)

kaggle: $(STAMP) ## build the offline Kaggle dataset folder from MODELS (run dir, checkpoints or ensemble YAML) into KAGGLE_OUT
	$(CZII) kaggle-build --models $(MODELS) --out $(KAGGLE_OUT)

$(WORK)/sim/copick_config.json: | $(STAMP)
	$(CZII) simulate --out $(WORK)/sim --preset small --overwrite

bench: $(STAMP) $(WORK)/sim/copick_config.json ## training throughput and full-tomogram inference time of CONFIG on this machine → benchmarks/results/
	$(BIN)/python benchmarks/bench_train.py --config $(CONFIG) $(DEVICE_ARG) --out benchmarks/results/train_$(EXP).md
	$(BIN)/python benchmarks/bench_inference.py --config $(CONFIG) $(DEVICE_ARG)

MINUTES ?= 5
FAMILY ?=
TOPCUP ?=
bench-accuracy: $(STAMP) ## F4 on unseen simulated test sets after MINUTES of CPU training of CONFIG (2 folds); FAMILY=C: out-of-family (train on A, B; TOPCUP=<python with topcup> runs it beside) → benchmarks/results/
	$(BIN)/python benchmarks/accuracy.py --config $(CONFIG) --minutes $(MINUTES) $(if $(FAMILY),--test-family $(FAMILY),) $(if $(TOPCUP),--topcup-python $(TOPCUP),)

mutate: $(STAMP) ## mutation testing of the pure core (metric, picks, geometry, peaks, TTA, tiling, targets, augment, losses, EMA/LR), formats/, normalize, submission, predictor spec and resume store on their fast tests → benchmarks/results/mutation.md
	rm -rf mutants
	# one thread: mutmut forks its test runner, and a forked multi-threaded torch can hang
	start=$$(date +%s); OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run; $(BIN)/mutmut export-cicd-stats; \
	$(BIN)/python benchmarks/mutation_report.py --seconds $$(( $$(date +%s) - start ))

clean: ## remove work/ outputs (keeps .venv)
	rm -rf $(WORK)
