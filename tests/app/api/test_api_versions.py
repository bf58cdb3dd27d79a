"""Model versions over real HTTP (issue #22, 8): retiring a version (410 for whoever still asks for it, sessions
pinned to it included; listed, never failing readiness; final), and registrations that would break the clients of
the active version (422 naming the differences, unless forced).

The service is this module's own (SQLite, in-process sessions, API keys on): a retirement is final, so the shared
services must not see one. Each test registers the versions it retires."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from hhvaem.app.db import repository as repo
from hhvaem.model.io.artifact import manifest_text
from tests.app.service import MODEL, ROW, SAMPLES, Service, problem, running_service, variant_copy
from tests.app.test_registry import incompatible

PREDICT = f"/v1/models/{MODEL}/predict"
Q = {"samples": SAMPLES, "seed": 0}
RETIRED = "/problems/version-retired"


@pytest.fixture(scope="module")
def versions(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from tests.app.service import artifact_dir

    folder = tmp_path_factory.mktemp("service-versions")
    with running_service(
        artifact_dir(request), folder, database="sqlite", sessions="memory", auth_enabled=True, default_samples=SAMPLES
    ) as service:
        _, service.admin_key = service.create_api_key("admin", ["admin"])
        _, service.infer_key = service.create_api_key("infer", ["infer"])
        yield service


@pytest.fixture(scope="module")
def admin(versions: Service) -> httpx.Client:
    return versions.client(versions.admin_key)


@pytest.fixture(scope="module")
def infer(versions: Service) -> httpx.Client:
    return versions.client(versions.infer_key)


def register(service: Service, admin: httpx.Client, note: str) -> tuple[Path, int]:
    """A new, compatible, inactive version of the model (a copy of the artifact with a `note`): (path, version)."""
    path = variant_copy(service.artifact, service.models_dir.parent / "variants" / note.replace(" ", "-"), note)
    r = admin.post("/v1/models", json={"path": str(path), "activate": False})
    assert r.status_code == 201 and r.json()["schema_changes"] == [], r.text
    return path, r.json()["version"]


def retire_path(version: int) -> str:
    return f"/v1/models/{MODEL}/versions/{version}/retire"


def new_session(infer: httpx.Client, version: int) -> str:
    r = infer.post("/v1/sessions", json={"model": MODEL, "version": version, "observations": {"age": 50}})
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def gone(response: httpx.Response, retired: dict) -> dict:
    """Asserts a 410 problem naming the retirement (when, why), with no Retry-After (retrying never helps)."""
    body = problem(response, 410)
    assert body["type"] == RETIRED and "Retry-After" not in response.headers
    assert (body["retired_at"], body["reason"]) == (retired["retired_at"], retired["retired_reason"])
    assert f"version {retired['version']} was retired" in body["detail"] and retired["retired_reason"] in body["detail"]
    return body


def audited(service: Service, kind: str, version: int) -> list:
    deadline = time.monotonic() + 10  # audit events are written off the request path
    while True:
        events = [e for e in service.events(kind) if e.model_version == version]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def test_a_retired_version_is_gone_for_every_caller_and_stays_retired(versions, admin, infer) -> None:
    path, v = register(versions, admin, "to retire")
    sid = new_session(infer, v)
    assert infer.get(f"/v1/sessions/{sid}/prediction", params=Q).status_code == 200
    problem(infer.post(retire_path(v)), 403)  # an admin's act
    r = admin.post(retire_path(v), json={"reason": "superseded by version 1"})
    assert r.status_code == 200, r.text
    retired = r.json()
    assert retired["retired_at"] and retired["retired_reason"] == "superseded by version 1" and not retired["active"]
    with versions.db() as s:
        row = repo.get_model(s, MODEL, v)
        assert row.retired_at.isoformat() == retired["retired_at"] and row.retired_reason == "superseded by version 1"
    assert audited(versions, "model.retired", v)[0].detail["reason"] == "superseded by version 1"

    gone(infer.post(PREDICT, params={"version": v}, json={"rows": [ROW], **Q}), retired)
    gone(infer.get(f"/v1/models/{MODEL}", params={"version": v}), retired)
    gone(infer.post("/v1/sessions", json={"model": MODEL, "version": v}), retired)
    gone(infer.get(f"/v1/sessions/{sid}/prediction", params=Q), retired)  # the session pinned to it
    gone(infer.get(f"/v1/sessions/{sid}/next-features", params=Q), retired)
    gone(infer.post(f"/v1/sessions/{sid}/observations", json={"observations": {"bmi": 27.5}}), retired)
    assert infer.get(f"/v1/sessions/{sid}").status_code == 200  # its answers can still be read
    v2 = infer.get(f"/v2/models/{MODEL}/versions/{v}")
    assert v2.status_code == 410 and "superseded by version 1" in v2.json()["error"]

    listed = {m["version"]: m for m in infer.get("/v1/models").json() if m["name"] == MODEL}
    assert listed[v]["retired_at"] == retired["retired_at"] and listed[1]["retired_at"] is None
    assert v not in infer.get(f"/v1/models/{MODEL}").json()["versions"]  # what may be asked for
    assert str(v) not in infer.get(f"/v2/models/{MODEL}").json()["versions"]
    assert infer.post(PREDICT, json={"rows": [ROW], **Q}).json()["version"] == 1  # the active version serves on

    ready = admin.get("/readyz")  # listed for an admin, and no reason to take the replica out of service
    assert ready.status_code == 200, ready.text
    when = retired["retired_at"].split(".")[0].removesuffix("+00:00")
    assert ready.json()["checks"]["models"][f"{MODEL} v{v}"].startswith(f"retired {when}")
    assert ready.json()["checks"]["models"][f"{MODEL} v{v}"].endswith("(superseded by version 1)")
    assert versions.client().get("/readyz").json()["checks"]["models"] == "1 of 1 ok"  # anonymous: counts only

    again = admin.post(retire_path(v), json={"reason": "another reason"})
    assert again.status_code == 200 and again.json() == retired  # idempotent: the first retirement stands
    assert "was retired" in problem(admin.post(f"/v1/models/{MODEL}/versions/{v}/activate"), 409)["detail"]
    assert "not served again" in problem(admin.post("/v1/models", json={"path": str(path)}), 409)["detail"]
    versions.state.registry.register(path, at_start=True)  # a restart on a models folder that still holds it
    gone(infer.post(PREDICT, params={"version": v}, json={"rows": [ROW], **Q}), retired)


def test_the_active_version_cannot_be_retired(versions, admin) -> None:
    body = problem(admin.post(retire_path(1), json={"reason": "oops"}), 409)
    assert "active version: activate another version first" in body["detail"]
    with versions.db() as s:
        assert repo.get_model(s, MODEL, 1).retired_at is None
    problem(admin.post(retire_path(999)), 404)
    problem(admin.post("/v1/models/no-such-model/versions/1/retire"), 404)
    for reason in ("x" * 501, "a\nINFO forged log line", "\ud800"):
        body = json.dumps({"reason": reason})  # ASCII JSON: the lone surrogate as its escape
        problem(admin.post(retire_path(1), content=body, headers={"content-type": "application/json"}), 422, "reason")


def test_a_pinned_version_whose_files_vanished_is_503_until_retired_then_410(versions, admin, infer) -> None:
    path, v = register(versions, admin, "files vanish")
    sid = new_session(infer, v)
    shutil.rmtree(path)
    versions.state.registry.refresh()  # what every process does each registry_refresh_seconds
    r = infer.get(f"/v1/sessions/{sid}/prediction", params=Q)
    assert problem(r, 503) and r.headers["Retry-After"]  # may be transient: the files may come back
    r = admin.post(retire_path(v), json={"reason": "its files are gone"})
    assert r.status_code == 200, r.text
    gone(infer.get(f"/v1/sessions/{sid}/prediction", params=Q), r.json())  # now final: the client moves on
    ready = admin.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["models"][f"{MODEL} v{v}"].endswith(
        "(its files are gone)"
    )


def incompatible_artifact(service: Service) -> Path:
    """A copy of the artifact with a feature renamed, a category replaced and a type changed (sealed again, so it
    passes every check but the schema's; its graphs still run)."""
    dest = service.models_dir.parent / "variants" / "incompatible"
    if not dest.exists():
        shutil.copytree(service.artifact, dest)
        manifest = json.loads((dest / "manifest.json").read_text())
        incompatible(manifest)
        (dest / "manifest.json").write_text(manifest_text(manifest))
    return dest


def test_a_schema_that_breaks_the_active_versions_clients_is_refused_unless_forced(versions, admin) -> None:
    path = incompatible_artifact(versions)
    expected = [
        "feature 'age' changes from positive to real",
        "feature 'sex' loses the category 2",
        "feature 'bmi' is missing",
    ]
    before = [m["version"] for m in admin.get("/v1/models").json()]
    body = problem(admin.post("/v1/models", json={"path": str(path)}), 422, "path")
    assert [e["reason"] for e in body["errors"]] == expected
    assert f"differs from '{MODEL}' version 1's" in body["detail"] and "`force`" in body["detail"]
    assert [m["version"] for m in admin.get("/v1/models").json()] == before  # nothing registered
    r = admin.post("/v1/models", json={"path": str(path), "activate": False, "force": True})
    assert r.status_code == 201, r.text
    assert r.json()["schema_changes"] == expected and not r.json()["active"]
    assert audited(versions, "model.registered", r.json()["version"])[0].detail["forced_schema_changes"] == expected


def test_the_python_client_forces_and_retires(versions) -> None:
    from hhvaem.client import Client, ProblemError

    with Client(versions.url, api_key=versions.admin_key) as client:
        registered = client.register_model(incompatible_artifact(versions), activate=False, force=True)
        assert registered.version > 1 and "feature 'bmi' is missing" in registered.schema_changes
        retired = client.retire(MODEL, registered.version, "a mistake")
        assert retired.retired_reason == "a mistake" and retired.retired_at
        assert client.retire(MODEL, registered.version) == retired
        with pytest.raises(ProblemError) as e:
            client.predict(MODEL, [ROW], samples=SAMPLES, version=registered.version)
        assert e.value.status == 410 and e.value.type == RETIRED
