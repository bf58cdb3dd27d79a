"""Errors as RFC 9457 problem details (`application/problem+json`).

Every error the service returns has the same shape:

    {"type": "/problems/validation-error", "title": "Unprocessable Content", "status": 422,
     "detail": "rows.0.age: Input should be a valid number", "instance": "/v1/models/m/impute",
     "request_id": "3f2a...", "errors": [{"field": "rows.0.age", "reason": "Input should be a valid number"}]}

`type` is a relative URI reference, `/problems/<slug>`, that clients can switch on; `errors` names each
offending field (a dotted path into the JSON body, or a query/path parameter with `"in"` saying which). Route
code raises `Problem` (or a helper below); `install_problem_handlers` renders those, FastAPI's validation errors,
Starlette's HTTP errors (unknown route, wrong method) and, as a last resort, any other exception as a 500 that
carries no exception text or traceback (those go to the server log, tagged with the request id).

`BodySizeLimit` is a pure ASGI middleware that answers 413 before a route reads an oversized body;
`UnhandledErrors` answers an unexpected exception with the 500 document and keeps the connection open.

A problem document is bounded whatever the request: at most `MAX_LISTED_ERRORS` entries in `errors` (then
`errors_not_listed` counts the rest), each echoed field name or reason clipped, and the body written as ASCII JSON
(a lone surrogate or control character in a name the client sent is escaped, never a failure to encode).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "MAX_LISTED_ERRORS",
    "PROBLEM_MEDIA_TYPE",
    "BodySizeLimit",
    "ProblemResponse",
    "UnhandledErrors",
    "FieldErrorModel",
    "Problem",
    "ProblemModel",
    "bad_request",
    "conflict",
    "field_error",
    "forbidden",
    "install_problem_handlers",
    "not_found",
    "payload_too_large",
    "problem_response",
    "problem_responses",
    "request_id",
    "unauthorized",
    "unavailable",
    "unprocessable",
]

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "/problems/"
REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_RESERVED = frozenset({"type", "title", "status", "detail", "instance", "errors", "request_id", "errors_not_listed"})
MAX_LISTED_ERRORS = 50
"""At most this many entries in a problem's `errors`; `errors_not_listed` counts the others."""
_MAX_ECHO = 200  # characters of a client's field name kept in `errors` (a key may be megabytes long)
_MAX_REASON = 500


def clip(text: Any, limit: int = _MAX_ECHO) -> str:
    """`text` as a string of at most `limit` characters (an ellipsis marks a cut)."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def log_safe(text: Any, limit: int = 300) -> str:
    """`text` for one log line: control characters (a newline would forge a line) and non-ASCII escaped, clipped."""
    return clip(str(text).encode("unicode_escape").decode("ascii"), limit)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "error"


def field_error(field: str, reason: str, **extra: Any) -> dict[str, Any]:
    """One entry of a problem's `errors`: which field, and why it was refused."""
    return {"field": field, "reason": reason, **extra}


class Problem(StarletteHTTPException):
    """An error to send as a problem document. Raise it from route code.

    It subclasses Starlette's HTTPException so that frameworks that pass HTTP errors through untouched (FastAPI's
    body reading does) keep it intact; `install_problem_handlers` renders it.

    `type` is a short slug (`validation-error`), expanded to `/problems/<slug>`; an absolute URI is kept as is.
    Extra keyword arguments become extra members of the document (names of the standard members are refused)."""

    def __init__(
        self,
        status: int,
        title: str | None = None,
        detail: str | None = None,
        type: str | None = None,  # noqa: A002 - the RFC's member name
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ):
        clash = _RESERVED.intersection(extra)
        if clash:
            raise ValueError(f"extra problem members may not be named {sorted(clash)}")
        self.status = int(status)
        self.title = title or _phrase(self.status)
        self.type = type or _slug(self.title)
        errors = list(errors or [])
        self.errors_not_listed = max(0, len(errors) - MAX_LISTED_ERRORS)
        self.errors = [_clipped(e) for e in errors[:MAX_LISTED_ERRORS]] or None
        self.extra = extra
        super().__init__(self.status, detail, dict(headers or {}) or None)
        self.detail: str | None = detail  # Starlette would fill in the status phrase; no detail means none

    @property
    def type_uri(self) -> str:
        return self.type if ":" in self.type or self.type.startswith("/") else PROBLEM_TYPE_BASE + self.type

    def to_dict(self, instance: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type_uri, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        if request_id:
            body["request_id"] = request_id
        if self.errors:
            body["errors"] = self.errors
        if self.errors_not_listed:
            body["errors_not_listed"] = self.errors_not_listed
        body.update(self.extra)
        return body

    def __repr__(self) -> str:
        return f"Problem(status={self.status}, type={self.type!r}, detail={self.detail!r})"


def _clipped(error: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(error)
    if "field" in out:
        out["field"] = clip(out["field"])
    if "reason" in out:
        out["reason"] = clip(out["reason"], _MAX_REASON)
    return out


# ----------------------------------------------------------------------------------------------------- helpers


def not_found(kind: str, id: str | int, detail: str | None = None) -> Problem:  # noqa: A002
    """404 for an unknown model, session, job...: `not_found("session", sid)`."""
    return Problem(
        404,
        f"{kind.capitalize()} not found",
        detail or f"There is no {kind} {str(id)!r}.",
        f"{_slug(kind)}-not-found",
        resource=kind,
        id=str(id),
    )


def bad_request(detail: str, errors: Sequence[Mapping[str, Any]] | None = None) -> Problem:
    return Problem(400, "Bad Request", detail, "bad-request", errors=errors)


def unprocessable(errors: Sequence[Mapping[str, Any]], detail: str | None = None) -> Problem:
    """422 naming each offending field: `unprocessable([field_error("rows.0.age", "must be >= 0")])`."""
    errors = list(errors)
    return Problem(422, "Unprocessable Content", detail or _summarise(errors), "validation-error", errors=errors)


def conflict(detail: str) -> Problem:
    return Problem(409, "Conflict", detail, "conflict")


def unavailable(reason: str, retry_after: int = 5) -> Problem:
    """503 with `Retry-After` (seconds): a dependency (Redis, database, a model) is down for now."""
    return Problem(
        503, "Service Unavailable", reason, "service-unavailable", headers={"Retry-After": str(int(retry_after))}
    )


def payload_too_large(limit: int, what: str = "request body", headers: Mapping[str, str] | None = None) -> Problem:
    return Problem(
        413,
        "Content Too Large",
        f"The {what} exceeds the limit of {limit} bytes ({_human_bytes(limit)}).",
        "content-too-large",
        headers=headers,
        limit_bytes=int(limit),
    )


def unauthorized(detail: str = "An API key is required.", scheme: str = "Bearer") -> Problem:
    return Problem(
        401, "Unauthorized", detail, "unauthorized", headers={"WWW-Authenticate": f'{scheme} realm="hhvaem"'}
    )


def forbidden(detail: str = "This API key may not do that.") -> Problem:
    return Problem(403, "Forbidden", detail, "forbidden")


def _human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def _summarise(errors: Sequence[Mapping[str, Any]], shown: int = 3) -> str:
    if not errors:
        return "The request is invalid."
    parts = [f"{clip(e.get('field', '?'))}: {clip(e.get('reason', 'invalid'), _MAX_REASON)}" for e in errors[:shown]]
    more = len(errors) - shown
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# ---------------------------------------------------------------------------------------------------- rendering


def request_id(request: Request) -> str:
    """The request's id: one set earlier on `request.state`, else a well-formed `X-Request-ID` header, else new."""
    rid = getattr(request.state, "request_id", None)
    if not rid:
        header = request.headers.get(REQUEST_ID_HEADER, "")
        rid = header if _SAFE_REQUEST_ID.match(header) else uuid.uuid4().hex
        request.state.request_id = rid
    return rid


class ProblemResponse(JSONResponse):
    """A problem document, rendered as ASCII JSON: whatever a client put in a name it sees echoed back (a lone
    surrogate, a NUL), the body encodes."""

    media_type = PROBLEM_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def problem_response(problem: Problem, request: Request | None = None) -> JSONResponse:
    rid = request_id(request) if request is not None else None
    instance = clip(request.url.path, 1000) if request is not None else None
    headers = dict(problem.headers or {})
    if rid:
        headers[REQUEST_ID_HEADER] = rid
    return ProblemResponse(
        problem.to_dict(instance=instance, request_id=rid),
        status_code=problem.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


_LOCATIONS = ("body", "query", "path", "header", "cookie")


def _validation_field(loc: Sequence[Any]) -> tuple[str, str]:
    """(dotted field path, location) of one pydantic/FastAPI error location."""
    parts = list(loc)
    where = "body"
    if parts and parts[0] in _LOCATIONS:
        where = str(parts.pop(0))
    path = ".".join(str(p) for p in parts)
    return (path or where), where


def _validation_reason(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid"))
    ctx = err.get("ctx") or {}
    loc = tuple(err.get("loc") or ())
    if kind == "json_invalid":
        pos = loc[1] if len(loc) > 1 else None
        where = f" at character {pos}" if isinstance(pos, int) else ""
        return f"invalid JSON{where}: {ctx.get('error', 'cannot be parsed')}"
    if kind == "missing" and loc == ("body",):
        return "a JSON request body is required"
    if kind == "missing":
        return "required"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = tuple(err.get("loc") or ())
        # A JSON syntax error's location is a character offset into the body, not a field.
        field, where = ("body", "body") if err.get("type") == "json_invalid" else _validation_field(loc)
        entry = field_error(field, _validation_reason(err))
        if where != "body":
            entry["in"] = where
        out.append(entry)
    return out


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    if exc.status >= 500:
        log.warning(
            "%s %s -> %d %s [request_id=%s]",
            log_safe(request.method, 20),
            log_safe(request.url.path),
            exc.status,
            log_safe(exc.detail),
            request_id(request),
        )
    return problem_response(exc, request)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(unprocessable(validation_errors(exc)), request)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    phrase = _phrase(status)
    detail: Any = exc.detail
    extra: dict[str, Any] = {}
    if not isinstance(detail, str):
        extra["context"] = detail
        detail = None
    if status == 413:  # a limit enforced below us (e.g. multipart parts): the same document as ours
        limit = request.scope.get("hhvaem.body_limit")
        if limit:
            return problem_response(payload_too_large(limit[0], limit[1], exc.headers), request)
    if not detail or detail == phrase:
        if status == 404:
            detail = f"There is no endpoint at {request.url.path}."
        elif status == 405:
            allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
            detail = f"{request.method} is not allowed on {request.url.path}" + (
                f"; allowed: {allowed}." if allowed else "."
            )
        else:
            detail = phrase
    problem = Problem(status, phrase, detail, _slug(phrase), headers=exc.headers, **extra)
    return problem_response(problem, request)


async def _on_unhandled(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id(request)
    log.error(
        "unhandled %s in %s %s [request_id=%s]",
        type(exc).__name__,
        log_safe(request.method, 20),
        log_safe(request.url.path),
        rid,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    problem = Problem(
        500,
        "Internal Server Error",
        f"The server failed to handle this request. Quote request id {rid} when reporting it.",
        "internal-error",
    )
    return problem_response(problem, request)


async def _on_session_not_found(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(not_found("session", getattr(exc, "session_id", "?")), request)


async def _on_store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("session store unavailable: %s [request_id=%s]", log_safe(exc), request_id(request))
    return problem_response(unavailable("The session store is unavailable; retry shortly."), request)


async def _on_database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    from hhvaem.app.db.availability import one_line

    reason = one_line(exc)
    log.warning(
        "database unavailable in %s: %s [request_id=%s]", log_safe(request.url.path), reason, request_id(request)
    )
    retry = getattr(exc, "retry_after", 5)
    return problem_response(unavailable(f"The database is unavailable; retry shortly ({reason}).", retry), request)


def install_problem_handlers(app: FastAPI) -> None:
    """Render every error of `app` as a problem document (see the module docstring)."""
    from hhvaem.app.db.availability import UNAVAILABLE, DatabaseUnavailable
    from hhvaem.app.sessions.store import SessionNotFound, StoreUnavailable

    app.add_exception_handler(Problem, _on_problem)
    for database_error in (DatabaseUnavailable, *UNAVAILABLE):
        app.add_exception_handler(database_error, _on_database_unavailable)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(SessionNotFound, _on_session_not_found)
    app.add_exception_handler(StoreUnavailable, _on_store_unavailable)
    # Starlette gives the Exception handler to its outermost ServerErrorMiddleware, which answers with it and then
    # re-raises, and the ASGI server then drops the connection: `UnhandledErrors`, just outside the routes, answers
    # first and swallows the exception. The handler stays as the last resort for the middlewares outside it.
    app.add_exception_handler(Exception, _on_unhandled)
    app.add_middleware(UnhandledErrors)
    _document_problems(app)


class UnhandledErrors:
    """Pure ASGI middleware: an exception that no handler took becomes the 500 problem document (logged with the
    request id), and the exception ends here, so the client's keep-alive connection stays usable."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # nothing sensible can be sent any more: let the server end the connection
                raise
            response = await _on_unhandled(Request(scope, receive), exc)
            await response(scope, receive, send)


# ------------------------------------------------------------------------------------------------- OpenAPI models


class FieldErrorModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    field: str = Field(description="Dotted path of the offending field, e.g. `rows.0.age`.")
    reason: str = Field(description="Why the value was refused.")
    in_: str | None = Field(
        default=None, alias="in", description="Where the field is when not in the JSON body: query, path, header."
    )


class ProblemModel(BaseModel):
    """RFC 9457 problem details, as sent with `Content-Type: application/problem+json`."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "example": {
                "type": "/problems/validation-error",
                "title": "Unprocessable Content",
                "status": 422,
                "detail": "rows.0.age: Input should be a valid number",
                "instance": "/v1/models/demo/impute",
                "request_id": "5d0c1f0e8b2a4a7d9f7c3e1b2a4d6c8e",
                "errors": [{"field": "rows.0.age", "reason": "Input should be a valid number"}],
            }
        },
    )

    type: str = Field(description="Problem type: `/problems/<slug>`; clients switch on it.")
    title: str = Field(description="Short summary of the problem type.")
    status: int = Field(description="The HTTP status code.")
    detail: str | None = Field(default=None, description="What went wrong with this request, for humans.")
    instance: str | None = Field(default=None, description="The request path.")
    request_id: str | None = Field(default=None, description="Id of this request in the server's logs.")
    errors: list[FieldErrorModel] | None = Field(default=None, description="Each offending field and why.")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route decorator documenting the given error statuses as problem documents (the schema
    is added to the OpenAPI components by `install_problem_handlers`)."""
    return {
        status: {"description": _phrase(status), "content": {PROBLEM_MEDIA_TYPE: {"schema": dict(_PROBLEM_REF)}}}
        for status in statuses
    }


_PROBLEM_REF = {"$ref": "#/components/schemas/ProblemModel"}
_FASTAPI_422_REF = "#/components/schemas/HTTPValidationError"


def _document_problems(app: FastAPI) -> None:
    """Make `app.openapi()` tell the truth about errors: add the ProblemModel schema, and describe FastAPI's
    automatic 422 responses as the problem documents they now are."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        problem = ProblemModel.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in problem.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault("ProblemModel", problem)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                response = operation.get("responses", {}).get("422") if isinstance(operation, dict) else None
                content = (response or {}).get("content", {})
                if content.get("application/json", {}).get("schema", {}).get("$ref") == _FASTAPI_422_REF:
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": dict(_PROBLEM_REF)}}
                    response["description"] = "Unprocessable Content: each offending field and why"
        if _FASTAPI_422_REF not in json.dumps(schema.get("paths", {})):
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------------- body limit


class BodySizeLimit:
    """Pure ASGI middleware: 413 problem when a request body is larger than allowed.

    The limit is `upload_max_bytes` for paths under one of `upload_paths` (prefix match on whole segments) and
    `max_bytes` elsewhere. A declared `Content-Length` over the limit is refused before anything is read; a body
    without one (chunked) is counted as it streams, and the read that crosses the limit raises a 413 `Problem`
    into the route (FastAPI passes HTTP exceptions through its body parsing; the problem handler renders it). If
    nothing renders it, this middleware does, provided the response has not started."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        upload_max_bytes: int | None = None,
        upload_paths: Iterable[str] = (),
    ):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.upload_max_bytes = int(upload_max_bytes) if upload_max_bytes is not None else self.max_bytes
        self.upload_paths = tuple("/" + p.strip("/") for p in upload_paths)

    def limit_for(self, path: str) -> tuple[int, str]:
        for prefix in self.upload_paths:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return self.upload_max_bytes, "upload"
        return self.max_bytes, "request body"

    @staticmethod
    def _content_length(scope: Scope) -> int | None:
        for name, value in scope.get("headers") or ():
            if name.lower() == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, what = self.limit_for(scope.get("path", ""))
        scope["hhvaem.body_limit"] = (limit, what)
        headers = {"Connection": "close"} if str(scope.get("http_version", "1.1")).startswith("1") else None

        declared = self._content_length(scope)
        if declared is not None and declared > limit:
            await self._reject(payload_too_large(limit, what, headers), scope, receive, send)
            return

        received = 0
        too_large: Problem | None = None
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            if too_large is not None:
                raise too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = payload_too_large(limit, what, headers)
                    raise too_large
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Problem as exc:
            if exc is not too_large or started:
                raise
            await self._reject(exc, scope, receive, send)

    @staticmethod
    async def _reject(problem: Problem, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        await problem_response(problem, request)(scope, receive, send)


# ------------------------------------------------------------------------------------------------- start-up


def startup_failure(error: BaseException) -> str:
    """One line saying why the service could not start (the database's own message, never a password)."""
    from hhvaem.app.db.availability import is_unavailable, one_line

    if is_unavailable(error):
        return f"hhvaem start-up failed: the database is unreachable ({one_line(error)})"
    text = " ".join(str(error).split())[:500] or "no details"
    return f"hhvaem start-up failed: {type(error).__name__}: {text}"


class OneLineStartupFailure:
    """Pure ASGI middleware for the lifespan: when start-up fails, the server reports `failure[0]` (one line, set by
    the lifespan) instead of the framework's formatted traceback, and the exception stops here (it would be
    printed once more)."""

    def __init__(self, app: ASGIApp, failure: list[str]):
        self.app = app
        self.failure = failure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def one_line(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.failure:
                message = {**message, "message": self.failure[0]}
            await send(message)

        try:
            await self.app(scope, receive, one_line)
        except Exception:
            if not self.failure:
                raise
