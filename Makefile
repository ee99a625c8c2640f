# Two commands on a fresh machine with Python 3.11+:
#   make run    serve a step (STEP=step01_engine, PORT=5000)
#   make test   run the whole test suite
PYTHON ?= python3
STEP ?= step01_engine
PORT ?= 5000
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test lint clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(INSTALLED)
	$(BIN)/flask --app $(STEP) init-db
	$(BIN)/flask --app $(STEP) run --port $(PORT)

test: $(INSTALLED)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache .hypothesis
