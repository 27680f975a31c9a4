PYTHON ?= python3
OUT ?= runs

.PHONY: install demo test test-slow bench lint format

install: .make/installed  ## install lmscale and its dev tools into the current Python

.make/installed: pyproject.toml
	$(PYTHON) -m pip install -q -e ".[dev]"
	@mkdir -p .make && touch $@

demo: install  ## the CPU demo sweep (6 sizes, trained and evaluated), then its report
	$(PYTHON) -m lmscale sweep experiments/cpu_demo.yaml --out $(OUT)
	$(PYTHON) -m lmscale report $(OUT)/cpu_demo

test: install  ## fast tests (under 10 minutes on 2 CPU cores); pytest's 5 means no tests collected
	$(PYTHON) -m pytest -q || [ $$? -eq 5 ]

test-slow: install  ## the long tests only
	$(PYTHON) -m pytest -q -m slow || [ $$? -eq 5 ]

bench: install  ## training throughput and MFU, as JSON
	$(PYTHON) -m lmscale bench --json $(OUT)/bench.json

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .
