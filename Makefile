PYTHON ?= python3
OUT ?= runs

.PHONY: install demo test test-slow bench lint format

install:  ## install lmscale and its dev tools into the current Python
	$(PYTHON) -m pip install -q -e ".[dev]"

demo:  ## train the built-in tiny config on this machine
	$(PYTHON) -m lmscale.cli train experiments/tiny.yaml --out $(OUT)/tiny

test:  ## fast tests (under 10 minutes on 2 CPU cores); pytest's 5 means no tests collected
	$(PYTHON) -m pytest -q || [ $$? -eq 5 ]

test-slow:  ## the long tests only
	$(PYTHON) -m pytest -q -m slow || [ $$? -eq 5 ]

bench:  ## training throughput and MFU, as JSON
	$(PYTHON) -m lmscale.cli bench --json $(OUT)/bench.json

lint:
	$(PYTHON) -m ruff check lmscale analysis tests
	$(PYTHON) -m ruff format --check lmscale analysis tests

format:
	$(PYTHON) -m ruff format lmscale analysis tests
	$(PYTHON) -m ruff check --fix lmscale analysis tests
