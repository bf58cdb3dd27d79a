"""A bounded property-based run over the OpenAPI schema (schemathesis): no operation may answer a 5xx, whatever the
generated request, alone or in a sequence that follows the schema's links. The app runs in process on SQLite +
in-process sessions, served by uvicorn on a loopback port.

* The schema is the app's own (`from_dict(create_app(...).openapi())`, taken at import so that schemathesis can
  make one test per operation). Requests go over HTTP to one running app: with `from_asgi`, schemathesis's pytest
  plugin ends the ASGI lifespan after every test, so the app (and its model) would start again per operation.
* Hypothesis runs derandomized (the same examples every time) and small (`MAX_EXAMPLES` per operation, plus
  schemathesis's coverage cases); the app's limits are small (rows, samples, work), so no request costs much.
* Random names never reach a model: the hooks below make half of the generated requests name the served model (the
  `{name}` path parameter, the batch route's `model` field) and give half of the uploads a table of its columns, so
  validation, the engine and the batch runner are fuzzed, not only the 404 path.
* The stateful run follows the links the schema declares (a session created, then its observations, next
  features, prediction, deletion; a batch job, then its state, result and cancellation) with the generated data.
* Nothing is filtered: what this run found (versions beyond int32, NUL bytes and lone surrogates in names,
  `Infinity`, 400-digit integers) is a 4xx now, and each case has an explicit test in test_api_reliability.py.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response

from tests.app.service import FEATURES, MODEL, ROW, Service, artifact_dir, running_service

MAX_EXAMPLES = 40
STATEFUL_EXAMPLES = 40
LIMITS = {
    "max_rows": 3,
    "max_samples": 8,
    "default_samples": 4,
    "max_work": 40,
    "max_body_bytes": 64 * 1024,
    "max_upload_bytes": 64 * 1024,
    "max_job_rows": 50,
    "session_ttl_seconds": 60,
}
# One row of the served model's `features` tensor (FP32 [1, D], null for a hole; sex, a category, travels as its
# code and is left out), for OIP v2 bodies.
FEATURES_TENSOR = {"name": "features", "shape": [1, len(FEATURES)], "datatype": "FP32",
                   "data": [ROW[f] if f in ROW and f != "sex" else None for f in FEATURES]}  # fmt: skip
TABLES = [b"age,bmi\n50,30\n61,\n", b"age,bmi,\n50,30,\n", b"sex\n3\n", b"age;bmi\n1;2\n", b"x\n1\n"]
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _openapi() -> dict[str, Any]:
    from hhvaem.app.core.config import make_settings
    from hhvaem.app.main import create_app

    # Building the app starts nothing (no lifespan): it only describes itself.
    unused = Path(tempfile.gettempdir()) / "hhvaem-fuzz-schema"
    return create_app(make_settings(data_dir=unused, redis_url=None, **LIMITS)).openapi()


schema = schemathesis.openapi.from_dict(_openapi())


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    if not path_parameters or "name" not in path_parameters:
        return st.just(path_parameters)
    return st.sampled_from([path_parameters, {**path_parameters, "name": MODEL}])


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    """Half the bodies keep what was generated; the others get the model's name, cells it knows (the other fields
    stay generated: samples, quantiles, costs...), or, for an upload, one of `TABLES`."""
    if not isinstance(body, dict):
        return st.just(body)
    variants = [body]
    if "model" in body:  # a session's creation, the batch upload
        variants.append({**body, "model": MODEL})
    if "rows" in body:
        variants.append({**body, "rows": [ROW, {"age": 40}]})
    if "row" in body:
        variants.append({**body, "row": {"age": 50, "bmi": 30}})
    if "observations" in body:
        variants.append({**body, "observations": {"bmi": 30}})
    if "inputs" in body:  # an OIP v2 request: the model's features tensor, the generated parameters and outputs
        variants.append({**body, "inputs": [FEATURES_TENSOR]})
    if "file" in body:
        usable = {k: v for k, v in variants[-1].items() if k not in ("samples", "version")}
        variants += [{**usable, "file": t} for t in TABLES]
    return st.sampled_from(variants)


def call(case: Any, base_url: str) -> Any:
    """`case` over HTTP. An upload goes through requests (as schemathesis's own calls do) with its table in a part
    named like a table file: schemathesis names a generated file part after its field ("file"), which the route
    refuses for its missing suffix."""
    body = case.body
    if not (case.path == "/v1/batch-jobs" and case.method.upper() == "POST" and isinstance(body, dict)):
        return case.call(base_url=base_url, timeout=60)
    file = body.get("file", b"")
    content = file if isinstance(file, bytes) else str(file).encode("utf-8", "surrogatepass")
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items() if k != "file" and v is not None}
    response = requests.post(base_url + case.path, files={"file": ("table.csv", content)}, data=data, timeout=60)
    return Response.from_any(response)


@pytest.fixture(scope="module")
def fuzz_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("service-fuzz")
    with running_service(artifact_dir(request), folder, database="sqlite", sessions="memory", **LIMITS) as service:
        # Jobs wait while the requests run: a job's state must not depend on timing (hypothesis replays sequences,
        # and a cancel answered 200 once and 409 the next time is a flaky test); the last test scores them.
        service.state.jobs.stop()
        yield service


@schema.parametrize()
@FUZZ
def test_no_server_errors(case: Any, fuzz_service: Service) -> None:
    case.validate_response(call(case, fuzz_service.url), checks=[not_a_server_error])


def test_no_server_errors_in_linked_sequences(fuzz_service: Service) -> None:
    links = [(name, link) for op in _openapi()["paths"].values() for o in op.values()
             for r in o.get("responses", {}).values() for name, link in (r.get("links") or {}).items()]  # fmt: skip
    assert len(links) >= 8  # sessions and batch jobs: the stateful run has transitions to follow

    class Workflow(schema.as_state_machine()):
        def call(self, case: Any, **kwargs: Any) -> Any:
            return call(case, fuzz_service.url)

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=[not_a_server_error])

    Workflow.run(
        settings=settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )


def test_the_fuzz_reached_the_engine_and_the_batch_runner(fuzz_service: Service) -> None:
    """The run above is only worth its size if it got past validation: count its answers by route and status."""
    counts: dict[tuple[str, str], float] = {}
    for line in fuzz_service.client().get("/metrics").text.splitlines():
        found = re.match(r'hhvaem_http_requests_total\{method="(\w+)",route="([^"]+)",status="(\d+)"\} (\S+)', line)
        if found:
            method, route, status, n = found.groups()
            counts[(f"{method} {route}", status)] = counts.get((f"{method} {route}", status), 0) + float(n)
    total = sum(counts.values())
    server_errors = sum(n for (_, status), n in counts.items() if status.startswith("5"))
    print(f"fuzz: {total:.0f} requests, {server_errors:.0f} answered 5xx")
    assert server_errors == 0 and total > 1000
    # The uploads the run made (fuzzed tables among them) are scored now: each ends scored or failed with a reason
    # that names the table, never with an unexpected exception.
    from hhvaem.app.db import repository as repo

    fuzz_service.state.jobs.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with fuzz_service.db() as s:
            jobs = repo.list_batch_jobs(s, limit=1000)
        if not any(j.status in ("queued", "running") for j in jobs):
            break
        time.sleep(0.2)
    assert jobs and not any(j.status in ("queued", "running") for j in jobs)
    assert any(j.status == "succeeded" for j in jobs)
    unexpected = [j.message for j in jobs if j.status == "failed" and (j.message or "").startswith("scoring failed")]
    assert not unexpected, unexpected
    for route, status in [
        ("POST /v1/models/{name}/impute", "200"),
        ("POST /v1/models/{name}/predict", "200"),
        ("POST /v1/models/{name}/next-features", "200"),
        ("POST /v1/sessions", "201"),
        ("POST /v1/batch-jobs", "202"),
    ]:
        assert counts.get((route, status), 0) >= 1, (route, status)
