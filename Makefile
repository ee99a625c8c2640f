# Two commands on a fresh machine with Python 3.11+:
#   make run    serve a step (STEP=step01_engine, PORT=5000, DB=sqlite)
#   make test   run the whole test suite
# and one to experiment:
#   make notebooks   open the notebooks in JupyterLab (NOTEBOOK_PORT=8888)
#   make bench       measure every claim about cost (BENCH_ARGS=--quick)
PYTHON ?= python3
STEP ?= step01_engine
PORT ?= 5000
# sqlite: a file in instance/; postgresql: a throwaway server of its own;
# pgbouncer: a throwaway server behind PgBouncer, for step08_pgbouncer;
# mariadb: a throwaway MariaDB of its own.
DB ?= sqlite
NOTEBOOK_PORT ?= 8888
# Test workers (pytest-xdist), each with a PostgreSQL and a MariaDB of its
# own: two more than the cores, since much of the suite waits (browsers,
# servers starting, timeouts) rather than computes: with three workers on
# two cores, the cores were busy 67% of a run.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 2 )))
# More options for JupyterLab, for example --no-browser.
NOTEBOOK_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
# What serving a step needs (Flask, SQLAlchemy, psycopg, PyMySQL), installed by
# make run; the tests', the notebooks' and the benchmark's tools, installed
# by the first target that needs them.
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test
NOTEBOOKS_INSTALLED := $(VENV)/.installed-notebooks
BENCH_INSTALLED := $(VENV)/.installed-bench
# Notebooks are committed without outputs, execution counts, or the version
# of the Python that last ran them.
STRIP_NOTEBOOKS := $(BIN)/nbstripout --extra-keys metadata.language_info

.PHONY: run test lint notebooks strip-notebooks screenshots bench clean

# setuptools explains editable installs at length on every install: advice,
# not a failure, but alarming to a newcomer, so its warnings are silenced.
# A new step is a new package: the editable install must learn of it too, and
# of the AsyncSession example beside the steps.
$(INSTALLED): pyproject.toml $(wildcard step[0-9][0-9]_*/__init__.py) async_session/__init__.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet -e .
	touch $@

# The test extra includes the async one: installed with it, so that make run
# STEP=async_session installs nothing more (its Try it runs in the suite).
$(TEST_INSTALLED): $(INSTALLED)
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-async

# One extra of pyproject.toml's: test, notebooks, bench or async.
.PRECIOUS: $(VENV)/.installed-%
$(VENV)/.installed-%: $(INSTALLED)
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet -e '.[$*]'
	touch $@

SERVE_STEP = $(BIN)/flask --app $(STEP) init-db && $(BIN)/flask --app $(STEP) run --port $(PORT)

run: $(INSTALLED)
ifeq ($(STEP),async_session)
	# The example's async drivers: pyproject.toml's extra "async".
	$(MAKE) --no-print-directory $(VENV)/.installed-async
endif
ifeq ($(DB),postgresql)
	$(BIN)/python -m testbed.postgres sh -c '$(SERVE_STEP)'
else ifeq ($(DB),pgbouncer)
	$(BIN)/python -m testbed.pgbouncer sh -c '$(SERVE_STEP)'
else ifeq ($(DB),mariadb)
	$(BIN)/python -m testbed.mariadb sh -c '$(SERVE_STEP)'
else ifeq ($(DB),replicas)
	# A PostgreSQL primary and a hot standby: step 12 reads from the standby.
	$(BIN)/python -m testbed.replicas sh -c '$(SERVE_STEP)'
else ifeq ($(DB),sqlite)
	$(SERVE_STEP)
else
	$(error DB=$(DB): choose DB=sqlite, DB=postgresql, DB=pgbouncer, DB=mariadb or DB=replicas)
endif

# The workers take tests two at a time, slow ones first (tests/conftest.py),
# so that no long test waits in one worker's queue while the others idle.
test: $(TEST_INSTALLED)
	$(BIN)/pytest -n $(TEST_WORKERS) --maxschedchunk 2 $(PYTEST_ARGS)

# Every step package, typed as a reader's editor needs: mypy --strict checks
# each one, a new step too, by existing; and the AsyncSession example.
STEP_PACKAGES := $(dir $(wildcard step[0-9][0-9]_*/__init__.py))
EXAMPLE_PACKAGES := async_session/

lint: $(TEST_INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict $(STEP_PACKAGES) $(EXAMPLE_PACKAGES)
	$(STRIP_NOTEBOOKS) --verify notebooks/*.ipynb

# JupyterLab listens on loopback only; it refuses to run as root unless told.
notebooks: $(NOTEBOOKS_INSTALLED)
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(NOTEBOOK_PORT) \
		--ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) \
		$(NOTEBOOK_ARGS)

# Strip what running the notebooks left in them, before a commit.
strip-notebooks: $(TEST_INSTALLED)
	$(STRIP_NOTEBOOKS) notebooks/*.ipynb

# The benchmark, into bench/results; BENCH_ARGS=--quick for a short run,
# into bench/quick-results.
bench: $(BENCH_INSTALLED)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The README's screenshots: pages in headless Chromium, after a burst.
screenshots: $(TEST_INSTALLED)
	$(BIN)/python -m testbed.screenshots docs/screenshots

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache .mypy_cache .hypothesis
