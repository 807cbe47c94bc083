# The two commands a newcomer types: `make run` (main job on the embedded default model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= models/mobilenet_v2.yaml

.PHONY: setup run test test-fast images clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e '.[dev,torch,openvino,ray]'
	$(BIN)/pip install -q --no-deps 'onnx2tf==1.29.24'  # ONNX -> TFLite; its own pins are too old (pyproject.toml)
	touch $@

run: setup
	$(BIN)/edgeq run $(CONFIG)

# lint-imports checks the import rules of pyproject.toml ([tool.importlinter]; docs/architecture.md) first
test: setup
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/pytest

test-fast: setup
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/pytest -m "not slow and not docker"

clean:
	rm -rf runs .pytest_cache

# Docker images (docker/*.Dockerfile; docker/build.sh): pipeline (linux/amd64) and the device
# runtime (linux/arm64, under QEMU on x86-64); add jetson where nvcr.io is reachable.
#   make images IMAGES="pipeline runtime jetson" DOCKER_FLAGS="--ca-certs /etc/ssl/certs/ca-certificates.crt"
IMAGES ?= pipeline runtime
DOCKER_FLAGS ?=

images:
	docker/build.sh $(DOCKER_FLAGS) $(IMAGES)
