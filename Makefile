# The two quick-start commands: `make demo` (serve the demo model) and `make test` (the whole suite).
# Both create .venv on first use; torch is pinned (an unpinned torch pulls GBs of CUDA packages).
PY := .venv/bin/python

.venv/installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $@

.PHONY: demo test lint
demo: .venv/installed
	.venv/bin/hhvaem demo

test: .venv/installed
	$(PY) -m pytest

lint: .venv/installed
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
