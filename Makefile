# edgestore: `make serve` runs the server on the embedded default; `make test` runs everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# Test processes (pytest-xdist; 0: one process) and where their files go: a RAM disk where
# there is one, so that parallel workers do not queue on one device's fsyncs (the storage
# layer's own tests still run on a real disk: tests/storage/conftest.py). pytest empties
# TEST_TMP at start.
TEST_WORKERS ?= auto
TEST_TMP ?= $(if $(wildcard /dev/shm/.),/dev/shm/edgestore-tests-$(shell id -u))
NPM_STAMP := tests/interop/node_modules/.installed-$(shell cat tests/interop/package.json 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: venv serve test lint bench clean npm

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

npm: $(NPM_STAMP)

$(NPM_STAMP): tests/interop/package.json
	cd tests/interop && npm install --no-audit --no-fund --loglevel=error
	rm -f tests/interop/node_modules/.installed-*
	touch $@

serve: venv
	$(BIN)/edgestore serve $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The package is compiled once first: where PYTHONDONTWRITEBYTECODE is set, each of the
# suite's hundreds of CLI processes would compile it again (~0.18 s of CPU each, on `ls`).
test: venv npm lint
	$(BIN)/python -m compileall -q edgestore
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(if $(TEST_TMP),--basetemp=$(TEST_TMP)) $(PYTEST_ARGS)

bench: venv
	$(BIN)/python -m bench.ingest $(ARGS)

clean:
	rm -rf $(VENV) tests/interop/node_modules .pytest_cache .hypothesis
