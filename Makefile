# Set-up, demo, lint and tests. `make demo`, `make lint` and `make test` work on a fresh Debian/Ubuntu machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: setup data demo test gpu-check lint docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,hf]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package where apt is available; digits always works without it.
data:
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST: $(dir $(FMNIST))"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) && echo "Fashion-MNIST installed"; \
	elif command -v sudo >/dev/null 2>&1; then sudo apt-get install -y dataset-fashion-mnist; \
	else echo "Fashion-MNIST missing: install dataset-fashion-mnist or set FEDLAYER_DATA"; fi

demo: setup data
	$(BIN)/fedlayer compare simulations/demo.toml

test: setup data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

gpu-check: setup
	$(BIN)/python -m pytest tests/test_cuda.py tests/test_analysis_curves.py -k cuda -p no:cacheprovider
	$(BIN)/fedlayer bench barriers --device cuda --samples 1024

# The configuration reference is generated from the config declarations (tests/test_docs.py checks it).
docs: setup
	$(BIN)/python -m fedlayer.config_reference > docs/configuration.md

# Style (ruff) on everything, types (mypy, settings in pyproject.toml) on the packages.
lint: setup
	$(BIN)/ruff check fedlayer strategies tests
	$(BIN)/ruff format --check fedlayer strategies tests
	$(BIN)/mypy fedlayer strategies

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache
