# The two commands of the README:
#   make run    install into .venv and run the curation pipeline on the bundled sample (embedded defaults)
#   make test   install into .venv, lint (ruff) and run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
RECIPE ?= include/recipes/sample.yaml
OUT    ?= releases
# llama.cpp (llama-cpp-python) is compiled at install: for any x86-64 CPU with AVX2, not only this machine's
# (-march=native on an AVX-512 machine would die of SIGILL elsewhere); `make install CMAKE_ARGS=` for native
CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export CMAKE_ARGS

.PHONY: install run test bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/infinstruct run --recipe $(RECIPE) --out $(OUT)

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/bench_ingest.py

clean:
	rm -rf $(VENV) .infinstruct releases
