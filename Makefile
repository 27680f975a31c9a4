PYTHON ?= python3
OUT ?= runs

.PHONY: install demo test test-browser test-slow bench gpu-check lint format

install: .make/installed  ## install lmscale and its dev tools into the current Python

.make/installed: pyproject.toml
	$(PYTHON) -m pip install -q -e ".[dev]"
	@mkdir -p .make && touch $@

demo: install  ## the CPU demo sweep (6 sizes, trained and evaluated), then its report
	$(PYTHON) -m lmscale sweep experiments/cpu_demo.yaml --out $(OUT)
	$(PYTHON) -m lmscale report $(OUT)/cpu_demo

test: install  ## fast tests (under 6 minutes on 2 CPU cores): two workers, then the timing tests alone; 5 means none collected
	$(PYTHON) -m pytest -q -n 2 --dist loadfile -m "not slow and not timing and not browser" || [ $$? -eq 5 ]
	$(PYTHON) -m pytest -q -m "timing and not slow" || [ $$? -eq 5 ]

test-browser: install  ## the report in headless Chromium (apt-get install chromium chromium-driver)
	$(PYTHON) -m pytest -q -m "browser and not slow" || [ $$? -eq 5 ]

test-slow: install  ## the long tests only
	$(PYTHON) -m pytest -q -m slow || [ $$? -eq 5 ]

bench: install  ## training throughput and MFU, as JSON
	$(PYTHON) -m lmscale bench --json $(OUT)/bench.json

gpu-check: install  ## on a GPU or TPU host: bench, then a short gpu_single.yaml run; tokens/s and MFU vs the peak
	$(PYTHON) -m lmscale bench --no-fit --no-eval --json $(OUT)/gpu-check/bench.json
	$(PYTHON) -m lmscale sweep experiments/gpu_single.yaml --out $(OUT)/gpu-check --no-progress \
	  'sweep.sizes.params=[3.0e+7]' sweep.tokens.per_param=1 data.synthetic.documents=20000
	$(PYTHON) -c "import pandas as pd; r = pd.read_csv('$(OUT)/gpu-check/gpu_single/results.csv'); \
	  print(r[['run_id', 'tokens_per_s', 'mfu', 'peak_source']].to_string(index=False))"

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .
