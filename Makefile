# invsr developer targets. `make install` once, then `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast test-all lint bench bench-quick wheel clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	# formats: the HEIC and JPEG XL plugins; ray: Ray Data for --ray; video: PyAV. The tests exercise all three.
	$(BIN)/pip install -q -e ".[dev,formats,ray,video]"

# -n 2: two pytest workers (pytest-xdist), one per core; most of the time is spent in `invsr` processes the tests
# start, one thread each. --dist loadgroup keeps a group (the Ray tests: one local cluster at a time) on one worker.
XDIST := -n 2 --dist loadgroup

test:
	$(BIN)/python -m pytest -q $(XDIST)

test-fast:  # the inner loop: everything except the end-to-end trials marked slow
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow"

test-all:
	INVSR_REAL_WEIGHTS=1 $(BIN)/python -m pytest -q $(XDIST)

lint:  # style, then the layers: nothing imports upward (the contracts in pyproject.toml)
	$(BIN)/ruff check invsr_cli tests
	$(BIN)/lint-imports

bench:
	$(BIN)/invsr bench

bench-quick:
	$(BIN)/invsr bench --quick --json

wheel:
	$(BIN)/python -m build --wheel --outdir dist .

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
