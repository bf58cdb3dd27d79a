"""Issue #11 over real HTTP (PostgreSQL + Redis): each request that used to answer 500, and each that could take the
service down, answered for what it is. One test per case of the issue (docs/reliability.md lists them)."""

from __future__ import annotations

import gzip
import json
import re
import socket
import time

import httpx
import pytest

from hhvaem.model.io.artifact import manifest_text
from tests.app.service import MODEL, ROW, SAMPLES, Service, http_client, problem, reason

PREDICT = f"/v1/models/{MODEL}/predict"
IMPUTE = f"/v1/models/{MODEL}/impute"
NEXT = f"/v1/models/{MODEL}/next-features"
JOBS = "/v1/batch-jobs"
BIG = "9" * 400


def raw_json(c: httpx.Client, path: str, text: str, method: str = "POST") -> httpx.Response:
    """A body sent as written (Python's JSON encoder would not write `Infinity` or a lone surrogate escape)."""
    return c.request(method, path, content=text.encode(), headers={"content-type": "application/json"})


def session(c: httpx.Client) -> str:
    r = c.post("/v1/sessions", json={"model": MODEL, "observations": {"age": 50}})
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


# ---------------------------------------------------------------------------------------------- no 500: numbers


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (PREDICT, '{"rows": [{"age": %s}]}', "rows.0.age"),
        (IMPUTE, '{"rows": [{"age": 50}, {"bmi": -%s}]}', "rows.1.bmi"),
        (NEXT, '{"row": {"age": %s}}', "row.age"),
        ("/v1/sessions", '{"model": "diabetes", "observations": {"age": %s}}', "observations.age"),
    ],
    ids=["predict", "impute", "next-features", "session"],
)
def test_a_400_digit_integer_is_a_422(c: httpx.Client, path: str, body: str, field: str) -> None:
    r = raw_json(c, path, body % BIG)
    assert "too large to be a number" in reason(problem(r, 422, field), field)


def test_a_400_digit_integer_in_an_observation_is_a_422(c: httpx.Client) -> None:
    sid = session(c)
    r = raw_json(c, f"/v1/sessions/{sid}/observations", '{"observations": {"bmi": BIG}}'.replace("BIG", BIG))
    problem(r, 422, "observations.bmi")
    assert c.get(f"/v1/sessions/{sid}").json()["current"] == {"age": 50}  # nothing stored


def test_a_400_digit_integer_in_a_batch_csv_rejects_that_row_only(svc: Service, c: httpx.Client) -> None:
    from tests.app.api.test_api_batch import upload, wait

    r = upload(c, "big.csv", f"age,bmi\n{BIG},30\n50,31\n".encode(), operation="predict")
    assert r.status_code == 202, r.text
    job, _ = wait(c, r.json()["id"])
    assert job["status"] == "succeeded" and job["failed_rows"] == 1, job
    assert job["errors"][0]["row"] == 1 and job["errors"][0]["column"] == "age"
    # Before: a 500, and a job left `queued` for ever. No job may be left unfinished by an upload.
    with svc.db() as s:
        from hhvaem.app.db import repository as repo

        assert not [j for j in repo.list_batch_jobs(s, status="queued") if j.total_rows is None]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (NEXT, '{"row": {"age": 50}, "max_uncertainty": Infinity}', "max_uncertainty"),
        (NEXT, '{"row": {"age": 50}, "min_gain": Infinity}', "min_gain"),
        (NEXT, '{"row": {"age": 50}, "costs": {"bmi": -Infinity}}', "costs.bmi"),
        (PREDICT, '{"rows": [{"age": 50}], "quantiles": [NaN]}', "quantiles.0"),
    ],
    ids=["max_uncertainty", "min_gain", "costs", "quantiles"],
)
def test_infinity_and_nan_in_the_body_are_a_422(c: httpx.Client, path: str, body: str, field: str) -> None:
    assert "finite" in reason(problem(raw_json(c, path, body), 422, field), field)


@pytest.mark.parametrize("value", ["inf", "Infinity", "nan", "-inf"])
def test_infinity_in_the_query_is_a_422(c: httpx.Client, value: str) -> None:
    sid = session(c)
    r = c.get(f"/v1/sessions/{sid}/next-features", params={"max_uncertainty": value, "samples": SAMPLES})
    problem(r, 422, "max_uncertainty")
    problem(c.get(f"/v1/sessions/{sid}/next-features", params={"min_gain": value}), 422, "min_gain")


# ------------------------------------------------------------------------------------------ no 500: names echoed


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (PREDICT, '{"rows": [{"\\ud800": 1}]}', "rows.0.\ud800"),
        (NEXT, '{"row": {"age": 50}, "candidates": ["\\udfff"]}', "candidates.\udfff"),
        (NEXT, '{"row": {"age": 50}, "costs": {"\\ud800x": 2}}', "costs.\ud800x"),
        (NEXT, '{"row": {"age": 50}, "target": "\\ud800"}', "target"),
        ("/v1/sessions", '{"model": "diabetes", "observations": {"\\ud800": 1}}', "observations.\ud800"),
    ],
    ids=["rows", "candidates", "costs", "target", "observations"],
)
def test_a_lone_surrogate_in_a_name_is_echoed_safely(c: httpx.Client, path: str, body: str, field: str) -> None:
    r = raw_json(c, path, body)
    assert r.content.isascii()  # escaped in the JSON text, which any client decodes
    problem(r, 422, field)


def test_a_lone_surrogate_in_a_model_name_is_a_404(c: httpx.Client) -> None:
    problem(c.post("/v1/models/%ED%A0%80/predict", json={"rows": [ROW]}), 404)
    problem(raw_json(c, "/v1/sessions", '{"model": "\\ud800"}'), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/models/a%00b/predict"),
        ("GET", "/v1/models/a%00b"),
        ("POST", "/v1/models/a%00b/versions/1/activate"),
        ("GET", f"{JOBS}/a%00b"),
        ("GET", f"{JOBS}/a%00b/result"),
        ("POST", f"{JOBS}/a%00b/cancel"),
        ("GET", "/v1/sessions/a%00b"),
    ],
)
def test_a_nul_byte_in_a_name_or_id_is_a_404(c: httpx.Client, method: str, path: str) -> None:
    body = {"rows": [ROW]} if "predict" in path else None
    problem(c.request(method, path, json=body), 404)


def test_a_nul_byte_in_a_batch_form_field_is_a_422(c: httpx.Client) -> None:
    files = {"file": ("t.csv", b"age\n50\n")}
    problem(c.post(JOBS, files=files, data={"model": "a\0b"}), 422, "model")
    r = c.post(JOBS, files={"file": ("a\0b\n.csv", b"age\n50\n")}, data={"model": MODEL, "samples": str(SAMPLES)})
    assert r.status_code == 202, r.text  # the file name is the client's: made printable, never trusted


# ----------------------------------------------------------------------------------- no 500: admin registration


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("schema"), "`schema` must be a JSON object"),
        (lambda m: m.update(files=["model.pt"]), "`files` must be a JSON object"),
        (lambda m: m.update(name="a\0b"), "is not usable"),
        (lambda m: m.update(name="a/b"), "is not usable"),
        (lambda m: m.update(name="a\nINFO forged"), "is not usable"),
        (lambda m: m.update(name="x" * 201), "is not usable"),
    ],
    ids=["no-schema", "files-list", "nul", "slash", "newline", "long"],
)
def test_registering_a_bad_manifest_is_a_422(svc: Service, c: httpx.Client, tmp_path, edit, message: str) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(svc.artifact, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    edit(manifest)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert message in reason(problem(c.post("/v1/models", json={"path": str(bad)}), 422, "path"), "path")
    assert "\nINFO forged" not in svc.logs.text


def test_a_manifest_that_disagrees_with_its_graph_is_refused_at_registration(svc, c: httpx.Client, tmp_path) -> None:
    import shutil

    before = c.get("/v1/models").json()
    bad = tmp_path / "steps"
    shutil.copytree(svc.artifact, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["sampler"]["hmc_steps"] += 2  # before: registered, then every inference a 500
    (bad / "manifest.json").write_text(manifest_text(manifest))  # sealed: refused for what it says
    why = reason(problem(c.post("/v1/models", json={"path": str(bad)}), 422, "path"), "path")
    assert "steps" in why
    assert c.get("/v1/models").json() == before  # nothing registered


# ---------------------------------------------------------------------------------------- no 500: the connection


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, bytes]:
    """Sends one HTTP/1.1 request on `sock`; (status, body) of the answer, read to its Content-Length."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def test_after_a_500_the_connection_stays_usable(svc: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken():
        raise RuntimeError("a bug")

    monkeypatch.setattr(svc.state.registry, "records", broken)
    host, port = svc.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        status, body = _exchange(sock, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 500 and b"Quote request id" in body and b"a bug" not in body
        status, body = _exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # same connection
        assert status == 200 and json.loads(body) == {"status": "ok"}


# ------------------------------------------------------------------------------------------------ resource limits


def test_work_is_bounded_by_the_product_of_its_factors(svc: Service, c: httpx.Client) -> None:
    limit = svc.settings.max_work
    rows = [ROW] * svc.settings.max_rows  # each factor within its own limit...
    body = problem(c.post(PREDICT, json={"rows": rows, "samples": svc.settings.max_samples}), 422, "rows", "samples")
    assert f"at most {limit:,} per request" in reason(body, "rows") and "batch job" in body["detail"]
    big = {"row": {"age": 50}, "samples": svc.settings.max_samples}  # 64 samples x 9 candidates
    problem(c.post(NEXT, json=big), 422, "samples", "candidates")
    sid = session(c)
    r = c.get(f"/v1/sessions/{sid}/next-features", params={"samples": svc.settings.max_samples})
    problem(r, 422, "samples", "candidates")
    # ...and what fits passes.
    assert c.post(PREDICT, json={"rows": rows, "samples": SAMPLES}).status_code == 200
    r = c.post(NEXT, json={"row": ROW, "samples": svc.settings.max_samples, "candidates": ["ldl"]})
    assert r.status_code == 200, r.text


def test_a_problem_lists_at_most_50_errors_then_counts_the_rest(c: httpx.Client) -> None:
    row = {f"k{i}": 1 for i in range(3000)}  # 3000 unknown features: before, an error body 300x the request
    started = time.monotonic()
    r = c.post(PREDICT, json={"rows": [row]})
    body = problem(r, 422)
    assert len(body["errors"]) == 50 and body["errors_not_listed"] == 2950
    assert len(r.content) < 20_000 and time.monotonic() - started < 5


def test_echoed_names_are_clipped(c: httpx.Client) -> None:
    long = "x" * 20_000
    body = problem(c.post(PREDICT, json={"rows": [{long: 1}]}), 422)
    assert len(body["errors"][0]["field"]) <= 200 and len(json.dumps(body)) < 5_000


def test_metrics_labels_stay_bounded_whatever_the_method(svc: Service) -> None:
    with http_client(svc.url) as c:
        for i in range(20):
            c.request(f"BREW{i}", "/healthz")
            c.get(f"/no/such/route/{i}")
        text = c.get("/metrics").text
    methods = set(re.findall(r'hhvaem_http_requests_total\{method="([^"]+)"', text))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}, methods
    assert 'method="OTHER"' in text and "BREW" not in text and "/no/such/route" not in text


def _chunks(total: int, size: int = 4096):
    for _ in range(total // size + 1):
        yield b" " * size


def test_a_chunked_body_over_the_limit_is_a_413(svc: Service) -> None:
    limit = svc.settings.max_body_bytes
    with http_client(svc.url) as c:  # no Content-Length: the body streams (Transfer-Encoding: chunked)
        r = c.post(PREDICT, content=_chunks(limit + 10_000), headers={"content-type": "application/json"})
    assert "exceeds the limit" in problem(r, 413)["detail"]


def test_a_chunked_upload_over_the_limit_is_a_413(svc: Service) -> None:
    def multipart():
        yield b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ndiabetes\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.csv"\r\n\r\nage\n'
        for _ in range(svc.settings.max_upload_bytes // 4096 + 2):
            yield b"50\n" * 1365
        yield b"\r\n--b--\r\n"

    with http_client(svc.url) as c:
        try:
            r = c.post(JOBS, content=multipart(), headers={"content-type": "multipart/form-data; boundary=b"})
        except httpx.TransportError:  # the server may answer and close before the client has sent everything
            return
    assert "upload exceeds the limit" in problem(r, 413)["detail"]


def test_credentials_in_the_query_string_never_reach_the_log(svc: Service, c: httpx.Client) -> None:
    secret = "hhv_" + "S" * 43
    for path in ("/v1/models", "/healthz", "/no/such/route", PREDICT):
        c.get(path, params={"api_key": secret, "token": "plain-secret-token"})
    time.sleep(0.2)  # the access log line is written after the response
    text = svc.logs.text
    assert "api_key=***" in text  # the capture sees the access log
    assert secret not in text and "SSSSSSSS" not in text and "plain-secret-token" not in text


def test_a_decompression_bomb_is_refused(svc: Service, c: httpx.Client) -> None:
    from tests.app.api.test_api_batch import upload

    bomb = gzip.compress(b"age,notes\n" + (b"50," + b"x" * 1000 + b"\n") * 3000)  # 3 MB of CSV in a few KB
    assert len(bomb) < svc.settings.max_upload_bytes < 3_000_000
    why = reason(problem(upload(c, "bomb.csv.gz", bomb), 422, "file"), "file")
    assert "bomb.csv.gz: larger than 1 MiB once decompressed" in why


def test_a_table_with_too_many_rows_is_refused(svc: Service, c: httpx.Client) -> None:
    from tests.app.api.test_api_batch import upload

    rows = svc.settings.max_job_rows + 1
    why = reason(problem(upload(c, "many.csv", b"age\n" + b"50\n" * rows), 422, "file"), "file")
    assert f"more than {svc.settings.max_job_rows:,} data rows" in why


@pytest.mark.parametrize("value", [True, "2", " 2.0 "], ids=["boolean", "text", "padded-text"])
def test_text_or_a_boolean_for_a_number_coded_category_is_a_422(c: httpx.Client, value) -> None:
    """Issue #22, 6: `"sex": true` matched the category 1 and `"2"` the category 2, and came back raw."""
    for path, body, field in (
        (f"/v1/models/{MODEL}/impute", {"rows": [{"sex": value}]}, "rows.0.sex"),
        (f"/v1/models/{MODEL}/predict", {"rows": [{"sex": value}]}, "rows.0.sex"),
    ):
        why = reason(problem(c.post(path, json=body), 422), field)
        assert "expected one of the category numbers" in why, why
    assert c.post(f"/v1/models/{MODEL}/impute", json={"rows": [{"sex": 2}]}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [f"/v1/models/{MODEL}/impute", f"/v1/models/{MODEL}/predict"],
)
def test_a_member_given_twice_is_a_422(c: httpx.Client, path: str) -> None:
    """Issue #22, 6: `{"age": 50, "age": 60}` silently took the last value."""
    body = problem(c.post(path, content=b'{"rows": [{"age": 50, "age": 60}]}',
                          headers={"content-type": "application/json"}), 422)  # fmt: skip
    assert "'age' is given more than once" in reason(body, "body")
    twice = b'{"inputs": [], "inputs": [{"name": "features", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}'
    r = c.post(f"/v2/models/{MODEL}/infer", content=twice)
    assert r.status_code == 400 and "'inputs' is given more than once" in r.json()["error"]
