# Two commands on a fresh clone: `make demo` (main job on the embedded default) and `make test`.
# Both install what they need into .venv/ first (idempotent; quick when already installed).
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= disabled
# pytest-xdist workers for `make test` (2 = the cores of CI machines; each test keeps torch at one thread)
TEST_WORKERS ?= 2

.PHONY: setup setup-libero demo demo-libero test test-fast lint bench

setup:
	bash scripts/setup_env.sh core

setup-libero:
	bash scripts/setup_env.sh libero

# A tiny CRaFT fine-tune on the generated dataset (created on first use), on CPU.
demo: setup
	$(PY) vla-scripts/finetune.py --config_path vla-scripts/configs/demo.yaml

# Generate scripted LIBERO demos, fine-tune baseline + CRaFT, evaluate in the simulator, print a table.
demo-libero: setup-libero
	$(PY) vla-scripts/demo_libero.py

test: setup-libero
	$(PY) -m pytest -q tests -n $(TEST_WORKERS) --dist loadgroup

test-fast: setup
	$(PY) -m pytest -q tests -m "not sim and not slow" -n $(TEST_WORKERS) --dist loadgroup

lint: setup
	$(PY) -m ruff check prismatic vla-scripts experiments craft_experiments benchmarks tests

bench: setup
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_craft.py
