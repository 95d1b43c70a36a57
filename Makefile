# One target per thing a person does. Each creates the virtual environment it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.farm-installed

.PHONY: demo test lint venv clean-demo

venv: $(STAMP)

# torch is pinned here (the pair that installs without a download on the dev machines);
# pyproject keeps a range so GPU users bring their own CUDA build.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## a local campaign on the bundled eCLIP example, mutate proposer, 2 slots
	$(VENV)/bin/python scripts/demo.py

test: $(STAMP)  ## the whole test suite (starts a local redis-server when none answers)
	scripts/test.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy
