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

# the docs' figures: a short site-B and a digits training with --figures (about 15 min on 2
# CPU cores), then the plots of benchmarks/results; small PNGs land in docs/figures
FIGURE_CPE = --cpe-normalize --cpe-temperature 0.1
figures: $(STAMP)
	$(PY) examples/covid_ct.py --demo --figures --out runs/figures/covid --quiet
	$(PY) examples/mnist_usps.py --method snapmix_cpe $(FIGURE_CPE) --train-subset 300 \
		--test-subset 30 --epochs 6 --seeds 0 --figures --target usps --out runs/figures/digits \
		--overwrite --quiet
	$(PY) benchmarks/plots.py --gallery runs/figures

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site
