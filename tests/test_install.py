"""The Makefile's installs: `make demo` takes no test tooling, and an unreachable torch index is said within seconds."""

from __future__ import annotations

import http.server
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def recipe(target: str) -> str:
    """The commands `make` would run for `target` (dry run, as if out of date)."""
    done = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout


def test_the_demo_install_takes_serving_and_training_only():
    demo = recipe(".venv/installed")
    assert re.search(r'pip install -q -e "\.\[train\]"', demo)
    assert "dev" not in demo and "playwright" not in demo.lower()
    assert "torch==2.13.0" in demo  # pinned: an unpinned torch resolves to GBs of CUDA


def test_the_test_install_adds_the_dev_tooling_and_the_test_targets_need_it():
    assert re.search(r'pip install -q -e "\.\[train,dev\]"', recipe(".venv/installed-dev"))
    makefile = (ROOT / "Makefile").read_text()
    for target in ("test", "lint", "docs", "docs-build"):
        assert re.search(rf"^{re.escape(target)}: \.venv/installed-dev$", makefile, re.MULTILINE), target
    assert re.search(r"^demo: \.venv/installed$", makefile, re.MULTILINE)


def probe_script() -> str:
    makefile = (ROOT / "Makefile").read_text()
    return re.search(r"^define TORCH_PROBE\n(.*?)^endef$", makefile, re.MULTILINE | re.DOTALL).group(1)


def probe(url: str) -> tuple[int, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", probe_script(), url], capture_output=True, timeout=30)
    return done.returncode, time.monotonic() - start


def test_an_index_that_answers_even_with_an_error_page_is_reachable():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert probe(f"http://127.0.0.1:{server.server_port}/whl/cpu")[0] == 0
    finally:
        server.shutdown()


@pytest.mark.parametrize("silent", [False, True], ids=["refused", "never-answers"])
def test_an_unreachable_index_is_reported_within_seconds(silent):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if silent:
        listener.listen()  # accepts the connection, never answers
    else:
        listener.close()  # nothing listens: refused
    try:
        code, seconds = probe(f"http://127.0.0.1:{port}/whl/cpu")
    finally:
        listener.close()
    assert code == 1 and seconds < 8


def test_a_local_index_is_not_probed():
    assert probe("file:///nowhere/simple")[0] == 0
