"""Fixtures of the browser tests: the real service on a loopback port, real Redis, headless Chromium.

* Redis is `HHVAEM_E2E_REDIS_URL` (default `redis://127.0.0.1:6379/13`). Unreachable: the tests are skipped, or fail
  when `HHVAEM_REQUIRE_REDIS=1`. Each test deletes the sessions its page created (nothing else in that database).
* The service is `create_app` served by uvicorn in a background thread, with the demo model (`demo_artifact`,
  copied into a models folder) and a SQLite registry in a temporary folder.
* The browser is Chromium from the distribution (see `tests/e2e/__init__.py`), driven by Playwright.
* Screenshots go to a temporary folder, or to `HHVAEM_SCREENSHOTS_DIR` when set: `make screenshots` sets it to
  `docs/screenshots` (the README's pictures) and points `HHVAEM_TEST_ARTIFACT` at the demo model; `make test` never
  writes into the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.service import require_redis
from tests.e2e import CHROMIUM, HAVE_CHROMIUM, SKIP_REASON

REDIS_URL = os.environ.get("HHVAEM_E2E_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture(scope="session")
def e2e_redis() -> str:
    return require_redis(REDIS_URL)


class LiveService:
    """The service on a free loopback port, in a thread of this process."""

    def __init__(self, folder: Path, artifact: str, redis_url: str, **settings: Any) -> None:
        import uvicorn

        from hhvaem.app.core.config import make_settings
        from hhvaem.app.main import create_app

        models = folder / "models"
        shutil.copytree(artifact, models / Path(artifact).name)
        self.settings = make_settings(
            data_dir=folder / "data", models_dir=models, redis_url=redis_url, threads=1, **settings
        )
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(
            create_app(self.settings), log_level="warning", lifespan="on", timeout_graceful_shutdown=2, ws="none"
        )
        self._server = uvicorn.Server(config)
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name=f"e2e-{self.url}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if self._failure or not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the service did not start: {self._failure or 'timeout'}")
            time.sleep(0.02)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._failure.append(exc)

    def get(self, path: str) -> Any:
        import httpx

        response = httpx.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        self._sock.close()


@pytest.fixture(scope="session")
def serve(tmp_path_factory, e2e_redis: str, demo_artifact: str) -> Iterator[Callable[..., LiveService]]:
    """Starts services (settings as keyword arguments); all are stopped at the end of the session."""
    started: list[LiveService] = []

    def start(**settings: Any) -> LiveService:
        service = LiveService(tmp_path_factory.mktemp("e2e-service"), demo_artifact, e2e_redis, **settings)
        started.append(service)
        return service

    yield start
    for service in started:
        service.close()


@pytest.fixture(scope="session")
def service(serve) -> LiveService:
    return serve(session_ttl_seconds=600)


@pytest.fixture(scope="session")
def short_ttl_service(serve) -> LiveService:
    """Sessions expire after 2 s without activity."""
    return serve(session_ttl_seconds=2)


@pytest.fixture(scope="session")
def browser():
    if not HAVE_CHROMIUM:
        pytest.skip(SKIP_REASON)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, e2e_redis: str):
    """A fresh page (1280x900). Fails the test on any uncaught script error; deletes the sessions it created."""
    import redis

    from hhvaem.app.sessions.store import DEFAULT_PREFIX

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    sessions: set[str] = set()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda request: sessions.update(re.findall(r"/v1/sessions/([A-Za-z0-9_-]+)", request.url)))
    try:
        yield page
    finally:
        context.close()
        if sessions:
            client = redis.Redis.from_url(e2e_redis)
            try:
                client.delete(*(DEFAULT_PREFIX + s for s in sessions))
            finally:
                client.close()
    assert not errors, f"script errors in the page: {errors}"


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where the browser tests save their screenshots: `HHVAEM_SCREENSHOTS_DIR`, else a temporary folder."""
    chosen = os.environ.get("HHVAEM_SCREENSHOTS_DIR")
    if not chosen:
        return tmp_path_factory.mktemp("screenshots")
    folder = Path(chosen)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
