# DerivativeAnimator. `make all` runs the main job end to end; `make test` lints, then runs the tests.
# Every target sets up what it needs first (scripts/setup.sh is idempotent and fast when done).
SHELL := /bin/bash
PY := .venv/bin/python
SETUP := .venv/.derivanim-setup
ARGS ?=
# README's table: every scene rendered, verified retries included (about 15 min for both on 2 cores with
# bf16, 2026-12-06); the oracle and the base (it writes no scene) are left out.
BENCHMARK_BASELINES := "eval.baselines=[finetuned,self_consistency,verified]"

.DEFAULT_GOAL := help
.PHONY: help setup all data data-validate pretrain curve serve load-test train reinforce seeds sweep sweep-summary ui eval eval-benchmarks header-math doctor \
        benchmark test test-slow mutate lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(SETUP): pyproject.toml scripts/setup.sh
	@./scripts/setup.sh

setup: ## install system packages (apt), .venv and the project; a second run takes seconds
	@./scripts/setup.sh

all: $(SETUP) ## the main job end to end on the shipped base model: data, LoRA fine-tuning, eval
	$(PY) -m derivative_animator.dataset
	$(PY) -m derivative_animator.train
	$(PY) -m derivative_animator.evaluate

data: $(SETUP) ## build the curriculum dataset (data/derivatives): ARGS="data.sizes.train=10000"
	$(PY) -m derivative_animator.dataset $(ARGS)

data-validate: $(SETUP) ## build the dataset and render every scene with Manim (dry run, parallel)
	$(PY) -m derivative_animator.dataset validate.enabled=true $(ARGS)

pretrain: $(SETUP) ## rebuild the shipped base (models/derivanim-tiny) from its recipe; resumes where it stopped
	@test -f data/derivatives/test.jsonl || $(PY) -m derivative_animator.dataset
	$(PY) -m derivative_animator.pretrain $(ARGS)

curve: $(SETUP) ## the compute-quality curve (docs/compute_quality.png): raw math vs pretraining tokens and fine-tuning steps
	$(PY) scripts/compute_quality.py $(ARGS)

train: $(SETUP) ## fine-tune with LoRA (builds data and base model if missing): ARGS="lora=r16"
	@test -f data/derivatives/train.jsonl || $(PY) -m derivative_animator.dataset
	$(PY) -m derivative_animator.train $(ARGS)

reinforce: $(SETUP) ## learn from the math judge after fine-tuning (GRPO on generator functions): ARGS="reinforce.model=DIR"
	$(PY) -m derivative_animator.reinforce $(ARGS)

seeds: $(SETUP) ## three fine-tuning seeds of make all's recipe, then each one's header math and the median (about 2 h on 2 cores with bf16)
	@test -f data/derivatives/train.jsonl || $(PY) -m derivative_animator.dataset
	$(PY) -m derivative_animator.train experiment=seeds $(ARGS)
	$(PY) -m derivative_animator.eval.header_math --model $$(ls -d outputs/train-multirun/*/ | sort | tail -1)seed-*/checkpoint/merged

sweep: $(SETUP) ## Hydra multirun over lora.r x trainer.max_epochs, one MLflow run each
	@test -f data/derivatives/train.jsonl || $(PY) -m derivative_animator.dataset
	$(PY) -m derivative_animator.train experiment=lora_rank_sweep $(ARGS)

sweep-summary: $(SETUP) ## table + PNG of the newest sweep's metric by rank and epochs
	$(PY) -m derivative_animator.sweep_summary $(ARGS)

ui: $(SETUP) ## the MLflow UI on this project's store (http://127.0.0.1:5000)
	@# its four web workers each warn that starlette.middleware.wsgi is deprecated (MLflow's import, not ours)
	PYTHONWARNINGS=ignore::UserWarning:mlflow.server.fastapi_app $(PY) -m mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db} \
	  --default-artifact-root $(CURDIR)/mlruns/artifacts --host 127.0.0.1 --port 5000

eval: $(SETUP) ## evaluate the newest checkpoint and the baselines: ARGS="eval.model=DIR"
	$(PY) -m derivative_animator.evaluate $(ARGS)

serve: $(SETUP) ## the web page and OpenAI-compatible API for the newest checkpoint (http://127.0.0.1:8000): ARGS="--model DIR"
	.venv/bin/derivanim serve $(if $(ARGS),$(ARGS),--model $$(ls -d outputs/train/*/checkpoint/merged | sort | tail -1))

load-test: $(SETUP) ## 200 requests, 8 at a time, at a fresh `derivanim serve` on loopback: results or busy, nothing leaked
	$(PY) scripts/load_test.py $(if $(filter --model%,$(ARGS)),,--model $$(ls -d outputs/train/*/checkpoint/merged | sort | tail -1)) $(ARGS)

eval-benchmarks: $(SETUP) ## the newest checkpoint on the textbook and random benchmarks (never trained on), per kind: ARGS="eval.model=DIR"
	$(PY) -m derivative_animator.evaluate eval.benchmark=textbook $(BENCHMARK_BASELINES) $(ARGS)
	$(PY) -m derivative_animator.evaluate eval.benchmark=random $(BENCHMARK_BASELINES) $(ARGS)

header-math: $(SETUP) ## greedy math headers on the test split and the benchmarks, no render (minutes): ARGS="--model DIR"
	$(PY) -m derivative_animator.eval.header_math $(if $(ARGS),$(ARGS),--model $$(ls -d outputs/train/*/checkpoint/merged | sort | tail -1))

doctor: $(SETUP) ## is this machine ready? a pass/fail table with fixes
	$(PY) -m derivative_animator.doctor

benchmark: $(SETUP) ## the README's figures: data build, training throughput, generation latency
	$(PY) scripts/benchmark.py $(ARGS)

test: $(SETUP) lint ## lint, then the test suite: fast tests; under CI (CI set) the slow ones too (about a minute more)
	$(PY) -m pytest $(if $(CI),-m "slow or not slow") $(ARGS)

mutate: $(SETUP) ## mutation testing (mutmut) of prompt, generate, decoding, datamodule, the evaluation engine and metrics, train: ARGS='"derivative_animator.data.prompt*"'
	$(PY) -m mutmut run $(ARGS) && $(PY) -m mutmut results

test-slow: $(SETUP) ## only the slow tests (renders of every level and style, ...)
	$(PY) -m pytest -m slow $(ARGS)

lint: $(SETUP) ## ruff: the lint rules (line length included) and the format (ruff format fixes it)
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

clean: ## remove generated data, outputs and MLflow runs (asks first)
	@read -p "delete data/*, outputs/* and mlruns/*? [y/N] " answer && [[ $$answer == y ]] && \
	  find data outputs mlruns -mindepth 1 -maxdepth 1 ! -name .gitkeep ! -name README.md -exec rm -rf {} + || true
