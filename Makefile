# DerivativeAnimator. `make all` runs the main job end to end; `make test` runs the tests.
# Every target sets up what it needs first (scripts/setup.sh is idempotent and fast when done).
SHELL := /bin/bash
PY := .venv/bin/python
SETUP := .venv/.derivanim-setup
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup all data data-validate test test-slow lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(SETUP): pyproject.toml scripts/setup.sh
	@./scripts/setup.sh

setup: ## install system packages (apt), .venv and the project; a second run takes seconds
	@./scripts/setup.sh

all: data ## the main job end to end on the embedded default model

data: $(SETUP) ## build the curriculum dataset (data/derivatives): ARGS="data.sizes.train=10000"
	$(PY) -m derivative_animator.dataset $(ARGS)

data-validate: $(SETUP) ## build the dataset and render every scene with Manim (dry run, parallel)
	$(PY) -m derivative_animator.dataset validate.enabled=true $(ARGS)

test: $(SETUP) ## the default test suite (fast; slow tests excluded)
	$(PY) -m pytest $(ARGS)

test-slow: $(SETUP) ## only the slow tests (renders of every level and style, ...)
	$(PY) -m pytest -m slow $(ARGS)

lint: $(SETUP) ## ruff
	$(PY) -m ruff check src tests scripts

clean: ## remove generated data, outputs and MLflow runs (asks first)
	@read -p "delete data/*, outputs/* and mlruns/*? [y/N] " answer && [[ $$answer == y ]] && \
	  find data outputs mlruns -mindepth 1 -maxdepth 1 ! -name .gitkeep ! -name README.md -exec rm -rf {} + || true
