# Two commands for a new user: `make demo` and `make test`. Everything else is for developers.
# PREFECT=3 runs any target on the newest Prefect 3 line instead of Prefect 2.20 (the reference),
# in a virtualenv of its own: `make test PREFECT=3`, `make demo PREFECT=3`, `make bench PREFECT=3`.
PYTHON  ?= $(shell command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)
PREFECT ?= 2
ifeq ($(PREFECT),3)
VENV    ?= .venv3
DEV     := dev3
else ifeq ($(PREFECT),2)
VENV    ?= .venv
DEV     := dev
else
$(error PREFECT must be 2 or 3, not '$(PREFECT)')
endif
CONSTRAINTS := constraints/prefect$(PREFECT).txt
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(DEV)
# The demo needs ledgerflow and its core dependencies only (Prefect, DuckDB, pyarrow, SQLite),
# not the test and lint toolchain or the production extras.
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install demo test test-fast test-prefect3 lint format bench bench-lines chaos clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(DEV)]' \
	  -c $(CONSTRAINTS)
	touch $(STAMP)

install: $(STAMP)

$(DEMO_STAMP): pyproject.toml $(CONSTRAINTS)
	@echo "make demo: creating $(VENV) and installing ledgerflow with its core dependencies" \
	  "(Prefect, DuckDB, pyarrow); the first time takes a minute or two"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e . \
	  -c $(CONSTRAINTS)
	@touch $(DEMO_STAMP)
	@echo "make demo: installed; running the demo"

demo: $(DEMO_STAMP)
	@$(BIN)/ledgerflow demo

ifeq ($(PREFECT),3)
# The Prefect 3 suite includes the upgrade test (tests/integration/test_upgrade_prefect.py): a
# Prefect 2 server and workers load part of a pipeline, then Prefect 3 ones the rest. It needs
# the Prefect 2 install too.
.venv/.installed-dev: pyproject.toml constraints/prefect2.txt
	$(MAKE) install PREFECT=2

TEST_NEEDS := .venv/.installed-dev
TEST_ENV   := LEDGERFLOW_PREFECT2_BIN=$(CURDIR)/.venv/bin LEDGERFLOW_PREFECT3_BIN=$(CURDIR)/$(BIN)
endif

# The suite runs on every core (pytest-xdist), each worker with its own servers (osmem, moto,
# fakesnow, a Prefect API) and its own throwaway Postgres databases; work stealing keeps the
# long tests (the chaos scripts, the deploy walk, the upgrade) from leaving one worker to finish
# alone. JOBS=0 runs it in this one process, JOBS=4 on four workers.
JOBS ?= auto

test: $(STAMP) $(TEST_NEEDS)
	$(TEST_ENV) $(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal $(PYTEST_ARGS)

# The same suite on the newest Prefect 3 and its collections, in .venv3.
test-prefect3:
	$(MAKE) test PREFECT=3

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# mypy keeps a cache per Prefect line: the two lines' Prefect modules differ, and a shared cache
# would be thrown away by every switch.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --cache-dir .mypy_cache/prefect$(PREFECT)
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ELASTICDUMP := .bench/node_modules/.bin/elasticdump

# elasticdump is the peer the Elasticsearch benchmark runs side by side (from the npm registry).
$(ELASTICDUMP):
	@command -v npm >/dev/null 2>&1 \
	  && npm install --prefix .bench --no-audit --no-fund --silent elasticdump@6 \
	  || echo "npm is not installed: the benchmark will skip elasticdump"

INGESTR_VENV := .bench/ingestr
INGESTR      := $(INGESTR_VENV)/bin/ingestr

# ingestr is the peer of a whole window run (bench/peers.py), in a virtualenv of its own. 0.15.x
# ships its Go binary in the wheel; 1.x downloads it at run time, which fails offline.
$(INGESTR):
	@( $(PYTHON) -m venv $(INGESTR_VENV) \
	  && $(INGESTR_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'ingestr==0.15.9' ) \
	  || echo "ingestr could not be installed: the benchmark will skip it"

bench: $(STAMP) $(ELASTICDUMP) $(INGESTR)
	$(BIN)/python -m bench $(SUITES)

# Orchestration overhead per window on Prefect 2 and Prefect 3, side by side in one run.
bench-lines:
	$(MAKE) install PREFECT=2
	$(MAKE) install PREFECT=3
	.venv/bin/python -m bench lines

chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.harness
	$(BIN)/python -m tests.chaos.fencing
	$(BIN)/python -m tests.chaos.racing 4 5m

clean:
	rm -rf .venv .venv3 .ledgerflow .pytest_cache .mypy_cache .ruff_cache
