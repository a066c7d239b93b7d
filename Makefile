# `make demo` and `make test` each set up everything they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# the suite's processes: each test file runs whole on one of them
PYTEST_WORKERS ?= 2

.PHONY: demo test dask-tests lint docs venv-dev soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,azure,s3,postgres]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/hafen demo

venv-dev: $(VENV)/.installed-dev
	bash scripts/test-deps.sh

lint: venv-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

# The documentation site, strict: a warning, a broken link or a missing reference fails it.
# Builds offline (no fonts or plugins that fetch); the site lands in site/.
docs: venv-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint docs
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	$(MAKE) dask-tests

# Dask's own tests (distributed's steal, scheduler, resources, semaphore and active memory
# manager tests, vendored in tests/upstream/) with hafen's extensions preloaded on every test
# scheduler; then the stealing and resources tests again with every task under a hafen limit.
DASK_TESTS_ARGS ?=
UPSTREAM := $(BIN)/python -m pytest -c tests/upstream/pytest.ini
dask-tests: venv-dev
	$(UPSTREAM) tests/upstream $(DASK_TESTS_ARGS)
	HAFEN_UPSTREAM_LIMIT=1000 $(UPSTREAM) tests/upstream/test_steal.py \
		tests/upstream/test_resources.py tests/upstream/test_hafen_preloaded.py $(DASK_TESTS_ARGS)

# The datasets' concurrency checker (tests/datasets/test_checker.py) for as long as asked:
# `make soak SECONDS=600 BACKEND=local|azure|both`; prints its figures and any anomaly.
SECONDS ?= 600
BACKEND ?= local
soak: venv-dev
	$(BIN)/python tests/datasets/_checker_run.py --seconds $(SECONDS) --backend $(BACKEND)

clean:
	rm -rf $(VENV) .cache .pytest_cache hafen-demo site
