# Two commands on a fresh machine with Python 3.11+:
#   make run    serve a step (STEP=step01_engine, PORT=5000)
#   make test   run the whole test suite
# and one to experiment:
#   make notebooks   open the notebooks in JupyterLab (NOTEBOOK_PORT=8888)
PYTHON ?= python3
STEP ?= step01_engine
PORT ?= 5000
NOTEBOOK_PORT ?= 8888
# More options for JupyterLab, for example --no-browser.
NOTEBOOK_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test lint notebooks clean

# setuptools explains editable installs at length on every install: advice,
# not a failure, but alarming to a newcomer, so its warnings are silenced.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(INSTALLED)
	$(BIN)/flask --app $(STEP) init-db
	$(BIN)/flask --app $(STEP) run --port $(PORT)

test: $(INSTALLED)
	$(BIN)/pytest $(PYTEST_ARGS)

# Notebooks are committed without outputs or execution counts.
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/nbstripout --verify notebooks/*.ipynb

# JupyterLab listens on loopback only; it refuses to run as root unless told.
notebooks: $(INSTALLED)
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(NOTEBOOK_PORT) \
		--ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) \
		$(NOTEBOOK_ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache .hypothesis
