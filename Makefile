# The two commands of the README:
#   make run    install into .venv and run the curation pipeline on the bundled sample (embedded defaults)
#   make test   install into .venv, lint and format-check (ruff) and run the test suite
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
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

# `make bench`: the benchmark suite (bench/bench_suite.py) on seeded synthetic pools of SIZES records and on
# ../shared/data/pool; rewrites the top of bench/RESULTS.md. The default takes ~16 min on 2 cores; with 1M
# (~40 min): make bench SIZES=10000,100000,1000000. Single benchmarks: python bench/bench_<name>.py
SIZES ?= 10000,100000

$(VENV)/.bench-installed: bench/requirements.txt | $(VENV)/.installed
	$(BIN)/pip install --quiet -r bench/requirements.txt
	touch $@

bench: install $(VENV)/.bench-installed
	$(BIN)/python bench/bench_suite.py --sizes $(SIZES)

clean:
	rm -rf $(VENV) .infinstruct releases
