# The README's two commands: `make demo` (main job) and `make test`. Both set up .venv first.
.PHONY: demo test lint format bench setup clean-state

demo:
	@bash scripts/setup.sh
	.venv/bin/flywheel run

test:
	@bash scripts/setup.sh --test
	.venv/bin/python -m pytest -q

lint:  # the layers (import-linter), lint and import order (ruff), formatting, types (mypy)
	@bash scripts/setup.sh --test
	.venv/bin/lint-imports --no-cache
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

format:
	@bash scripts/setup.sh --test
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

bench:
	@bash scripts/setup.sh --test
	.venv/bin/python bench/run.py
	.venv/bin/python bench/synth.py
	.venv/bin/python bench/validation.py
	.venv/bin/python bench/model.py
	.venv/bin/python bench/precision.py
	.venv/bin/python bench/evaluation.py
	.venv/bin/python bench/candidates.py
	.venv/bin/python bench/rankings.py
	.venv/bin/python bench/rounds.py
	.venv/bin/python bench/annotate.py
	.venv/bin/python bench/scaling.py

setup:
	@bash scripts/setup.sh --test

clean-state:  # local datasets, MLflow store and Prefect database of the demo
	rm -rf .flywheel
