# Two commands for a new user: `make demo` and `make test`. Everything else is for developers.
PYTHON ?= $(shell command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# The demo needs ledgerflow and its core dependencies only (Prefect, DuckDB, pyarrow, SQLite),
# not the test and lint toolchain or the production extras.
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install demo test test-fast test-prefect3 lint format bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(DEMO_STAMP): pyproject.toml constraints/prefect2.txt
	@echo "make demo: creating $(VENV) and installing ledgerflow with its core dependencies" \
	  "(Prefect, DuckDB, pyarrow); the first time takes a minute or two"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e . \
	  -c constraints/prefect2.txt
	@touch $(DEMO_STAMP)
	@echo "make demo: installed; running the demo"

demo: $(DEMO_STAMP)
	@$(BIN)/ledgerflow demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The same suite on the newest Prefect 3 and its collections, in a virtualenv of its own.
VENV3  ?= .venv3
STAMP3 := $(VENV3)/.installed-dev3

$(STAMP3): pyproject.toml constraints/prefect3.txt
	$(PYTHON) -m venv $(VENV3)
	$(VENV3)/bin/python -m pip install --quiet --disable-pip-version-check \
	  -e '.[dev3]' -c constraints/prefect3.txt
	touch $(STAMP3)

test-prefect3: $(STAMP3)
	$(VENV3)/bin/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
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

chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.harness
	$(BIN)/python -m tests.chaos.fencing
	$(BIN)/python -m tests.chaos.racing 4 5m

clean:
	rm -rf $(VENV) $(VENV3) .ledgerflow .pytest_cache .mypy_cache .ruff_cache
