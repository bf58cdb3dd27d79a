# The quick-start commands: `make demo` (serve the demo model) and `make test` (the whole suite); `make docs` serves
# the documentation site locally, `make screenshots` refreshes the pictures of the questionnaire page,
# `make compose-check` runs the Docker stack end to end. `make demo DEMO_ARGS="--port 8080"` passes options to
# `hhvaem demo`. All create .venv on first use; the commands then live in .venv/bin (`source .venv/bin/activate`
# puts them on PATH). Two installs, each made once (docs/how-to/install.md has their sizes):
#   .venv/installed      serving and training: torch (CPU) + the package with its `train` extra   (make demo)
#   .venv/installed-dev  ... + the test and docs tooling (`dev`: Ray, Playwright, tritonclient, MkDocs)  (make test)
PY := .venv/bin/python
# torch's CPU wheels: an unpinned torch, or torch from PyPI, pulls GBs of CUDA packages. Empty: pip's own index
# (e.g. a mirror that holds the CPU wheel), without the probe below.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
# The index is probed first: pip retries an unreachable index silently for minutes. Any HTTP answer within 5 s
# (DNS included) counts as reachable; none, and pip's own configuration (its index, a mirror, find-links) installs
# torch instead, said so. A file:// index is not probed.
define TORCH_PROBE
import sys, threading, urllib.error, urllib.request
url, answered = sys.argv[1].rstrip("/") + "/torch/", []
def probe():
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5)
    except urllib.error.HTTPError:
        pass  # an error page is an answer
    except OSError:
        return
    answered.append(url)
thread = threading.Thread(target=probe, daemon=True)
thread.start()
thread.join(5)
sys.exit(0 if answered or not url.startswith("http") else 1)
endef
export TORCH_PROBE

.venv/installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	@index="$(TORCH_INDEX_URL)"; \
	if [ -n "$$index" ] && ! $(PY) -c "$$TORCH_PROBE" "$$index"; then \
	  echo "torch's wheel index $$index is unreachable (no answer to a 5 s probe): installing torch==2.13.0 from" \
	    "pip's own configuration instead (its index, mirror or find-links). From PyPI on Linux that is the CUDA" \
	    "build, GBs more: stop here (Ctrl-C) and run again with TORCH_INDEX_URL=<a mirror of the CPU wheels>," \
	    "or TORCH_INDEX_URL= to use pip's own index without this probe (docs/how-to/install.md)." >&2; \
	  index=""; \
	fi; \
	echo "$(PY) -m pip install -q torch==2.13.0 $${index:+--index-url $$index}"; \
	$(PY) -m pip install -q "torch==2.13.0" $${index:+--index-url "$$index"}
	$(PY) -m pip install -q -e ".[train]"
	touch $@
	@echo "installed: the hhvaem command is .venv/bin/hhvaem (source .venv/bin/activate puts it on PATH)"

.venv/installed-dev: .venv/installed
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $@

.PHONY: demo test lint docs docs-build screenshots compose-check
demo: .venv/installed
	.venv/bin/hhvaem demo $(DEMO_ARGS)

test: .venv/installed-dev
	$(PY) -m pytest

lint: .venv/installed-dev
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# The documentation site (mkdocs.yml, pages under docs/): served with live reload on http://127.0.0.1:8001/ (8000
# is the demo's), or built into site/ with every warning (a broken link, a missing page) an error, as CI does.
docs: .venv/installed-dev
	.venv/bin/mkdocs serve --dev-addr 127.0.0.1:8001

docs-build: .venv/installed-dev
	.venv/bin/mkdocs build --strict --site-dir site

# The browser tests, writing their screenshots into docs/screenshots, against the demo model `make demo` serves.
screenshots: .venv/installed-dev
	.venv/bin/hhvaem demo --train-only
	HHVAEM_SCREENSHOTS_DIR=docs/screenshots \
	HHVAEM_TEST_ARTIFACT="$$($(PY) -c 'from hhvaem.app.core.config import Settings; print(Settings().data_dir / "demo" / "diabetes")')" \
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_questionnaire.py -k "complete_questionnaire or unusual or model_card"

# Builds both images and runs docker-compose.yml end to end (health, an impute, a session in its Redis, the registry
# row in its PostgreSQL); COMPOSE_CHECK_ARGS=--local-base where Docker Hub cannot be reached.
compose-check: .venv/installed
	$(PY) -m benchmarks.compose_stack $(COMPOSE_CHECK_ARGS)
