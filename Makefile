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

.PHONY: run test lint format install clean quick bench lessons lesson-times docs serve browser lab

$(VENV)/.installed: pyproject.toml jupyter/overrides.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_INDEX) "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev,docs]'
	@# the add-only C++ kernel of lesson 12 (1 to 3 minutes once; lessons and tests then find it built)
	$(PY) -c "from babybitnet.kernels.cpu import load_extension as l; print('C++ kernel:', 'built' if l() else 'not built, the pure-torch fallback runs')"
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp jupyter/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
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

# The learner's way in: JupyterLab on lessons/, each lesson opening as a notebook (jupytext). The setting lives in
# this virtualenv (.venv/share/jupyter/lab/settings/overrides.json), not in your own Jupyter settings. As root
# (a container) Jupyter refuses to start without --allow-root, so it is added there.
lab: install
	$(PY) -m jupyter lab --notebook-dir=lessons $(if $(filter 0,$(shell id -u)),--allow-root,)

# Course authors: regenerate the learner's lessons/ from solutions/ (make test fails while they differ).
lessons: install
	$(PY) -m babybitnet lessons

# Each lesson run top to bottom, one after the other: its CPU time (the budget: 60 s each, whatever else runs
# on the machine) and wall time, as a table; the numbers also go to runs/lesson-times.json.
lesson-times: install
	$(PY) -m babybitnet.course.timing --json runs/lesson-times.json

# The course website (mkdocs.yml): a strict build into site/. Each lesson runs once per change
# (mkdocs-jupyter's cache in .cache/); tests/test_course.py reads which ones ran instead of running them again.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

serve: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

# Headless Chromium for tests/test_site.py: Debian's chromium and chromium-driver, installed when missing
# and apt-get is there (as root, or with sudo). Elsewhere the browser test is skipped, with a message.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; } || \
		echo "could not install chromium and chromium-driver: the browser test will be skipped"; \
	else echo "no apt-get: install Chromium and ChromeDriver yourself, or the browser test is skipped"; fi

# Lint, the strict site build (it executes every lesson once), then every test.
test: lint docs browser
	$(PY) -m pytest

clean:
	rm -rf runs site site-screenshots .cache .pytest_cache .ruff_cache .hypothesis
