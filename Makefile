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
.PHONY: images deploy undeploy experiment-microk8s deploy-lint
.PHONY: helm chart-lint

help: ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-16s\033[0m %s\n",$$1,$$2}'

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

# Helm, built once from the Go module proxy (no release tarballs here), cached per version.
HELM_VERSION := v3.19.0
HELM := $(ECRL_CACHE)/helm-$(HELM_VERSION)/helm
CHART := deploy/helm/ecrl

$(HELM):
	HELM_VERSION=$(HELM_VERSION) ECRL_CACHE=$(ECRL_CACHE) bash deploy/tools/install-helm.sh >/dev/null

helm: $(HELM) ## build Helm from the Go module proxy once (~3 min cold on two cores, cached in ~/.cache/ecrl)

chart-lint: $(HELM) ## helm lint --strict and helm template of deploy/helm/ecrl in both modes (values.schema.json, fail checks)
	@for mode in baseline rl; do \
	  $(HELM) lint --strict $(CHART) --set mode=$$mode && \
	  $(HELM) template ecrl $(CHART) --namespace ecrl --set mode=$$mode --set loadtest.enabled=true >/dev/null && \
	  echo "chart-lint: mode=$$mode rendered" || exit 1; \
	done

test: $(VENV)/.dev-stamp testbed-build proto proto-lint deploy-lint helm chart-lint ## lint, then the whole test suite (unit, integration, e2e on the testbed)
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

# The GPU box (MicroK8s): images, set-up and Helm release, the comparison there. DRY_RUN=1 makes
# each of these print its commands (docker, microk8s, helm, ecrl) instead of running them.
REGISTRY ?= localhost:32000
# Empty: the scripts use `git describe --tags --always`, else the package version.
TAG ?=
MODE ?= rl
MODES ?= hpa-cpu,rl
SHAPES ?= step
REPEATS ?= 5
DRY_RUN ?=
DRY_RUN_FLAG := $(if $(filter 1,$(DRY_RUN)),--dry-run)
TAG_FLAG = $(if $(TAG),--tag $(TAG))

images: ## build the four images and push them to the box's registry (REGISTRY, TAG; DRY_RUN=1 prints the commands)
	bash deploy/docker/build-images.sh --registry $(REGISTRY) $(TAG_FLAG) $(DRY_RUN_FLAG)

deploy: ## on the GPU box: MicroK8s addons, images, Helm release, GPU time-slicing (MODE=baseline|rl, TAG, DRY_RUN=1)
	bash deploy/microk8s/install.sh --mode $(MODE) --registry $(REGISTRY) --build-images $(TAG_FLAG) $(DRY_RUN_FLAG)

undeploy: ## give the GPU back whole (time-slicing off), remove the Helm release and its namespace from the box
	bash deploy/microk8s/uninstall.sh $(DRY_RUN_FLAG)

experiment-microk8s: $(VENV)/.dev-stamp ## the comparison on the box (MODES, SHAPES, REPEATS; results/microk8s)
	$(VENV)/bin/ecrl experiment --backend microk8s --modes $(MODES) --shapes $(SHAPES) --repeats $(REPEATS) --out $(or $(OUT),results/microk8s) $(DRY_RUN_FLAG)

deploy-lint: | $(UV) ## shellcheck every shell script, hadolint every Dockerfile (both installed once)
	bash deploy/testbed/install-debs.sh shellcheck
	bash deploy/tools/lint-shell.sh
	UV=$(UV) ECRL_CACHE=$(ECRL_CACHE) bash deploy/tools/lint-docker.sh

clean: ## remove build outputs and results (keeps the cache in ~/.cache)
	rm -rf $(VENV) results .pytest_cache .ruff_cache build *.egg-info
