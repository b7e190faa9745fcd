# Two commands do all the set-up: `make run` and `make test`.
# Both create .venv on first use and install the package with what it needs.
#
# TORCH picks the PyTorch build. The default is the CPU wheel that these machines
# carry (and the right build from PyPI elsewhere). A CPU-only Linux machine
# elsewhere: make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: run test lint format install clean quick bench lessons

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_INDEX) "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The main job: the seed project's experiment, babyGPT vs babyBitNet on Tiny Shakespeare, on the CPU.
run: install
	$(PY) -m babybitnet compare --preset seed --device cpu --out runs/seed

quick: install
	$(PY) -m babybitnet compare --preset quick --device cpu --out runs/quick

bench: install
	$(PY) -m babybitnet bench train --preset seed --device cpu

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# Course authors: regenerate the learner's lessons/ from solutions/ (make test fails while they differ).
lessons: install
	$(PY) -m babybitnet lessons

test: lint
	$(PY) -m pytest

clean:
	rm -rf runs site .pytest_cache .ruff_cache .hypothesis
