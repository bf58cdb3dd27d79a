"""A bounded property-based run over the OpenAPI schema (schemathesis): no operation may answer a 5xx, whatever the
generated request. The app runs in process on SQLite + in-process sessions, served by uvicorn on a loopback port.

* The schema is the app's own (`from_dict(create_app(...).openapi())`, taken at import so that schemathesis can
  make one test per operation). Requests go over HTTP to one running app: with `from_asgi`, schemathesis's pytest
  plugin ends the ASGI lifespan after every test, so the app (and its model) would start again per operation.
* Hypothesis runs derandomized (the same examples every time) and small (`MAX_EXAMPLES` per operation, plus
  schemathesis's coverage cases); the app's limits are small (rows, samples), so no request costs much.
* Nothing is filtered: model versions beyond int32 and NUL bytes in paths, found by this run, are 4xx now.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.app.service import Service, artifact_dir, running_service

MAX_EXAMPLES = 20
LIMITS = {
    "max_rows": 3,
    "max_samples": 8,
    "default_samples": 4,
    "max_body_bytes": 64 * 1024,
    "max_upload_bytes": 64 * 1024,
    "session_ttl_seconds": 60,
}
INT32_MAX = 2**31 - 1


def _openapi() -> dict[str, Any]:
    from hhvaem.app.core.config import make_settings
    from hhvaem.app.main import create_app

    # Building the app starts nothing (no lifespan): it only describes itself.
    unused = Path(tempfile.gettempdir()) / "hhvaem-fuzz-schema"
    return create_app(make_settings(data_dir=unused, redis_url=None, **LIMITS)).openapi()


schema = schemathesis.openapi.from_dict(_openapi())


@pytest.fixture(scope="module")
def fuzz_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("service-fuzz")
    with running_service(artifact_dir(request), folder, database="sqlite", sessions="memory", **LIMITS) as service:
        yield service


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any, fuzz_service: Service) -> None:
    case.call_and_validate(base_url=fuzz_service.url, checks=[not_a_server_error], timeout=60)
