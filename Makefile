# The quick-start commands: `make demo` (serve the demo model) and `make test` (the whole suite); `make screenshots`
# refreshes the README's pictures of the questionnaire page, `make compose-check` runs the Docker stack end to end.
# `make demo DEMO_ARGS="--port 8080"` passes options to `hhvaem demo`. All create .venv on first use; the commands
# then live in .venv/bin (`source .venv/bin/activate` puts them on PATH).
PY := .venv/bin/python
# torch's CPU wheels: an unpinned torch, or torch from PyPI, pulls GBs of CUDA packages. Empty: pip's own index
# (e.g. a mirror that holds the CPU wheel).
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

.venv/installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $@
	@echo "installed: the hhvaem command is .venv/bin/hhvaem (source .venv/bin/activate puts it on PATH)"

.PHONY: demo test lint screenshots compose-check
demo: .venv/installed
	.venv/bin/hhvaem demo $(DEMO_ARGS)

test: .venv/installed
	$(PY) -m pytest

lint: .venv/installed
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# The browser tests, writing their screenshots into docs/screenshots, against the demo model `make demo` serves.
screenshots: .venv/installed
	.venv/bin/hhvaem demo --train-only
	HHVAEM_SCREENSHOTS_DIR=docs/screenshots \
	HHVAEM_TEST_ARTIFACT="$$($(PY) -c 'from hhvaem.app.core.config import Settings; print(Settings().data_dir / "demo" / "diabetes")')" \
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_questionnaire.py -k complete_questionnaire

# Builds both images and runs docker-compose.yml end to end (health, an impute, a session in its Redis, the registry
# row in its PostgreSQL); COMPOSE_CHECK_ARGS=--local-base where Docker Hub cannot be reached.
compose-check: .venv/installed
	$(PY) -m benchmarks.compose_stack $(COMPOSE_CHECK_ARGS)
