"""The README stays short and its links resolve; the docs site builds with --strict, and strict means what it says.

Never `mkdocs build -q`: quiet mode drops the warnings before --strict counts them, so a broken link passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = [sys.executable, "-m", "mkdocs"]
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}


def test_the_readme_fits_on_a_few_screens():
    assert (ROOT / "README.md").stat().st_size <= 10 * 1024


def test_every_relative_link_in_the_readme_resolves():
    text = (ROOT / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)]+)\)", text) if not re.match(r"[a-z]+:", t)]
    assert links, "the README links into the docs"
    missing = [t for t in links if not (ROOT / t.split("#")[0]).exists()]
    assert missing == []


def test_the_site_builds_strictly_with_generated_references(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(
        [*MKDOCS, "build", "--strict", "-d", str(site)], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # the references generated from the code: every command, every setting, every route
    from hhvaem.app.core.config import Settings, env_var_names

    cli = (site / "reference" / "cli" / "index.html").read_text()
    for command in ("train", "serve", "demo", "score", "evaluate", "keys create"):
        assert f"hhvaem {command}</code>" in cli
    configuration = (site / "reference" / "configuration" / "index.html").read_text()
    for name in Settings.model_fields:
        assert env_var_names(name)[0] in configuration
    endpoints = (site / "reference" / "openapi" / "index.html").read_text()
    assert "POST /v1/models/{name}/impute" in endpoints and "GET /v1/sessions/{session_id}" in endpoints
    python_api = (site / "reference" / "python" / "index.html").read_text()
    for name in ("hhvaem.client.Client", "hhvaem.estimators.HHVAEMImputer", "hhvaem.pooling.rubin"):
        assert f'id="{name}"' in python_api


@pytest.mark.parametrize("broken", ["[a page](no-such-page.md)", "[an anchor](other.md#no-such-heading)"])
def test_the_strict_settings_fail_on_a_broken_link(tmp_path, broken):
    """The project's own validation settings, on a two-page site: a broken link or anchor fails the build."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(f"# Home\n\n{broken}\n")
    (docs / "other.md").write_text("# Other\n\n## A heading\n")
    small = {k: config[k] for k in ("site_name", "strict", "validation", "markdown_extensions")}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump({**small, "docs_dir": "docs"}))
    done = subprocess.run([*MKDOCS, "build"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert done.returncode != 0
    assert "no-such" in done.stderr
