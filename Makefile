# The project's two commands: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint types unit integration bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python examples/quickstart.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

types: $(STAMP)
	$(BIN)/mypy

# Two workers, one test file per worker at a time: every test has its own state dir and
# ports, and the slow integration files run side by side (the suite takes ~9 min, not ~30).
test: lint types
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

clean:
	rm -rf $(VENV) build src/*.egg-info

# Byte-compile the package once: a `baton` start then never compiles from source, even with
# PYTHONDONTWRITEBYTECODE set (which stops it caching what it compiled); every deploy pays it.
.PHONY: bytecode
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q src/baton
