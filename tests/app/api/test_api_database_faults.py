"""The service through database outages (issue #11), with authentication on, PostgreSQL behind a TCP proxy the test
controls (refusing, then hanging connections) and real Redis: fast 503s where the database is needed, stateless
inference and sessions going on for keys already verified, `/readyz` saying why, recovery by itself; and an
artifact changed under the running service refused until restored. Plus a start-up that cannot reach its database:
one line, no traceback (a real process)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarks.proxy import TcpProxy
from tests.app.service import (
    MODEL,
    ROW,
    SAMPLES,
    Service,
    ServiceProcess,
    artifact_dir,
    free_port,
    problem,
    proxied_pg_schema,
    running_service,
)

PREDICT = f"/v1/models/{MODEL}/predict"
TIMEOUT = 2.0


@pytest.fixture(scope="module")
def outage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(service, proxy, verified key): the service reaches PostgreSQL only through `proxy`."""
    with proxied_pg_schema() as (through, proxy):
        with running_service(
            artifact_dir(request), tmp_path_factory.mktemp("service-outage"), database="url",
            database_url=through, auth_enabled=True, database_timeout_seconds=TIMEOUT,
            registry_refresh_seconds=0.5, default_samples=SAMPLES,
        ) as service:  # fmt: skip
            _, key = service.create_api_key("verified", ["infer"])
            assert service.client(key).get("/v1/models").status_code == 200  # verified: now cached
            _, admin = service.create_api_key("operator", ["admin"])
            assert service.client(admin).get("/v1/models").status_code == 200
            service.admin_key = admin  # /readyz's details are for admin keys
            yield service, proxy, key


def timed(fn):
    started = time.monotonic()
    r = fn()
    return r, time.monotonic() - started


def recover(service: Service, proxy: TcpProxy) -> float:
    """Switches the proxy back on; seconds until `/readyz` says ready again (by itself)."""
    proxy.mode = "forward"
    started = time.monotonic()
    with service.client() as c:
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() - started < 15, "did not recover"
            time.sleep(0.05)
    return time.monotonic() - started


def _during_outage(service: Service, key: str, unknown_key: str) -> str:
    c = service.client(key)
    r, seconds = timed(lambda: c.post(PREDICT, json={"rows": [ROW], "seed": 0}))
    assert r.status_code == 200 and seconds < 1.5, (r.status_code, seconds)  # stateless inference goes on
    assert c.get("/v1/models").status_code == 200  # the registry's view
    sid = c.post("/v1/sessions", json={"model": MODEL, "observations": {"age": 50}})
    assert sid.status_code == 201, sid.text  # sessions live in Redis; the audit event waits in memory
    sid = sid.json()["session_id"]
    assert c.post(f"/v1/sessions/{sid}/observations", json={"observations": {"bmi": 30}}).status_code == 200
    r, seconds = timed(lambda: c.get("/v1/batch-jobs/" + "0" * 32))  # needs the database: a fast 503
    problem(r, 503)
    assert r.headers["retry-after"] and seconds < TIMEOUT * 2 + 1, seconds
    r, seconds = timed(lambda: service.client(unknown_key).get("/v1/models"))
    assert problem(r, 503) and seconds < TIMEOUT * 2 + 1  # cannot tell whether the key is good: not a 401
    r, seconds = timed(lambda: service.client(service.admin_key).get("/readyz"))
    body = problem(r, 503)
    assert body["checks"]["database"].startswith("unreachable (") and seconds < TIMEOUT * 2 + 1
    assert "database unreachable" in body["detail"]
    body = problem(c.get("/readyz"), 503)  # an infer key: the states, not the reasons
    assert body["checks"]["database"] == "unreachable" and body["detail"] == "Not ready: database unreachable"
    return sid


@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_a_database_outage_gives_fast_503s_and_inference_goes_on(outage, mode: str) -> None:
    service, proxy, key = outage
    _, unknown = service.create_api_key(f"unverified-{mode}", ["infer"])
    proxy.mode = mode
    try:
        started = time.monotonic()
        sid = _during_outage(service, key, unknown)
        assert time.monotonic() - started < 30
    finally:
        seconds = recover(service, proxy)
    assert seconds < 5, seconds
    c = service.client(key)
    assert c.get("/v1/batch-jobs/" + "0" * 32).status_code == 404  # the database answers again
    assert service.client(unknown).get("/v1/models").status_code == 200
    deadline = time.monotonic() + 10  # the audit events made during the outage are written: nothing lost
    while len(service.events(session_id=sid)) < 2 and time.monotonic() < deadline:
        c.post(PREDICT, json={"rows": [ROW]})
        time.sleep(0.1)
    assert sorted(e.kind for e in service.events(session_id=sid)) == ["session.created", "session.observation"]


def test_an_artifact_changed_under_the_running_service_is_refused_until_restored(outage) -> None:
    service, _, key = outage
    c = service.client(key)
    manifest = service.artifact / "manifest.json"
    original = manifest.read_bytes()
    edited = json.loads(original)
    first = next(iter(edited["preprocessing"]))
    edited["preprocessing"][first]["mean"] += 0.5  # edited statistics: before, served on by the running process
    try:
        manifest.write_text(json.dumps(edited))
        deadline = time.monotonic() + 10
        while c.post(PREDICT, json={"rows": [ROW]}).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)  # within one registry refresh
        body = problem(c.post(PREDICT, json={"rows": [ROW]}), 503)
        assert "changed or are missing since registration" in body["detail"]
        assert str(service.artifact) not in body["detail"]  # no server path to an infer key (issue #22, 9)
        ready = problem(service.client(service.admin_key).get("/readyz"), 503)
        assert (
            ready["checks"]["models"][f"{MODEL} v1"].startswith("broken: ")
            and "changed since registration" in (ready["checks"]["models"][f"{MODEL} v1"])
        )
        assert f"model {MODEL} v1" in ready["detail"]
        anonymous = problem(service.client().get("/readyz"), 503)
        assert anonymous["checks"]["models"] == "0 of 1 ok" and MODEL not in json.dumps(anonymous)
        assert service.client().get("/v2/health/ready").status_code == 400  # the same answer in both protocols
        problem(c.post("/v1/sessions", json={"model": MODEL}), 503)
    finally:
        manifest.write_bytes(original)
    deadline = time.monotonic() + 10
    while c.post(PREDICT, json={"rows": [ROW]}).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c.post(PREDICT, json={"rows": [ROW]}).status_code == 200
    assert service.client().get("/readyz").status_code == 200


def _start_up_output(tmp_path: Path, database_url: str) -> tuple[int, str, float]:
    service = ServiceProcess(
        {"HHVAEM_DATABASE_URL": database_url, "HHVAEM_DATA_DIR": str(tmp_path / "data"),
         "HHVAEM_DATABASE_TIMEOUT_SECONDS": str(TIMEOUT)},
        tmp_path,
    )  # fmt: skip
    started = time.monotonic()
    service.start(wait=False)
    try:
        code = service.wait(timeout=60)
    finally:
        service.stop()
    return code, service.output(), time.monotonic() - started


@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_a_start_up_without_its_database_fails_in_one_line(tmp_path: Path, mode: str) -> None:
    if mode == "refuse":
        url = f"postgresql://postgres:secret-password@127.0.0.1:{free_port()}/hhvaem"
        code, output, seconds = _start_up_output(tmp_path, url)
    else:
        proxy = TcpProxy(("127.0.0.1", 5432)).start()
        proxy.mode = "hang"
        try:
            url = f"postgresql://postgres:secret-password@127.0.0.1:{proxy.port}/hhvaem"
            code, output, seconds = _start_up_output(tmp_path, url)
        finally:
            proxy.stop()
    assert code != 0 and seconds < 30, (code, seconds, output)
    failures = [line for line in output.splitlines() if "start-up failed" in line]
    assert len(failures) == 1 and "the database is unreachable" in failures[0], output
    assert "Traceback" not in output and "secret-password" not in output, output
    assert len(output.splitlines()) <= 6, output  # uvicorn's own few lines, and ours


def test_an_unreadable_key_store_is_a_503_not_a_401_and_nothing_is_cached(outage) -> None:
    service, proxy, _ = outage
    _, fresh_key = service.create_api_key("fresh", ["infer"])
    proxy.mode = "refuse"
    try:
        problem(service.client(fresh_key).get("/v1/models"), 503)
        problem(service.client("hhv_" + "Q" * 43).get("/v1/models"), 503)
        problem(service.client("not-a-key").get("/v1/models"), 401)  # malformed: no database needed to say so
    finally:
        recover(service, proxy)
    problem(service.client("hhv_" + "Q" * 43).get("/v1/models"), 401)
