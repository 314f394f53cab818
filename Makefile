# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates the virtual environment on first use, with the pinned PyTorch build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.camkit-installed
DEMO_ARGS ?=

.PHONY: demo test lint docs figures clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev,examples,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/covid_ct.py --demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check camkit tests examples benchmarks
	$(VENV)/bin/ruff format --check camkit tests examples benchmarks

figures: $(STAMP)
	$(PY) benchmarks/plots.py

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site
