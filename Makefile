# Quick start: `make demo` (set up, then run the end-to-end demo on the built-in phantom)
#              `make test` (set up, then run the test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# pytest-xdist workers of the test suite (tests/conftest.py gives each one OpenMP thread); 0 runs it in one process
TEST_WORKERS ?= 2

.PHONY: setup demo test lint format bench bench-aal clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/msa2net demo --out demo_out

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not openvino"
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m openvino  # all tests in one process: they pass, then the process segfaults in gc at exit

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# bench_evaluate: predict_volume (batched, one slice, authors' loop), metric set and evaluate against the authors'
# procedure + MedPy on a 100x512x512 case, 3 interleaved rounds (about 22 min on a quiet 2-core CPU); scale it down with
# e.g. make bench BENCH_EVALUATE_ARGS="--slices 16 --rounds 2"
BENCH_EVALUATE_ARGS ?=

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_hd95.py
	$(BIN)/python benchmarks/bench_evaluate.py $(BENCH_EVALUATE_ARGS)

# Real data (needs `apt-get install mricron-data`): prepare, train on CPU, evaluate and predict AAL lobes on Colin27
bench-aal: $(STAMP)
	$(BIN)/python benchmarks/bench_aal.py --out aal_out --no-progress

clean:
	rm -rf $(VENV) demo_out aal_out .pytest_cache .ruff_cache
