# The project's commands: `make` (build the wheel and install it), `make run`, `make test`.
# Two virtualenvs:
#   .venv           development: Baton installed editable (always pure Python, so an edit
#                   runs at once), with the test tools; lint and types run here.
#   .venv-compiled  the wheel `make` builds, installed with the test tools: the proxy's hot
#                   path compiled by mypyc when a C compiler is present (else pure Python,
#                   said by the build and by `baton --version`). `make test` runs here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CVENV := .venv-compiled
CBIN := $(CVENV)/bin
CSTAMP := $(CVENV)/.installed
WHEEL_STAMP := dist/.built
# Everything that goes into the wheel: a change rebuilds it.
SOURCES := $(shell find src -type f -not -path '*/__pycache__/*' -not -path '*.egg-info/*')
# Run again against the pure-Python fallback of the same wheel (BATON_PURE=1).
PURE_TESTS := tests/unit tests/integration/test_build.py tests/integration/test_proxy.py \
	tests/integration/test_proxy_rejects.py tests/integration/test_proxy_upgrade.py \
	tests/integration/test_proxy_h2.py tests/integration/test_proxy_durable.py

.PHONY: build run test lint types unit integration bench clean

build: $(CSTAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'setuptools>=68' wheel
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# The wheel, built in .venv without build isolation: mypyc type-checks the hot path against
# the installed dependencies, with the mypy pinned in pyproject.toml. No compiler: pure wheel.
$(WHEEL_STAMP): $(STAMP) setup.py pyproject.toml $(SOURCES)
	scripts/build-deps $(BIN)/python
	rm -rf build dist
	$(BIN)/pip wheel -q --no-build-isolation --no-deps -w dist .
	touch $(WHEEL_STAMP)

$(CSTAMP): $(WHEEL_STAMP)
	test -x $(CBIN)/python || $(PYTHON) -m venv $(CVENV)
	$(CBIN)/pip install -q --upgrade pip
	$(CBIN)/pip install -q "$$(ls dist/baton-*.whl)[test]"
	$(CBIN)/pip install -q --force-reinstall --no-deps dist/baton-*.whl
	$(CBIN)/baton --version
	touch $(CSTAMP)

run: $(STAMP)
	$(BIN)/python examples/quickstart.py

lint: $(STAMP)
	$(BIN)/ruff check setup.py src tests bench examples
	$(BIN)/ruff format --check setup.py src tests bench examples

types: $(STAMP)
	$(BIN)/mypy

# Two workers, one test file per worker at a time: every test has its own state dir and
# ports, and the slow integration files run side by side (the suite takes ~14 min, not ~45).
# The whole suite against the installed wheel (compiled), then the proxy tests against its
# pure-Python fallback.
test: lint types $(CSTAMP)
	$(CBIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile
	BATON_PURE=1 $(CBIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile $(PURE_TESTS)

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

clean:
	rm -rf $(VENV) $(CVENV) build dist src/*.egg-info
