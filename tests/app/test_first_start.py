"""What a new user sees of the service's start and its metrics (issue #12, item 8): a start-up log without Alembic's
plugin chatter, and /docs, /openapi.json and /ui/ under their own route labels in /metrics (no longer "unmatched")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

START = """
import logging, sys
logging.basicConfig(level="INFO", stream=sys.stderr, format="%(name)s: %(message)s")
from hhvaem.app.core.config import make_settings
from hhvaem.app.main import start
start(make_settings(data_dir=sys.argv[1]))
"""


def test_start_up_log_has_no_alembic_plugin_lines(tmp_path: Path) -> None:
    """A real first start (a fresh SQLite database: every migration runs) at INFO, then a second one (nothing to
    migrate). Alembic's routine lines are gone; the migrations it runs, and the service's own lines, are not."""
    runs = [
        subprocess.run([sys.executable, "-c", START, str(tmp_path)], capture_output=True, text=True, timeout=120)
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "setup plugin" not in run.stderr
        assert "Context impl" not in run.stderr and "Will assume" not in run.stderr
        assert "hhvaem: hhvaem " in run.stderr and " ready: models none" in run.stderr
    assert "alembic.runtime.migration: Running upgrade  -> 0001" in runs[0].stderr
    assert "Running upgrade" not in runs[1].stderr
    assert len(runs[1].stderr.splitlines()) <= 3, runs[1].stderr


def test_docs_openapi_and_page_have_their_own_route_labels(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from hhvaem.app.core.config import make_settings
    from hhvaem.app.main import create_app

    with TestClient(create_app(make_settings(data_dir=tmp_path))) as client:
        for path in ("/docs", "/openapi.json", "/ui/", "/ui/app.js", "/ui/style.css", "/redoc"):
            assert client.get(path).status_code == 200, path
        assert client.get("/ui/nope.js").status_code == 404
        assert client.get("/no-such-route").status_code == 404
        text = client.get("/metrics").text
    counts = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("hhvaem_http_requests_total{")
    }
    assert counts['hhvaem_http_requests_total{method="GET",route="/docs",status="200"}'] == 1
    assert counts['hhvaem_http_requests_total{method="GET",route="/openapi.json",status="200"}'] == 1
    assert counts['hhvaem_http_requests_total{method="GET",route="/redoc",status="200"}'] == 1
    assert counts['hhvaem_http_requests_total{method="GET",route="/ui",status="200"}'] == 3
    assert counts['hhvaem_http_requests_total{method="GET",route="/ui",status="404"}'] == 1
    # Only a path that no route serves stays unmatched.
    assert counts['hhvaem_http_requests_total{method="GET",route="unmatched",status="404"}'] == 1
    assert sum(v for k, v in counts.items() if 'route="unmatched"' in k) == 1
