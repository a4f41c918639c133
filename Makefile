# Two commands on a fresh machine: `make run` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench lock clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: $(STAMP)  ## the main job end to end on synthetic data
	$(BIN)/mtrank run --output runs/default

lint: $(STAMP)  ## ruff's lint and format check (pyproject.toml [tool.ruff]); `ruff format .` mends the format
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## prints the performance and quality tables (the quality tables, 5 regimes x 3 sizes, train ~350 models: about a day on 2 cores)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/quality.py --plot bench/mmoe_eval_auc.png --before e7ded67

lock:  ## re-resolve requirements.in into requirements.lock in a scratch venv
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -r requirements.in
	.lock-venv/bin/pip freeze --exclude-editable > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs .pytest_cache
