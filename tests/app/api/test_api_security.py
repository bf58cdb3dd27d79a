"""Security over real HTTP with authentication on (PostgreSQL + Redis): API keys and scopes, ownership of sessions
and jobs, keys stored hashed, audit events without raw values (and with them when configured), nothing secret in
the logs, CORS."""

from __future__ import annotations

import hashlib
import json
import re
import time

import httpx
import pytest

from tests.app.service import (
    MODEL,
    ROW,
    SAMPLES,
    Service,
    artifact_dir,
    lite_service,
    problem,
    running_service,
)

ALLOWED = "https://questionnaire.example"
# Distinctive raw values: none of them may appear in the logs or (by default) in the audit trail.
SECRET_BMI = 31.4159
SECRET_LDL = 123.456
Q = {"samples": SAMPLES, "seed": 0}


@pytest.fixture(scope="module")
def svc(request: pytest.FixtureRequest, tmp_path_factory):
    folder = tmp_path_factory.mktemp("service-auth")
    with running_service(
        artifact_dir(request), folder, auth_enabled=True, cors_origins=[ALLOWED], default_samples=SAMPLES
    ) as service:
        yield service


@pytest.fixture(scope="module")
def keys(svc: Service) -> dict[str, tuple[int, str]]:
    """name -> (id, plaintext): two infer keys (A, B), an admin key, and a revoked one."""
    from hhvaem.app.db import repository as repo

    out = {
        name: svc.create_api_key(f"test {name}", scopes)
        for name, scopes in [
            ("a", ["infer"]),
            ("b", ["infer"]),
            ("admin", ["admin"]),
            ("revoked", ["infer"]),
        ]
    }
    with svc.db() as s, s.begin():
        repo.revoke_api_key(s, out["revoked"][0])
    return out


def client(svc: Service, keys, name: str | None, **kw) -> httpx.Client:
    return svc.client(keys[name][1] if name else None, **kw)


# -------------------------------------------------------------------------------------------------- authentication

PROTECTED = [
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{MODEL}", None),
    ("POST", f"/v1/models/{MODEL}/predict", {"rows": [ROW]}),
    ("POST", f"/v1/models/{MODEL}/next-features", {"row": ROW}),
    ("POST", "/v1/sessions", {"model": MODEL}),
    ("GET", "/v1/sessions/some-id", None),
    ("GET", "/v1/batch-jobs/some-id", None),
    ("POST", "/v1/models", {"path": "/tmp"}),
]


@pytest.mark.parametrize("method,path,body", PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_no_key_is_401_with_challenge(svc: Service, keys, method: str, path: str, body) -> None:
    r = client(svc, keys, None).request(method, path, json=body)
    problem(r, 401)
    assert r.headers["www-authenticate"] == 'Bearer realm="hhvaem"'
    assert "API key is required" in r.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer hhv_" + "A" * 43},  # well-formed, unknown
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"X-API-Key": "hhv_" + "B" * 43},
    ],
    ids=["unknown", "malformed", "empty", "basic", "x-api-key-unknown"],
)
def test_bad_key_is_401(svc: Service, keys, headers: dict) -> None:
    r = svc.client(headers=headers).get("/v1/models")
    problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_revoked_key_is_401(svc: Service, keys) -> None:
    body = problem(client(svc, keys, "revoked").get("/v1/models"), 401)
    assert "not valid or was revoked" in body["detail"]


def test_good_keys_in_either_header(svc: Service, keys) -> None:
    assert client(svc, keys, "a").get("/v1/models").status_code == 200
    assert svc.client(headers={"X-API-Key": keys["a"][1]}).get("/v1/models").status_code == 200
    assert svc.client(headers={"Authorization": f"bearer {keys['a'][1]}"}).get("/v1/models").status_code == 200


def test_health_and_metrics_need_no_key(svc: Service) -> None:
    c = svc.client()
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 200
    assert c.get("/metrics").status_code == 200


# ---------------------------------------------------------------------------------------------------------- scopes


def test_infer_key_cannot_administer(svc: Service, keys) -> None:
    c = client(svc, keys, "a")
    body = problem(c.post("/v1/models", json={"path": str(svc.artifact)}), 403)
    assert body["type"] == "/problems/forbidden" and "'admin'" in body["detail"]
    problem(c.post(f"/v1/models/{MODEL}/versions/1/activate"), 403)
    assert [m["version"] for m in c.get("/v1/models").json()] == [1]  # nothing registered


def test_admin_key_can_administer_and_infer(svc: Service, keys, tmp_path) -> None:
    c = client(svc, keys, "admin")
    r = c.post(f"/v1/models/{MODEL}/versions/1/activate")
    assert r.status_code == 200 and r.json()["active"]
    # Past authorisation into the handler: an empty directory is refused for what it is.
    problem(c.post("/v1/models", json={"path": str(tmp_path)}), 422, "path")
    assert c.post(f"/v1/models/{MODEL}/predict", json={"rows": [ROW], **Q}).status_code == 200


# ------------------------------------------------------------------------------------------------------- ownership


def test_sessions_belong_to_the_key_that_created_them(svc: Service, keys) -> None:
    a, b, admin = client(svc, keys, "a"), client(svc, keys, "b"), client(svc, keys, "admin")
    sid = a.post("/v1/sessions", json={"model": MODEL, "observations": {"age": 50}}).json()["session_id"]
    for other in (b, admin):
        for method, path, body in [
            ("GET", "", None),
            ("POST", "/observations", {"observations": {"bmi": 30}}),
            ("GET", "/next-features", None),
            ("GET", "/prediction", None),
            ("DELETE", "", None),
        ]:
            r = other.request(method, f"/v1/sessions/{sid}{path}", json=body)
            assert "never existed or it expired" in problem(r, 404)["detail"]  # indistinguishable from absent
    s = a.get(f"/v1/sessions/{sid}").json()
    assert s["current"] == {"age": 50} and len(s["observations"]) == 1  # B's attempts changed nothing
    assert a.delete(f"/v1/sessions/{sid}").status_code == 204


def test_batch_jobs_belong_to_the_key_that_created_them(svc: Service, keys) -> None:
    a, b = client(svc, keys, "a"), client(svc, keys, "b")
    files = {"file": ("t.csv", b"age,bmi\n50,30\n")}
    r = a.post("/v1/batch-jobs", files=files, data={"model": MODEL, "samples": str(SAMPLES), "operation": "predict"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    problem(b.get(f"/v1/batch-jobs/{job_id}"), 404)
    problem(b.get(f"/v1/batch-jobs/{job_id}/result"), 404)
    assert a.get(f"/v1/batch-jobs/{job_id}").status_code == 200


# ------------------------------------------------------------------------------------------------- stored secrets


def test_api_keys_are_stored_hashed(svc: Service, keys) -> None:
    from sqlalchemy import text

    with svc.db() as s:
        rows = s.execute(text("SELECT id, prefix, key_hash FROM api_keys")).all()
        tables = [
            t
            for (t,) in s.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
            )
        ]
        dump = "\n".join(
            str(row)
            for t in tables
            for row in s.execute(text(f'SELECT t::text FROM "{t}" t')).all()  # noqa: S608
        )
    stored = {r.id: r for r in rows}
    for key_id, plaintext in keys.values():
        assert stored[key_id].key_hash == hashlib.sha256(plaintext.encode()).hexdigest()
        assert stored[key_id].prefix == plaintext[4:12]
        assert plaintext not in dump and plaintext[4:] not in dump  # in no column of any table


# ----------------------------------------------------------------------------------------------------------- audit


def _questionnaire(c: httpx.Client) -> str:
    """One short questionnaire with distinctive values; returns the session id."""
    r = c.post("/v1/sessions", json={"model": MODEL, "observations": {"bmi": SECRET_BMI}})
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    assert c.post(f"/v1/sessions/{sid}/observations", json={"observations": {"ldl": SECRET_LDL}}).status_code == 200
    assert c.get(f"/v1/sessions/{sid}/next-features", params=Q).status_code == 200
    assert c.get(f"/v1/sessions/{sid}/prediction", params=Q).status_code == 200
    return sid


def test_audit_events_without_raw_values(svc: Service, keys) -> None:
    a = client(svc, keys, "a")
    sid = _questionnaire(a)
    r = a.post(f"/v1/models/{MODEL}/predict", json={"rows": [{"bmi": SECRET_BMI}], **Q})
    assert r.status_code == 200
    events = svc.events(session_id=sid)
    kinds = sorted(e.kind for e in events)
    assert kinds == ["prediction.served", "recommendation.served", "session.created", "session.observation"]
    assert {e.api_key_id for e in events} == {keys["a"][0]}
    assert {(e.model_name, e.model_version) for e in events} == {(MODEL, 1)}
    by_kind = {e.kind: e.detail for e in events}
    assert by_kind["session.created"]["features"] == ["bmi"]
    assert by_kind["session.observation"]["features"] == ["ldl"]
    assert by_kind["recommendation.served"]["recommended"]
    stateless = [e for e in svc.events(kind="prediction.served") if e.session_id is None]
    assert stateless and stateless[0].api_key_id == keys["a"][0] and stateless[0].detail == {"rows": 1}
    everything = json.dumps([e.detail for e in svc.events()])
    assert str(SECRET_BMI) not in everything and str(SECRET_LDL) not in everything
    assert all("values" not in e.detail for e in svc.events())


def test_audit_events_with_values_when_configured(request: pytest.FixtureRequest) -> None:
    lite = lite_service(request)  # SQLite + in-process sessions, audit_values=True
    assert lite.settings.audit_values
    sid = _questionnaire(lite.client())
    by_kind = {e.kind: e.detail for e in lite.events(session_id=sid)}
    assert by_kind["session.created"] == {"features": ["bmi"], "values": {"bmi": SECRET_BMI}}
    assert by_kind["session.observation"] == {"features": ["ldl"], "values": {"ldl": SECRET_LDL}}
    assert {e.api_key_id for e in lite.events(session_id=sid)} == {None}  # authentication is off there


def test_no_key_or_raw_value_in_the_logs(svc: Service, keys) -> None:
    a = client(svc, keys, "a")
    _questionnaire(a)
    bad = "hhv_" + "Z" * 43
    problem(svc.client(bad).get("/v1/models"), 401)
    problem(a.post(f"/v1/models/{MODEL}/impute", json={"rows": [{"bmi": -SECRET_BMI, "sex": 777}]}), 422)
    sid = a.post("/v1/sessions", json={"model": MODEL}).json()["session_id"]
    problem(a.post(f"/v1/sessions/{sid}/observations", json={"observations": {"ldl": -SECRET_LDL}}), 422)
    text = svc.logs.text
    assert "POST /v1/sessions" in text and "hhvaem" in text  # the capture works
    for _, plaintext in keys.values():
        assert plaintext not in text and plaintext[4:12] not in text
    for secret in (bad, "ZZZZZZZZ", str(SECRET_BMI), str(SECRET_LDL), "777"):
        # A value standing on its own, not a run of digits inside a random job or session id.
        assert not re.search(rf"(?<![\w.]){re.escape(secret)}(?![\w.])", text), secret


# ------------------------------------------------------------------------------------------------------------ CORS


def test_cors(svc: Service, keys) -> None:
    c = client(svc, keys, "a")
    r = c.get("/v1/models", headers={"Origin": ALLOWED})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED
    r = c.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    # Errors are readable by the allowed page too (CORS wraps the problem responses).
    r = svc.client().get("/v1/models", headers={"Origin": ALLOWED})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ALLOWED

    preflight = {
        "Origin": ALLOWED,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    r = svc.client().options(f"/v1/models/{MODEL}/predict", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = svc.client().options(f"/v1/models/{MODEL}/predict", headers={**preflight, "Origin": "https://evil.example"})
    assert r.status_code < 500 and "access-control-allow-origin" not in r.headers


def test_a_key_in_the_url_is_refused_and_never_logged(svc: Service, keys) -> None:
    key = keys["a"][1]
    r = svc.client().get("/v1/models", params={"api_key": key})
    assert "never in the URL" in problem(r, 401)["detail"]
    time.sleep(0.2)  # the access log line comes after the response
    assert key not in svc.logs.text and key[4:12] not in svc.logs.text and "api_key=***" in svc.logs.text


def test_verified_keys_are_cached_and_a_revocation_takes_effect_within_the_cache_time(svc: Service) -> None:
    from hhvaem.app.db import repository as repo

    key_id, key = svc.create_api_key("cached", ["infer"])
    c = svc.client(key)
    assert c.get("/v1/models").status_code == 200
    with svc.db() as s, s.begin():
        repo.revoke_api_key(s, key_id)
    assert c.get("/v1/models").status_code == 200  # still within api_key_cache_seconds
    svc.state.keys.ttl = 0.0  # what the passing of the cache time does
    try:
        problem(c.get("/v1/models"), 401)
    finally:
        svc.state.keys.ttl = svc.settings.api_key_cache_seconds
