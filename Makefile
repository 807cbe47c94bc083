# The two commands a newcomer types: `make run` (main job on the embedded default model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= models/mobilenet_v2.yaml

.PHONY: setup run test test-fast images clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

run: setup
	$(BIN)/edgeq run $(CONFIG)

test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow and not docker"

clean:
	rm -rf runs .pytest_cache
