# The two commands of the README: `make demo` and `make test`. Both set up the venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
KDIFFUSION_VERSION ?= 0.1.1.post1

.PHONY: setup demo test bench-docs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,mcmc-peers]"
	# k-diffusion is a test oracle only: its sampling.py is loaded alone, and its own
	# dependencies (torchvision, wandb, ...) must not be installed, so --no-deps.
	$(PY) -m pip install -q -c constraints.txt --no-deps "k-diffusion==$(KDIFFUSION_VERSION)"
	touch $@

demo: setup
	$(VENV)/bin/fewstep sample --out fewstep-out/demo --force

test: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(PY) -m pytest -q -p no:cacheprovider
