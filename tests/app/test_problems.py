"""Problem details: every error of a FastAPI app rendered as application/problem+json, and the body size limit."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Query, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field

from hhvaem.app.api.problems import (
    PROBLEM_MEDIA_TYPE,
    BodySizeLimit,
    Problem,
    ProblemModel,
    field_error,
    forbidden,
    install_problem_handlers,
    not_found,
    payload_too_large,
    problem_responses,
    unauthorized,
    unavailable,
    unprocessable,
)
from hhvaem.app.sessions.store import SessionNotFound, StoreUnavailable

LIMIT = 1000
UPLOAD_LIMIT = 5000


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    age: float = Field(ge=0)
    sex: str | None = None


class Rows(BaseModel):
    rows: list[Row]
    samples: int = 100


def make_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=LIMIT, upload_max_bytes=UPLOAD_LIMIT, upload_paths=["/v1/batch-jobs"])

    @app.post("/rows", responses=problem_responses(413, 422))
    def rows(body: Rows) -> dict:
        return {"n": len(body.rows)}

    @app.get("/items/{item_id}")
    def item(item_id: int, top_k: int = Query(5, ge=1)) -> dict:
        return {"id": item_id, "top_k": top_k}

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("secret-token-xyz in the exception text")

    @app.get("/missing-model")
    def missing() -> dict:
        raise not_found("model", "nope")

    @app.get("/bad-feature")
    def bad_feature() -> dict:
        raise unprocessable([field_error("rows.0.colour", "unknown category 'mauve'; expected one of: red, blue")])

    @app.get("/down")
    def down() -> dict:
        raise unavailable("The model is loading.", retry_after=7)

    @app.get("/no-key")
    def no_key() -> dict:
        raise unauthorized()

    @app.get("/no-right")
    def no_right() -> dict:
        raise forbidden()

    @app.get("/custom")
    def custom() -> dict:
        raise Problem(409, "Conflict", "Already running.", "job-conflict", job_id="j1")

    @app.get("/session")
    async def session() -> dict:
        raise SessionNotFound("abc")

    @app.get("/store")
    async def store() -> dict:
        raise StoreUnavailable("Redis at 10.0.0.5:6379 is unreachable: refused")

    @app.post("/v1/batch-jobs")
    async def upload(request: Request) -> dict:
        return {"n": len(await request.body())}

    @app.post("/stream")
    async def stream(request: Request) -> dict:
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
        return {"n": n}

    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        yield c


def assert_problem(response, status: int, type_: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert body["type"].startswith("/problems/")
    if type_ is not None:
        assert body["type"] == f"/problems/{type_}"
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_ok_requests_pass(client: TestClient) -> None:
    assert client.post("/rows", json={"rows": [{"age": 3}]}).json() == {"n": 1}
    assert client.get("/items/3?top_k=2").json() == {"id": 3, "top_k": 2}


def test_validation_error_names_each_field(client: TestClient) -> None:
    r = client.post("/rows", json={"rows": [{"age": 3}, {"age": "old"}, {"age": -1, "colour": "red"}], "samples": "x"})
    body = assert_problem(r, 422, "validation-error")
    assert body["title"] == "Unprocessable Content"
    assert body["instance"] == "/rows"
    fields = {e["field"]: e["reason"] for e in body["errors"]}
    assert set(fields) == {"rows.1.age", "rows.2.age", "rows.2.colour", "samples"}
    assert "number" in fields["rows.1.age"]
    assert "greater than or equal to 0" in fields["rows.2.age"]
    assert "not permitted" in fields["rows.2.colour"]
    assert "rows.1.age" in body["detail"]
    assert all("in" not in e for e in body["errors"])


def test_validation_error_missing_field_and_query(client: TestClient) -> None:
    body = assert_problem(client.post("/rows", json={"rows": [{}]}), 422)
    assert body["errors"] == [{"field": "rows.0.age", "reason": "required"}]
    body = assert_problem(client.get("/items/abc?top_k=0"), 422)
    assert {(e["field"], e["in"]) for e in body["errors"]} == {("item_id", "path"), ("top_k", "query")}


def test_invalid_json_and_missing_body(client: TestClient) -> None:
    r = client.post("/rows", content=b'{"rows": [', headers={"content-type": "application/json"})
    body = assert_problem(r, 422)
    assert body["errors"][0]["field"] == "body"
    assert body["errors"][0]["reason"].startswith("invalid JSON")
    body = assert_problem(client.post("/rows"), 422)
    assert body["errors"] == [{"field": "body", "reason": "a JSON request body is required"}]


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    body = assert_problem(client.get("/nowhere"), 404, "not-found")
    assert body["detail"] == "There is no endpoint at /nowhere."
    r = client.delete("/rows")
    body = assert_problem(r, 405, "method-not-allowed")
    assert "POST" in r.headers["allow"]
    assert "DELETE is not allowed on /rows" in body["detail"]


def test_unhandled_exception_is_a_bare_500(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="hhvaem.app.api.problems"):
        r = client.get("/boom", headers={"X-Request-ID": "req-42"})
    body = assert_problem(r, 500, "internal-error")
    assert body["request_id"] == "req-42"
    assert "req-42" in body["detail"]
    assert "secret-token-xyz" not in r.text and "RuntimeError" not in r.text and "Traceback" not in r.text
    logged = [rec for rec in caplog.records if "req-42" in rec.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback stays on the server


def test_unsafe_request_id_is_replaced(client: TestClient) -> None:
    r = client.get("/nowhere", headers={"X-Request-ID": "bad id\twith junk" + "x" * 200})
    body = assert_problem(r, 404)
    assert len(body["request_id"]) == 32 and body["request_id"].isalnum()


def test_helpers(client: TestClient) -> None:
    body = assert_problem(client.get("/missing-model"), 404, "model-not-found")
    assert body["title"] == "Model not found" and body["resource"] == "model" and body["id"] == "nope"
    body = assert_problem(client.get("/bad-feature"), 422, "validation-error")
    assert body["errors"] == [
        {"field": "rows.0.colour", "reason": "unknown category 'mauve'; expected one of: red, blue"}
    ]
    r = client.get("/down")
    body = assert_problem(r, 503, "service-unavailable")
    assert r.headers["retry-after"] == "7" and body["detail"] == "The model is loading."
    r = client.get("/no-key")
    assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert_problem(client.get("/no-right"), 403, "forbidden")
    body = assert_problem(client.get("/custom"), 409, "job-conflict")
    assert body["job_id"] == "j1" and body["detail"] == "Already running."


def test_store_errors(client: TestClient) -> None:
    body = assert_problem(client.get("/session"), 404, "session-not-found")
    assert body["id"] == "abc"
    r = client.get("/store")
    assert_problem(r, 503, "service-unavailable")
    assert "10.0.0.5" not in r.text and "retry-after" in r.headers


def test_problem_members() -> None:
    p = payload_too_large(2 * 1024 * 1024)
    assert p.to_dict()["detail"] == "The request body exceeds the limit of 2097152 bytes (2 MiB)."
    assert p.to_dict()["limit_bytes"] == 2 * 1024 * 1024
    assert Problem(418).to_dict() == {"type": "/problems/i-m-a-teapot", "title": "I'm a Teapot", "status": 418}
    assert Problem(400, "Bad", type="https://example.org/p").to_dict()["type"] == "https://example.org/p"
    with pytest.raises(ValueError, match="instance"):
        Problem(400, instance="/x")


def test_openapi_documents_problems() -> None:
    schema = make_app().openapi()
    responses = schema["paths"]["/rows"]["post"]["responses"]
    for status in ("413", "422"):
        assert responses[status]["content"] == {
            PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemModel"}}
        }
    # FastAPI's automatic 422 (on a route that did not ask for problem_responses) is described as a problem too.
    item = schema["paths"]["/items/{item_id}"]["get"]["responses"]["422"]
    assert list(item["content"]) == [PROBLEM_MEDIA_TYPE]
    components = schema["components"]["schemas"]
    assert "ProblemModel" in components and "FieldErrorModel" in components
    assert "HTTPValidationError" not in components
    assert "#/components/schemas/FieldErrorModel" in json.dumps(components["ProblemModel"])
    ProblemModel.model_validate(ProblemModel.model_config["json_schema_extra"]["example"])


# -------------------------------------------------------------------------------------------- body size limit


def test_413_by_content_length(client: TestClient) -> None:
    big = json.dumps({"rows": [{"age": 1}] * 200}).encode()
    assert len(big) > LIMIT
    r = client.post("/rows", content=big, headers={"content-type": "application/json"})
    body = assert_problem(r, 413, "content-too-large")
    assert body["limit_bytes"] == LIMIT
    assert "1000 bytes" in body["detail"]


def test_upload_paths_have_their_own_limit(client: TestClient) -> None:
    assert client.post("/v1/batch-jobs", content=b"x" * 3000).json() == {"n": 3000}
    body = assert_problem(client.post("/v1/batch-jobs", content=b"x" * 6000), 413)
    assert body["limit_bytes"] == UPLOAD_LIMIT
    assert_problem(client.post("/stream", content=b"x" * 3000), 413)


def chunks(n: int, size: int = 256) -> Iterator[bytes]:
    for _ in range(n):
        yield b"x" * size


def test_413_for_streamed_body_without_content_length(client: TestClient) -> None:
    # A generator body goes out chunked, without Content-Length: the limit is enforced as the body streams.
    r = client.post("/stream", content=chunks(2))
    assert r.json() == {"n": 512}
    r = client.post("/stream", content=chunks(8))
    body = assert_problem(r, 413, "content-too-large")
    assert body["limit_bytes"] == LIMIT
    # ...also when FastAPI itself reads the body to parse JSON.
    r = client.post("/rows", content=chunks(8), headers={"content-type": "application/json"})
    assert_problem(r, 413, "content-too-large")


def test_middleware_alone_renders_413() -> None:
    """Around a bare ASGI app (no FastAPI handlers) the middleware itself answers 413 problems."""
    calls: list[str] = []

    async def echo(scope, receive, send) -> None:
        calls.append(scope["path"])
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})

    c = TestClient(BodySizeLimit(echo, max_bytes=100))  # not entered: echo has no lifespan
    assert c.post("/a", content=b"y" * 100).text == "100"
    r = c.post("/a", content=b"y" * 101)
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert calls == ["/a"]  # refused by Content-Length before the app ran
    r = c.post("/b", content=chunks(3, 50))
    assert r.status_code == 413 and r.json()["limit_bytes"] == 100


def test_middleware_counts_many_chunks() -> None:
    """Drive the middleware directly with a body in many ASGI messages: the read that crosses the limit fails."""
    import asyncio

    sent: list[dict] = []
    chunks_read: list[int] = []
    pending = [{"type": "http.request", "body": b"z" * 40, "more_body": True} for _ in range(5)]
    pending.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict:
        return pending.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope, receive, send) -> None:
        while True:
            message = await receive()
            chunks_read.append(len(message["body"]))
            if not message.get("more_body"):
                break
        raise AssertionError("the whole body was read")

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "http_version": "1.1", "query_string": b""}
    asyncio.run(BodySizeLimit(app, max_bytes=100)(scope, receive, send))
    assert chunks_read == [40, 40]  # the third chunk would make 120 > 100
    assert sent[0]["status"] == 413
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == PROBLEM_MEDIA_TYPE.encode() and headers[b"connection"] == b"close"
    assert json.loads(sent[1]["body"])["limit_bytes"] == 100
