"""The HTTP API over real HTTP (uvicorn on a loopback port, httpx): health, models and the stateless inference
routes, against PostgreSQL + Redis (the main configuration) and, for a smoke subset, SQLite + in-process sessions.

Every error is checked as an `application/problem+json` document naming the field and the reason; known bugs are
regression tests for bugs found on the way say so.
"""

from __future__ import annotations

import json
import math
import shutil

import httpx
import pytest

from tests.app.service import (
    FEATURES,
    MODEL,
    ROW,
    SAMPLES,
    TARGET,
    Service,
    activate,
    declared_length_request,
    http_client,
    lite_service,
    main_service,
    problem,
    reason,
    register_in_db,
    running_service,
    second_version,
)

IMPUTE = f"/v1/models/{MODEL}/impute"
PREDICT = f"/v1/models/{MODEL}/predict"
NEXT = f"/v1/models/{MODEL}/next-features"


def fresh(svc: Service) -> httpx.Client:
    """A client on a new connection (the server closes the connection after a 500)."""
    return http_client(svc.url)


def rows_body(row: dict, **extra) -> dict:
    return {"rows": [row], "samples": SAMPLES, "seed": 0, **extra}


def next_body(row: dict, **extra) -> dict:
    return {"row": row, "samples": SAMPLES, "seed": 0, **extra}


def ordered(quantiles: dict[str, float]) -> bool:
    pairs = sorted((float(k), v) for k, v in quantiles.items())
    return all(a[1] <= b[1] for a, b in zip(pairs, pairs[1:]))


# --------------------------------------------------------------------------------------------------------- health


def test_healthz_and_readyz(any_svc: Service) -> None:
    c = any_svc.client()
    r = c.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = c.get("/readyz")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["sessions"] == f"ok ({any_svc.state.store.kind})"
    assert checks["models"] == {f"{MODEL} v1": "ok"} or set(checks["models"].values()) == {"ok"}


def test_readyz_503_when_redis_unreachable(tmp_path, free_redis_url: str) -> None:
    # No model registered either: the start-up is then cheap; the problem names each failing check.
    with running_service(None, tmp_path, database="sqlite", redis_url=free_redis_url, register="none") as s:
        r = s.client().get("/readyz")
        body = problem(r, 503)
        assert body["checks"]["sessions"] == "unreachable (redis)"
        assert body["checks"]["database"] == "ok"
        assert "sessions unreachable" in body["detail"]
        assert r.headers["retry-after"]
        assert s.client().get("/healthz").status_code == 200  # alive, just not ready


@pytest.fixture
def free_redis_url() -> str:
    from tests.app.service import free_port

    return f"redis://127.0.0.1:{free_port()}/0"


def test_metrics_after_some_calls(svc: Service, c: httpx.Client) -> None:
    assert c.post(PREDICT, json=rows_body(ROW)).status_code == 200
    assert c.post(IMPUTE, json=rows_body({"bmi": -1})).status_code == 422
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'hhvaem_http_requests_total{method="POST",route="/v1/models/{name}/predict",status="200"}' in text
    assert 'hhvaem_http_requests_total{method="POST",route="/v1/models/{name}/impute",status="422"}' in text
    assert "hhvaem_http_request_seconds_bucket" in text
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"}
    assert samples["hhvaem_sampler_batch_requests_count"] >= 1
    assert samples['hhvaem_sampler_batch_requests_bucket{le="+Inf"}'] >= 1
    assert samples["hhvaem_sampler_call_seconds_count"] >= 1
    assert samples["hhvaem_rows_scored_total"] >= 1


# --------------------------------------------------------------------------------------------------------- models


def test_list_and_describe_models(any_svc: Service) -> None:
    c = any_svc.client()
    r = c.get("/v1/models")
    assert r.status_code == 200
    mine = [m for m in r.json() if m["name"] == MODEL]
    assert mine and sum(m["active"] for m in mine) == 1
    assert all(len(m["checksum"]) == 64 for m in mine)
    assert mine[0]["summary"]["targets"] == [TARGET] and mine[0]["summary"]["n_features"] == len(FEATURES)

    r = c.get(f"/v1/models/{MODEL}")
    assert r.status_code == 200
    d = r.json()
    assert [f["name"] for f in d["schema"]["features"]] == list(FEATURES)
    assert [t["name"] for t in d["schema"]["targets"]] == [TARGET]
    sex = next(f for f in d["schema"]["features"] if f["name"] == "sex")
    assert sex["type"] == "binary" and sex["categories"] == [1, 2] and sex["labels"] == ["group 1", "group 2"]
    columns = {c["name"]: c for c in d["schema"]["features"] + d["schema"]["targets"]}
    assert all(c["description"].endswith(".") for c in columns.values()), "every column says what it is"
    assert columns["triglycerides"]["unit"] == "mg/dL" and "log" not in columns["triglycerides"]["unit"]
    assert "mean arterial pressure" in columns["blood_pressure"]["description"].lower()
    assert "disease progression one year after baseline" in columns[TARGET]["description"]
    assert d["sampler"]["hmc_steps"] >= 1 and d["sampler"]["leapfrog_steps"] >= 1 and d["sampler"]["step_sizes"]
    assert 1 in d["versions"] and d["backend"].startswith("onnxruntime")

    r = c.get(f"/v1/models/{MODEL}", params={"version": 1})
    assert r.status_code == 200 and r.json()["version"] == 1


def test_unknown_model_and_version_are_404(any_svc: Service) -> None:
    c = any_svc.client()
    body = problem(c.get("/v1/models/nope"), 404)
    assert body["type"] == "/problems/model-not-found" and "nope" in body["detail"]
    body = problem(c.get(f"/v1/models/{MODEL}", params={"version": 99}), 404)
    assert "version 99" in body["detail"]
    problem(c.post("/v1/models/nope/predict", json=rows_body(ROW)), 404)
    problem(c.post(PREDICT, params={"version": 99}, json=rows_body(ROW)), 404)
    problem(c.post(f"/v1/models/{MODEL}/versions/99/activate"), 404)


def test_register_a_new_version_and_activate_the_old_one(svc: Service, c: httpx.Client) -> None:
    registered = second_version(svc)  # a copy of the artifact with a changed manifest, through POST /v1/models
    assert registered["name"] == MODEL and registered["version"] == 2 and registered["active"]
    try:
        d = c.get(f"/v1/models/{MODEL}").json()
        assert d["version"] == 2 and d["versions"] == [1, 2]
        assert c.post(PREDICT, json=rows_body(ROW)).json()["version"] == 2
        assert c.post(PREDICT, params={"version": 1}, json=rows_body(ROW)).json()["version"] == 1
        r = c.post(f"/v1/models/{MODEL}/versions/1/activate")
        assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["active"]
        listed = {m["version"]: m["active"] for m in c.get("/v1/models").json() if m["name"] == MODEL}
        assert listed == {1: True, 2: False}
        assert c.post(PREDICT, json=rows_body(ROW)).json()["version"] == 1
        # The same artifact again is the version it already is (no duplicate), and activation is idempotent.
        assert c.post(f"/v1/models/{MODEL}/versions/1/activate").status_code == 200
    finally:
        activate(svc, 1)


def test_register_refuses_what_is_not_an_artifact(svc: Service, c: httpx.Client, tmp_path) -> None:
    body = problem(c.post("/v1/models", json={"path": str(tmp_path)}), 422, "path")
    assert "manifest.json" in reason(body, "path")
    problem(c.post("/v1/models", json={"path": str(tmp_path / "missing")}), 422, "path")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    assert "not valid JSON" in reason(problem(c.post("/v1/models", json={"path": str(broken)}), 422, "path"), "path")
    (broken / "manifest.json").write_text(json.dumps({"format_version": 1}))
    assert "format version" in reason(problem(c.post("/v1/models", json={"path": str(broken)}), 422, "path"), "path")
    problem(c.post("/v1/models", json={}), 422, "path")
    problem(c.post("/v1/models", json={"path": str(broken), "name": "no spaces"}), 422, "name")
    assert MODEL in [m["name"] for m in c.get("/v1/models").json()]  # nothing else changed


def test_register_refuses_a_tampered_artifact(svc: Service, c: httpx.Client, tmp_path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(svc.artifact, tampered)
    with open(tampered / "impute.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    body = problem(c.post("/v1/models", json={"path": str(tampered)}), 422, "path")
    assert "checksum mismatch for impute.onnx" in reason(body, "path")


def test_service_loads_what_the_registry_says(lite: Service) -> None:
    # `lite` started without models_dir: it knows the model only from the registry row written before start-up.
    assert lite.settings.models_dir is None
    c = lite.client()
    assert c.get("/readyz").json()["checks"]["models"] == {f"{MODEL} v1": "ok"}
    listed = [m for m in c.get("/v1/models").json() if m["name"] == MODEL]
    assert [m["version"] for m in listed] == [1]
    assert c.post(PREDICT, json=rows_body(ROW)).status_code == 200


def test_a_tampered_registered_version_is_refused_with_a_clear_message(lite: Service, tmp_path, caplog) -> None:
    # The registry (written by another process) lists a version whose artifact was changed after registration.
    tampered = tmp_path / "tampered"
    shutil.copytree(lite.artifact, tampered)
    with open(tampered / "impute.onnx", "ab") as f:
        f.write(b"\0")
    version = lite.memo.get("tampered_version")
    if version is None:
        version = lite.memo["tampered_version"] = register_in_db(lite.settings.database_url, tampered, activate=False)
    lite.state.registry.refresh()  # what the service does every registry_refresh_seconds
    with fresh(lite) as c:
        r = c.post(PREDICT, params={"version": version}, json=rows_body(ROW))
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert "files changed or are missing since registration" in detail
    assert str(tmp_path) not in detail  # no server path for the caller ...
    assert f"{tampered}: checksum mismatch for impute.onnx" in caplog.text  # ... the operator's log has it


def test_register_path_with_nul_byte_is_422(svc: Service) -> None:
    with fresh(svc) as c:
        problem(c.post("/v1/models", json={"path": "/tmp/a\u0000b"}), 422, "path")


@pytest.mark.parametrize(
    "method,path,params,body",
    [
        ("GET", f"/v1/models/{MODEL}", {"version": 2**31}, None),
        ("POST", PREDICT, {"version": 2**31}, rows_body(ROW)),
        ("POST", f"/v1/models/{MODEL}/versions/{2**31}/activate", None, None),
        ("POST", "/v1/sessions", None, {"model": MODEL, "version": 2**31}),
        ("SQLITE", f"/v1/models/{MODEL}", {"version": 2**63}, None),
    ],
    ids=["describe", "predict", "activate", "session", "sqlite-describe"],
)
def test_huge_model_version_is_a_4xx(request: pytest.FixtureRequest, method: str, path: str, params, body) -> None:
    service = lite_service(request) if method == "SQLITE" else main_service(request)
    with fresh(service) as c:
        r = c.request("GET" if method == "SQLITE" else method, path, params=params, json=body)
    assert r.status_code in (404, 422), (r.status_code, r.text)


# ------------------------------------------------------------------------------------------------------ inference


def test_impute_in_original_units(any_svc: Service) -> None:
    c = any_svc.client()
    rows = [{"age": 59, "sex": 2, "bmi": 32.1}, {"ldl": 120.0, "hdl": None}]
    r = c.post(IMPUTE, json={"rows": rows, "samples": SAMPLES, "seed": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL and body["version"] >= 1 and len(body["rows"]) == 2
    columns = set(FEATURES) | {TARGET}
    for given, out in zip(rows, body["rows"]):
        observed = {k for k, v in given.items() if v is not None}
        assert set(out["values"]) == columns
        assert set(out["imputed"]) == columns - observed
        for k in observed:
            assert out["values"][k] == given[k]
        assert 0.0 <= out["acceptance_rate"] <= 1.0
        for name, s in out["imputed"].items():
            if name == "sex":
                probs = s["probabilities"]
                assert set(probs) == {"1", "2"} and math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6)
                assert s["mode"] in (1, 2) and out["values"]["sex"] == s["mode"]
                continue
            assert s["std"] > 0 and ordered(s["quantiles"]) and set(s["quantiles"]) == {"0.05", "0.5", "0.95"}
            assert out["values"][name] == pytest.approx(s["point"])  # the point imputation fills the hole
            assert s["mean"] > 0 and s["quantiles"]["0.05"] > 0  # every numeric column is positive
    # Original units, not standardised codes: plausible adult ages, BMIs and cholesterol levels.
    imputed = body["rows"][1]["imputed"]
    assert 18 < imputed["age"]["mean"] < 90
    assert 15 < imputed["bmi"]["mean"] < 45
    assert 100 < imputed["total_cholesterol"]["mean"] < 320


def test_impute_custom_quantiles_and_samples(c: httpx.Client) -> None:
    body = rows_body({"age": 40}, quantiles=[0.9, 0.1, 0.25], return_samples=True)
    out = c.post(IMPUTE, json=body).json()["rows"][0]["imputed"]
    assert set(out["bmi"]["quantiles"]) == {"0.1", "0.25", "0.9"} and ordered(out["bmi"]["quantiles"])
    assert len(out["bmi"]["samples"]) >= SAMPLES and all(v > 0 for v in out["bmi"]["samples"])
    assert set(out["sex"]["samples"]) <= {1, 2}


def test_predict(any_svc: Service) -> None:
    r = any_svc.client().post(PREDICT, json={"rows": [ROW, {}], "samples": SAMPLES, "seed": 3})
    assert r.status_code == 200, r.text
    rows = r.json()["rows"]
    assert len(rows) == 2
    for row in rows:
        t = row["targets"][TARGET]
        assert t["mean"] > 0 and t["std"] > 0 and ordered(t["quantiles"])
        assert t["quantiles"]["0.05"] <= t["mean"] <= t["quantiles"]["0.95"]
        assert t["probabilities"] is None


def test_next_features_ranking(any_svc: Service) -> None:
    c = any_svc.client()
    r = c.post(NEXT, json=next_body(ROW))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["target"] == TARGET and body["method"] == "mixture"
    ranking = body["ranking"]
    assert {x["feature"] for x in ranking} == set(FEATURES) - set(ROW)
    gains = [x["gain"] for x in ranking]
    assert gains == sorted(gains, reverse=True) and all(g >= 0 for g in gains)
    assert body["prediction"]["mean"] > 0 and ordered(body["prediction"]["quantiles"])
    assert body["uncertainty"] == pytest.approx(body["prediction"]["std"])
    assert isinstance(body["stop"]["stop"], bool) and body["stop"]["reason"]


def test_next_features_costs_top_k_candidates(c: httpx.Client) -> None:
    costs = {"ldl": 5, "hdl": 2}
    body = c.post(NEXT, json=next_body(ROW, costs=costs)).json()
    for x in body["ranking"]:
        assert x["cost"] == costs.get(x["feature"], 1.0)
        assert x["gain_per_cost"] == pytest.approx(x["gain"] / x["cost"])
    per_cost = [x["gain_per_cost"] for x in body["ranking"]]
    assert per_cost == sorted(per_cost, reverse=True)

    top = c.post(NEXT, json=next_body(ROW, costs=costs, top_k=3)).json()["ranking"]
    assert [x["feature"] for x in top] == [x["feature"] for x in body["ranking"][:3]]

    chosen = c.post(NEXT, json=next_body(ROW, candidates=["ldl", "hdl"])).json()["ranking"]
    assert sorted(x["feature"] for x in chosen) == ["hdl", "ldl"]

    hist = c.post(NEXT, json=next_body(ROW, method="histogram", top_k=2))
    assert hist.status_code == 200 and hist.json()["method"] == "histogram" and len(hist.json()["ranking"]) == 2


@pytest.mark.parametrize("path,make", [(IMPUTE, rows_body), (PREDICT, rows_body), (NEXT, next_body)])
def test_seed_reproducibility(c: httpx.Client, path: str, make) -> None:
    first = c.post(path, json=make(ROW, seed=7)).json()
    assert c.post(path, json=make(ROW, seed=7)).json() == first
    assert c.post(path, json=make(ROW, seed=8)).json() != first


def test_version_query_parameter(c: httpx.Client) -> None:
    assert c.post(PREDICT, params={"version": 1}, json=rows_body(ROW)).json()["version"] == 1
    body = problem(c.post(PREDICT, params={"version": 0}, json=rows_body(ROW)), 422, "version")
    assert body["errors"][0]["in"] == "query"
    problem(c.post(PREDICT, params={"version": "x"}, json=rows_body(ROW)), 422, "version")


# --------------------------------------------------------------------------------------------------------- errors

BAD_CELLS = [
    ({"foo": 1.0}, "foo", "unknown feature"),
    ({"age": "old"}, "age", "expected a number"),
    ({"bmi": True}, "bmi", "got bool"),
    ({"bmi": "NA"}, "bmi", "expected a number"),  # in JSON only null means missing
    ({"sex": 7}, "sex", "unknown category 7"),
    ({"bmi": -3}, "bmi", "negative"),
]


@pytest.mark.parametrize("cell,name,why", BAD_CELLS, ids=[b[1] + ":" + b[2] for b in BAD_CELLS])
@pytest.mark.parametrize("path", [IMPUTE, PREDICT, NEXT], ids=["impute", "predict", "next"])
def test_bad_cells_are_422_naming_the_cell(c: httpx.Client, path: str, cell: dict, name: str, why: str) -> None:
    if path == NEXT:
        field = f"row.{name}"
        body = next_body({"age": 50, **cell})
    else:
        field = f"rows.1.{name}"  # the second row: the index is the row's
        body = {"rows": [{"age": 50}, {"age": 51, **cell}], "samples": SAMPLES}
    assert why in reason(problem(c.post(path, json=body), 422, field), field)


def test_a_category_label_stands_for_its_code(c: httpx.Client) -> None:
    by_code, by_label = ({"rows": [{"age": 50, "sex": sex}], "samples": SAMPLES, "seed": 0} for sex in (2, "group 2"))
    coded, labelled = (c.post(PREDICT, json=body) for body in (by_code, by_label))
    assert coded.status_code == labelled.status_code == 200, labelled.text
    assert labelled.json()["rows"] == coded.json()["rows"]  # the same answer, to the last digit
    body = problem(c.post(PREDICT, json={"rows": [{"sex": "group 3"}]}), 422, "rows.0.sex")
    assert "'group 1', 'group 2'" in reason(body, "rows.0.sex")
    problem(c.post(PREDICT, json={"rows": [{"sex": "2"}]}), 422, "rows.0.sex")  # a code is a number, not text


def test_predict_refuses_the_target_inside_a_row_and_impute_takes_it(c: httpx.Client) -> None:
    """Issue #22, 6: /predict answered from a row holding the target (its own value back); sessions refused it."""
    row = {"age": 50, "bmi": 31.0, TARGET: 150.0}
    field = f"rows.1.{TARGET}"
    why = reason(problem(c.post(PREDICT, json={"rows": [{"age": 50}, row], "samples": SAMPLES}), 422, field), field)
    assert why == "is the model's target: predict answers it, a row cannot give it (impute takes it)"
    unknown = c.post(PREDICT, json={"rows": [{"age": 50, TARGET: None}], "samples": SAMPLES})
    assert unknown.status_code == 200, unknown.text  # null: not known, as everywhere
    r = c.post(IMPUTE, json={"rows": [row], "samples": SAMPLES})  # features given a known target: the point of it
    assert r.status_code == 200, r.text


def test_every_bad_cell_is_reported_at_once(c: httpx.Client) -> None:
    row = {"foo": 1, "age": "old", "sex": 7, "bmi": -3, "ldl": 100}
    body = problem(c.post(IMPUTE, json=rows_body(row)), 422)
    assert sorted(e["field"] for e in body["errors"]) == ["rows.0.age", "rows.0.bmi", "rows.0.foo", "rows.0.sex"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("path", [IMPUTE, PREDICT, NEXT], ids=["impute", "predict", "next"])
def test_nan_and_infinity_in_raw_json_are_422(c: httpx.Client, path: str, token: str) -> None:
    key, field = ("row", "row.bmi") if path == NEXT else ("rows", "rows.0.bmi")
    cell = '{"bmi": ' + token + "}"
    raw = f'{{"{key}": {cell if path == NEXT else "[" + cell + "]"}, "samples": {SAMPLES}}}'
    r = c.post(path, content=raw.encode(), headers={"content-type": "application/json"})
    assert "not allowed" in reason(problem(r, 422, field), field)


def test_request_shape_errors(c: httpx.Client) -> None:
    limit = 8  # MAIN_LIMITS
    assert "at most 8 rows" in reason(
        problem(c.post(IMPUTE, json={"rows": [ROW] * (limit + 1), "samples": SAMPLES}), 422, "rows"), "rows"
    )
    assert c.post(IMPUTE, json={"rows": [ROW] * limit, "samples": SAMPLES}).status_code == 200
    assert "at most 64 samples" in reason(problem(c.post(PREDICT, json=rows_body(ROW, samples=65)), 422), "samples")
    problem(c.post(NEXT, json=next_body(ROW, samples=65)), 422, "samples")
    problem(c.post(PREDICT, json=rows_body(ROW, samples=1)), 422, "samples")
    problem(c.post(PREDICT, json=rows_body(ROW, seed=-1)), 422, "seed")
    assert "Extra inputs" in reason(problem(c.post(PREDICT, json=rows_body(ROW, colour="red")), 422), "colour")
    problem(c.post(PREDICT, json={"rows": []}), 422, "rows")
    problem(c.post(PREDICT, json={"rows": [1]}), 422, "rows.0")
    problem(c.post(PREDICT, json={"row": ROW}), 422, "rows", "row")
    assert "in (0, 1)" in reason(problem(c.post(PREDICT, json=rows_body(ROW, quantiles=[1.5])), 422), "quantiles")
    nested = problem(c.post(PREDICT, json=rows_body({"bmi": [1, 2]})), 422)
    assert all(e["field"].startswith("rows.0.bmi") for e in nested["errors"])


def test_malformed_bodies(c: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    body = problem(c.post(IMPUTE, content=b'{"rows": [{"bmi": 3}', headers=headers), 422, "body")
    assert reason(body, "body").startswith("invalid JSON")
    assert "required" in reason(problem(c.post(IMPUTE, content=b"", headers=headers), 422, "body"), "body")
    problem(c.post(IMPUTE, content=b"[1, 2]", headers=headers), 422)
    problem(c.post(IMPUTE, content=b"rows=1", headers={"content-type": "text/plain"}), 422)
    not_utf8 = b'{"rows": [{"bmi": "x"}]}'.replace(b"x", bytes([0xFF]))
    problem(c.post(IMPUTE, content=not_utf8, headers=headers), 400)
    problem(c.post(NEXT, json=next_body(ROW, costs={"ldl": -1})), 422, "costs.ldl")
    problem(c.post(NEXT, json=next_body(ROW, costs={"nope": 1})), 422, "costs.nope")
    problem(c.post(NEXT, json=next_body(ROW, candidates=["nope"])), 422, "candidates.nope")
    problem(c.post(NEXT, json=next_body(ROW, candidates=["age"])), 422, "candidates.age")  # already observed
    problem(c.post(NEXT, json=next_body(ROW, target="nope")), 422, "target")
    problem(c.post(NEXT, json=next_body(ROW, top_k=0)), 422, "top_k")
    problem(c.post(NEXT, json=next_body(ROW, method="magic")), 422, "method")


def test_body_too_large_is_413(svc: Service, c: httpx.Client) -> None:
    limit = svc.settings.max_body_bytes
    status, headers, raw = declared_length_request(svc.url, IMPUTE, limit + 1)  # refused on Content-Length alone
    assert status == 413 and headers["content-type"].startswith("application/problem+json")
    body = json.loads(raw)
    assert body["status"] == 413 and body["limit_bytes"] == limit and "exceeds the limit" in body["detail"]
    with fresh(svc) as c2:  # a real body just over the limit
        padded = json.dumps(rows_body(ROW)) + " " * limit
        problem(c2.post(IMPUTE, content=padded.encode(), headers={"content-type": "application/json"}), 413)
    assert c.post(IMPUTE, json=rows_body(ROW)).status_code == 200  # the service is fine afterwards


def test_unknown_route_and_method_are_problems(c: httpx.Client) -> None:
    assert "no endpoint" in problem(c.get("/v1/nothing"), 404)["detail"]
    body = problem(c.get(IMPUTE), 405)
    assert "POST" in body["detail"]
    r = c.get("/v1/models/nope", headers={"X-Request-ID": "my-request-1"})
    assert r.headers["x-request-id"] == "my-request-1" and r.json()["request_id"] == "my-request-1"


def test_docs_and_openapi(c: httpx.Client) -> None:
    spec = c.get("/openapi.json").json()
    assert {"/v1/models/{name}/impute", "/v1/sessions", "/v1/batch-jobs"} <= set(spec["paths"])
    assert c.get("/docs").status_code == 200


def test_problem_detail_names_the_same_field_as_errors(c: httpx.Client) -> None:
    body = problem(c.post(NEXT, json=next_body({"bmi": -3})), 422, "row.bmi")
    assert body["detail"].startswith("row.bmi:"), body["detail"]


@pytest.mark.parametrize("row", [{"triglycerides": 1e308}, {"age": 1e300}], ids=["null-summaries", "negative"])
def test_absurd_magnitudes_are_refused_or_stay_in_support(c: httpx.Client, row: dict) -> None:
    r = c.post(PREDICT, json=rows_body(row))
    if r.status_code == 422:
        return
    t = r.json()["rows"][0]["targets"][TARGET]
    assert t["mean"] is not None and t["mean"] >= 0 and t["quantiles"]["0.05"] >= 0, t
