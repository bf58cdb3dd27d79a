"""Fixtures of the real-HTTP service tests: the shared services (see tests/app/service.py) and clients on them."""

from __future__ import annotations

import httpx
import pytest

from tests.app.service import Service, lite_service, main_service, release_shared_services


@pytest.fixture(scope="module", autouse=True)
def _release_shared_services(request: pytest.FixtureRequest):
    """After the last module of this folder, the shared services stop (their threads must not outlive it)."""
    yield
    release_shared_services(request)


@pytest.fixture(scope="module")
def svc(request: pytest.FixtureRequest) -> Service:
    """PostgreSQL + Redis, auth off."""
    return main_service(request)


@pytest.fixture(scope="module")
def lite(request: pytest.FixtureRequest) -> Service:
    """SQLite + in-process sessions."""
    return lite_service(request)


@pytest.fixture(params=["postgresql+redis", "sqlite+memory"])
def any_svc(request: pytest.FixtureRequest) -> Service:
    """The smoke subset runs on both configurations."""
    return main_service(request) if request.param == "postgresql+redis" else lite_service(request)


@pytest.fixture(scope="module")
def c(svc: Service) -> httpx.Client:
    return svc.client()
