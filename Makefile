# ECRL — every target bootstraps what it needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_VERSION ?= 3.11
VENV ?= .venv
PY := $(VENV)/bin/python
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
# Where downloaded/built tools are cached (outside the repo, shared between clones).
ECRL_CACHE ?= $(HOME)/.cache/ecrl
export UV_CACHE_DIR ?= $(HOME)/.cache/uv

.PHONY: help demo test test-unit lint fmt bench train testbed testbed-build testbed-down loadtest proto proto-lint calibrate clean venv venv-dev

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-16s\033[0m %s\n",$$1,$$2}'

$(UV):
	python3 -m pip install --quiet --user uv==0.13.9 || python3 -m pip install --quiet uv==0.13.9

$(VENV)/.base-stamp: requirements/base.lock pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing -p $(PYTHON_VERSION) $(VENV)
	$(UV) pip sync --quiet -p $(PY) requirements/base.lock
	$(UV) pip install --quiet -p $(PY) --no-deps -e .
	@touch $@

$(VENV)/.dev-stamp: requirements/dev.lock pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing -p $(PYTHON_VERSION) $(VENV)
	$(UV) pip sync --quiet -p $(PY) requirements/dev.lock
	$(UV) pip install --quiet -p $(PY) --no-deps -e .
	@touch $@ $(VENV)/.base-stamp

venv: $(VENV)/.base-stamp ## create .venv with the runtime dependencies (pinned)
venv-dev: $(VENV)/.dev-stamp ## create .venv with runtime + training + test dependencies (pinned)

lock: | $(UV) ## re-resolve requirements/*.lock from pyproject.toml
	$(UV) pip compile -q -p $(PYTHON_VERSION) pyproject.toml -o requirements/base.lock
	$(UV) pip compile -q -p $(PYTHON_VERSION) pyproject.toml --extra train --extra dev --extra testbed --extra services -o requirements/dev.lock

demo: $(VENV)/.base-stamp ## run the default comparison on the embedded twin (all baselines + oracle, N=5) and print the KPI table
	$(VENV)/bin/ecrl demo --out results/demo

# gRPC/protobuf: proto/ecrl/v1/*.proto → ecrl/v1/*_pb2*.py (built, never committed or edited).
PROTOS := $(wildcard proto/ecrl/v1/*.proto)
BUF_VERSION := 1.75.0
BUF := $(ECRL_CACHE)/buf-$(BUF_VERSION)/node_modules/.bin/buf

ecrl/v1/.stamp: $(PROTOS) $(VENV)/.dev-stamp
	mkdir -p ecrl/v1 && touch ecrl/v1/__init__.py
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	@touch $@

proto: ecrl/v1/.stamp ## generate the gRPC/protobuf Python code from proto/ (grpcio-tools)

$(BUF):
	npm install --prefix $(ECRL_CACHE)/buf-$(BUF_VERSION) --no-audit --no-fund --silent @bufbuild/buf@$(BUF_VERSION)

proto-lint: $(BUF) ## buf lint (STANDARD rules) and buf format check of proto/
	$(BUF) lint
	$(BUF) format --diff --exit-code proto

test: $(VENV)/.dev-stamp testbed-build proto proto-lint ## lint, then the whole test suite (unit, integration, e2e on the testbed)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	ECRL_E2E=1 ECRL_CACHE=$(ECRL_CACHE) $(PY) -m pytest -q

test-unit: $(VENV)/.dev-stamp ## fast unit tests only
	$(PY) -m pytest -q tests/unit

lint: $(VENV)/.dev-stamp ## ruff lint + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

fmt: $(VENV)/.dev-stamp ## format and autofix
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: $(VENV)/.dev-stamp testbed-build proto ## benchmarks: twin, demo wall time, services (Decide, /prioritize, collector tick) (figures go to BENCHMARKS.md)
	ECRL_CACHE=$(ECRL_CACHE) $(PY) -m ecrl.bench

train: $(VENV)/.dev-stamp ## train the PPO scaling policy and the placement scorer on the twin (≈ 10 min on 2 cores), install both under ecrl/models/
	$(VENV)/bin/ecrl train --out runs/train --install ecrl/models/rl-policy.onnx
	$(VENV)/bin/ecrl placement train --out runs/placement --install ecrl/models/placement.onnx

testbed-build: ## install etcd/Prometheus (Debian) if missing and build the control plane once (~10 min cold, cached in ~/.cache/ecrl)
	bash deploy/testbed/install-debs.sh
	ECRL_CACHE=$(ECRL_CACHE) bash deploy/testbed/build.sh >/dev/null

TESTBED_NAME ?= ecrl
TESTBED_NODES ?= reference-box
EMULATOR_TIME_SCALE ?= 4
testbed: $(VENV)/.dev-stamp testbed-build ## start the testbed: Kubernetes 1.33 control plane, kwok GPU nodes, Prometheus, kube-state-metrics, data-plane emulator (127.0.0.1)
	ECRL_CACHE=$(ECRL_CACHE) $(PY) -m ecrl.testbed.cluster up --name $(TESTBED_NAME) --nodes $(TESTBED_NODES)
	ECRL_CACHE=$(ECRL_CACHE) $(PY) -m ecrl.testbed.monitoring up --name $(TESTBED_NAME)
	ECRL_CACHE=$(ECRL_CACHE) $(PY) -m ecrl.testbed.dataplane up --name $(TESTBED_NAME) --time-scale $(EMULATOR_TIME_SCALE)

testbed-down: ## stop every testbed process (control plane, Prometheus, kube-state-metrics, emulator) and remove its files
	ECRL_CACHE=$(ECRL_CACHE) $(PY) -m ecrl.testbed.cluster down --name $(TESTBED_NAME)

loadtest: $(VENV)/.dev-stamp ## run Locust headless against the testbed's emulator (SHAPE=step by default), CSVs under results/loadtest
	$(PY) -m ecrl.load.locust_run --host http://127.0.0.1:8000 --shape $(or $(SHAPE),step) --out results/loadtest/run

calibrate: $(VENV)/.dev-stamp ## measure MobileNetV4-conv-small on this CPU (torch -> ONNX -> onnxruntime) and write a twin profile
	$(VENV)/bin/ecrl calibrate local-cpu --out ecrl/profiles/local-cpu-mobilenetv4.yaml

clean: ## remove build outputs and results (keeps the cache in ~/.cache)
	rm -rf $(VENV) results .pytest_cache .ruff_cache build *.egg-info
