"""Helpers for the real-HTTP service tests (`test_api*.py`): the REAL service (`create_app`) served by uvicorn on a
free loopback port in a background thread, called with httpx, backed by real PostgreSQL and Redis.

Nothing here is a pytest fixture (fixtures imported into a test module trip ruff's F811): `tests/app/api/conftest.py`
and the test modules build their fixtures from `running_service(...)` (a server for one module) and
`shared_service(...)` (one server per configuration for all the modules of `tests/app/api/`: `main_service`,
PostgreSQL + Redis; `lite_service`, SQLite + in-process sessions), so that a run starts few servers; at the end of
each of those modules `release_shared_services` stops the shared servers after the last of them. While a server
runs, `LogCapture` records every log line of the process (the service's log output, checked for secrets).

Backing stores:

* PostgreSQL: `HHVAEM_TEST_POSTGRES_URL`'s server (default `postgresql://postgres@127.0.0.1:5432`), database
  `hhvaem_api_test` (created if missing); every service gets a schema of its own, dropped when it stops.
* SQLite: a file in the service's own temporary directory.
* Redis: `HHVAEM_TEST_API_REDIS_URL` (default `redis://127.0.0.1:6379/14`); the sessions' keys are deleted when the
  service stops. A throwaway `redis-server` (no persistence, free port) is available for outage tests.

Unreachable servers skip the tests that need them, unless `HHVAEM_REQUIRE_POSTGRES=1` / `HHVAEM_REQUIRE_REDIS=1`.
`HHVAEM_TEST_ARTIFACT=<dir>` makes `artifact_dir` use a prebuilt demo artifact instead of training one (speeds up
local iterations; the default trains the shared `demo_artifact`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

PG_SERVER_URL = os.environ.get("HHVAEM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/hhvaem_test")
PG_DATABASE = "hhvaem_api_test"
REDIS_URL = os.environ.get("HHVAEM_TEST_API_REDIS_URL", "redis://127.0.0.1:6379/14")
SESSION_PREFIX = "hhvaem:session:"  # RedisSessionStore's default key prefix
MODEL = "diabetes"  # the demo artifact's manifest name
TARGET = "disease_progression"
FEATURES = (
    "age",
    "sex",
    "bmi",
    "blood_pressure",
    "total_cholesterol",
    "ldl",
    "hdl",
    "cholesterol_ratio",
    "triglycerides",
    "blood_sugar",
)
ROW = {"age": 59, "sex": 2, "bmi": 32.1, "blood_pressure": 101.0}  # a plausible, partly observed row
SAMPLES = 20  # keep every sampler call small
PROBLEM = "application/problem+json"
# One TLS context for every client: httpx would otherwise load the CA bundle for each new client (~75 ms apiece),
# and these tests make many clients (plain HTTP; the context is never used for a handshake).
_TLS = ssl.create_default_context()


def http_client(base_url: str, **kwargs: Any) -> httpx.Client:
    """A new httpx client (its own connections) on `base_url`."""
    return httpx.Client(base_url=base_url, verify=_TLS, timeout=kwargs.pop("timeout", 60), **kwargs)


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


def artifact_dir(request: pytest.FixtureRequest) -> str:
    """The demo artifact: `HHVAEM_TEST_ARTIFACT` if set, else the session fixture `demo_artifact`."""
    prebuilt = os.environ.get("HHVAEM_TEST_ARTIFACT")
    if prebuilt:
        return prebuilt
    return request.getfixturevalue("demo_artifact")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------- PostgreSQL


def _pg_url(database: str):
    from hhvaem.app.db.database import normalize_url

    return normalize_url(PG_SERVER_URL).set(database=database)


def _pg_connect(database: str):
    import psycopg

    url = _pg_url(database)
    params: dict[str, Any] = {"host": url.host or "127.0.0.1", "port": url.port or 5432, "dbname": database}
    if url.username:
        params["user"] = url.username
    if url.password:
        params["password"] = url.password
    return psycopg.connect(**params, autocommit=True, connect_timeout=3)


@functools.cache
def _pg_database() -> str | None:
    """Creates `hhvaem_api_test` if missing; the reason PostgreSQL is unusable, or None when it is fine."""
    import psycopg
    from psycopg import sql

    try:
        with _pg_connect("postgres") as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone():
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DATABASE)))
    except psycopg.OperationalError as exc:
        return f"PostgreSQL not reachable at {_pg_url('postgres').render_as_string(hide_password=True)}: {exc}"
    return None


def require_postgres() -> None:
    reason = _pg_database()
    if reason:
        if _flag("HHVAEM_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A SQLAlchemy URL on an empty schema of its own in `hhvaem_api_test` (dropped afterwards)."""
    from psycopg import sql

    require_postgres()
    schema = f"api_{uuid.uuid4().hex[:16]}"
    with _pg_connect(PG_DATABASE) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = _pg_url(PG_DATABASE).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with _pg_connect(PG_DATABASE) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def proxied_pg_schema() -> Iterator[tuple[str, Any]]:
    """`pg_schema` reached only through a TCP proxy the test controls: (the URL through the proxy, the proxy)."""
    from benchmarks.proxy import TcpProxy
    from hhvaem.app.db.database import normalize_url

    with pg_schema() as url:
        parsed = normalize_url(url)
        proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432)).start()
        try:
            yield parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), proxy
        finally:
            proxy.stop()


# --------------------------------------------------------------------------------------------------------- Redis


def require_redis(url: str = REDIS_URL) -> str:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        message = f"Redis not reachable at {url}: {exc}"
        if _flag("HHVAEM_REQUIRE_REDIS"):
            pytest.fail(message)
        pytest.skip(message)
    return url


def delete_sessions(url: str, ids: list[str] | None = None) -> None:
    """Deletes the given sessions' keys (all session keys of that database when `ids` is None)."""
    import redis

    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        keys = [SESSION_PREFIX + i for i in ids] if ids is not None else list(client.scan_iter(SESSION_PREFIX + "*"))
        if keys:
            client.delete(*keys)
        client.close()


class ThrowawayRedis:
    """A private redis-server without persistence on a free port, that a test may stop and start at will."""

    def __init__(self, folder: Path):
        self.server = shutil.which("redis-server")
        self.cli = shutil.which("redis-cli")
        if not self.server or not self.cli:
            pytest.skip("redis-server / redis-cli not installed")
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.running = False

    def _ping(self) -> bool:
        probe = subprocess.run([self.cli, "-p", str(self.port), "ping"], capture_output=True, text=True, timeout=5)
        return probe.stdout.strip() == "PONG"

    def start(self) -> None:
        subprocess.run(
            [self.server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--daemonize", "yes", "--dir", str(self.folder), "--pidfile", str(self.folder / "redis.pid")]
            + ["--logfile", str(self.folder / "redis.log")],
            check=True,
            timeout=10,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._ping():
                self.running = True
                return
            time.sleep(0.05)
        raise RuntimeError(f"throwaway redis-server on port {self.port} did not start")

    def stop(self) -> None:
        subprocess.run([self.cli, "-p", str(self.port), "shutdown", "nosave"], capture_output=True, timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    self.running = False
                    return
            time.sleep(0.05)
        raise RuntimeError(f"throwaway redis-server on port {self.port} did not stop")


# ------------------------------------------------------------------------------------------------------- service


class _PlainFormatter(logging.Formatter):
    """Formats tracebacks without Python 3.11's caret lines: those call `ast.parse`, whose state is not thread-safe
    in CPython 3.11.7 (a server thread logging a traceback while pytest renders a report corrupts it for good)."""

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        lines = ["Traceback (most recent call last):"]
        for frame in traceback.extract_tb(ei[2]):
            lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
            if frame.line:
                lines.append(f"    {frame.line}")
        exc: BaseException | None = ei[1]
        seen: set[int] = set()
        while exc is not None and id(exc) not in seen:  # the exception and what caused it, one line each
            seen.add(id(exc))
            lines.extend(x.rstrip("\n") for x in traceback.format_exception_only(type(exc), exc))
            exc = exc.__cause__ or exc.__context__
        return "\n".join(lines)


class _TracebackAsText(logging.Filter):
    """Turns a record's traceback into plain text in its message, before any handler sees it: for loggers that the
    server thread may use at any moment (asyncio reports a failed background task when it is collected)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None:
            record.msg = f"{record.getMessage()}\n{_PlainFormatter().formatException(record.exc_info)}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class LogCapture(logging.Handler):
    """Every log record emitted in this process while a service runs, formatted with tracebacks.

    Listens at the root (the service's own loggers) and at `uvicorn`, which stops propagating meanwhile: uvicorn
    logs a failed request's traceback after the response has gone out, concurrently with the test, and only this
    handler (whose formatter is thread-safe) may format it. `asyncio` records get their traceback as text."""

    LEVELS = ("app", "hhvaem", "uvicorn")
    # Logger settings are process-wide while captures overlap and end in any order: the first capture to start
    # saves them and the last to end restores them.
    _active = 0
    _saved: dict[str, tuple[int, bool]] = {}
    _asyncio_filter = _TracebackAsText()

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(_PlainFormatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a broken record must not break the server
            self.lines.append(f"{record.levelname} {record.name}: <unformattable {record.msg!r}>")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def install(self) -> None:
        cls = LogCapture
        if cls._active == 0:
            cls._saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate) for n in self.LEVELS}
            for name in self.LEVELS:  # the service logs at INFO (its default log level): let those records through
                if logging.getLogger(name).getEffectiveLevel() > logging.INFO:
                    logging.getLogger(name).setLevel(logging.INFO)
            logging.getLogger("uvicorn").propagate = False
            logging.getLogger("asyncio").addFilter(cls._asyncio_filter)
        cls._active += 1
        logging.getLogger().addHandler(self)
        logging.getLogger("uvicorn").addHandler(self)

    def remove(self) -> None:
        cls = LogCapture
        logging.getLogger().removeHandler(self)
        logging.getLogger("uvicorn").removeHandler(self)
        cls._active -= 1
        if cls._active == 0:
            logging.getLogger("asyncio").removeFilter(cls._asyncio_filter)
            for name, (level, propagate) in cls._saved.items():
                logging.getLogger(name).setLevel(level)
                logging.getLogger(name).propagate = propagate


@dataclass
class Service:
    """A running service: its base URL, settings, in-process app (for white-box reads) and captured logs."""

    url: str
    settings: Any
    app: Any
    logs: LogCapture
    models_dir: Path
    artifact: Path  # this service's own copy of the demo artifact (registered at start-up)
    redis_url: str | None
    memo: dict[str, Any] = field(default_factory=dict)  # what tests set up once per service (e.g. version 2)
    _clients: list[httpx.Client] = field(default_factory=list)

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key:
            headers["Authorization"] = f"Bearer {key}"
        c = http_client(self.url, headers=headers, **kwargs)
        self._clients.append(c)
        return c

    def async_client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.AsyncClient(
            base_url=self.url, headers=headers, verify=_TLS, timeout=kwargs.pop("timeout", 60), **kwargs
        )

    @property
    def state(self) -> Any:
        return self.app.state.hhvaem

    @contextlib.contextmanager
    def db(self) -> Iterator[Any]:
        """A SQLAlchemy session on the service's database (a separate engine, as another process would have)."""
        from hhvaem.app.db.database import sql_engine, transaction_factory

        engine = sql_engine(self.settings.database_url)
        try:
            with transaction_factory(engine)() as s:
                yield s
        finally:
            engine.dispose()

    def create_api_key(self, name: str, scopes: list[str]) -> tuple[int, str]:
        from hhvaem.app.db import repository as repo

        with self.db() as s, s.begin():
            record, plaintext = repo.create_api_key(s, name, scopes)
            return record.id, plaintext

    def events(self, kind: str | None = None, session_id: str | None = None) -> list[Any]:
        from hhvaem.app.db import repository as repo

        with self.db() as s:
            return repo.list_events(s, kind, session_id, limit=1000)

    def close_clients(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()


@contextlib.contextmanager
def _serve(app: Any, logs: LogCapture, settings: Any, timeout: float = 60.0) -> Iterator[str]:
    """Serves `app` with uvicorn on a free loopback port in a background thread, with the server options
    `hhvaem serve` uses (`app/core/http.py`: read deadlines); yields the base URL."""
    import uvicorn

    from hhvaem.app.core.http import server_options

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,  # keep the process's logging as it is (LogCapture listens at the root)
        access_log=True,
        lifespan="on",
        timeout_graceful_shutdown=3,
        ws="none",
        **server_options(settings),
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if failure or not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(10)
            sock.close()
            raise RuntimeError(f"the service did not start: {failure or 'see the log'}\n{logs.text[-4000:]}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextlib.contextmanager
def running_service(
    artifact: str | os.PathLike[str] | None,
    folder: Path,
    *,
    database: str = "postgresql",
    sessions: str = "redis",
    redis_url: str | None = None,
    register: str = "models_dir",
    **settings: Any,
) -> Iterator[Service]:
    """The real service (`create_app`) over HTTP on a free port.

    `database`: "postgresql" (a schema of its own), "sqlite" (a file in `folder`) or "url" (`database_url`).
    `sessions`: "redis" (the test Redis, or `redis_url`) or "memory". The demo artifact is copied into
    `folder/models/diabetes`; `register` says how the service learns of it: "models_dir" (registered at start-up
    from `models_dir`), "registry" (a row written into the migrated database beforehand, as another process would;
    the service loads what the registry says) or "none". Other keyword arguments are `Settings` fields
    (`make_settings`)."""
    from hhvaem.app.core.config import make_settings
    from hhvaem.app.main import create_app

    folder.mkdir(parents=True, exist_ok=True)
    models = folder / "models"
    copy = models / MODEL
    if artifact is not None and not copy.exists():
        shutil.copytree(artifact, copy)
    if sessions == "redis":
        redis_url = redis_url or require_redis()
    elif sessions == "memory":
        redis_url = None
    else:
        raise ValueError(sessions)
    with contextlib.ExitStack() as stack:
        if database == "postgresql":
            db_url = stack.enter_context(pg_schema())
        elif database == "sqlite":
            db_url = f"sqlite:///{(folder / 'hhvaem.sqlite3').as_posix()}"
        elif database == "url":  # the caller's (e.g. through a TCP proxy it controls)
            db_url = settings.pop("database_url")
        else:
            raise ValueError(database)
        if register == "registry":
            register_in_db(db_url, copy)
        elif register not in ("models_dir", "none"):
            raise ValueError(register)
        s = make_settings(
            data_dir=folder / "data",
            database_url=db_url,
            redis_url=redis_url,
            models_dir=models if register == "models_dir" else None,
            threads=1,
            **settings,
        )
        logs = LogCapture()
        logs.install()
        stack.callback(logs.remove)
        app = create_app(s)
        url = stack.enter_context(_serve(app, logs, s))
        service = Service(url, s, app, logs, models, copy, redis_url)
        stack.callback(service.close_clients)
        try:
            yield service
        finally:
            if redis_url and redis_url == REDIS_URL:
                delete_sessions(redis_url)


def register_in_db(
    db_url: str, path: Path, name: str = MODEL, *, activate: bool = True, checksum: str | None = None
) -> int:
    """Writes a registry row for the artifact at `path` straight into the database (migrated first), as another
    process or an operator would; returns its version. `checksum` defaults to the manifest's."""
    import json

    from hhvaem.app.db import repository as repo
    from hhvaem.app.db.database import migrate, sql_engine, transaction_factory
    from hhvaem.app.services.registry import artifact_summary
    from hhvaem.model.io.artifact import manifest_checksum

    manifest = json.loads((path / "manifest.json").read_text())
    migrate(db_url)
    engine = sql_engine(db_url)
    try:
        with transaction_factory(engine).begin() as s:
            record = repo.register_model(
                s,
                name,
                str(path),
                checksum or manifest_checksum(path),
                str(manifest["format_version"]),
                manifest.get("metrics") or {},
                artifact_summary(manifest),
                activate=activate,
            )
            return record.version
    finally:
        engine.dispose()


def variant_copy(artifact: Path, dest: Path, note: str) -> Path:
    """A copy of `artifact` whose manifest differs (an extra `note`): a new artifact to the registry, same model."""
    import json

    from hhvaem.model.io.artifact import manifest_text

    if not dest.exists():
        shutil.copytree(artifact, dest)
        manifest = json.loads((dest / "manifest.json").read_text())
        manifest["note"] = note
        (dest / "manifest.json").write_text(manifest_text(manifest))  # sealed again: a new artifact, not an edit
    return dest


_SHARED: dict[str, tuple[Service, contextlib.ExitStack]] = {}
# The test modules that share services (and call `release_shared_services` when they end).
SHARING_FOLDER = Path(__file__).parent / "api"  # its modules share the services (tests/app/api/conftest.py)


def shared_service(request: pytest.FixtureRequest, name: str, **kwargs: Any) -> Service:
    """A service started once under `name` (first caller's `kwargs` win) for all the modules of `tests/app/api/`:
    they share one start-up per configuration (each costs seconds, mostly loading the model's sampler graph).
    `release_shared_services` stops it after the last of those modules, so that its threads and logging hooks do
    not outlive them; pytest's own clean-up stops it at the latest."""
    if name not in _SHARED:
        folder = request.getfixturevalue("tmp_path_factory").mktemp(f"service-{name}")
        stack = contextlib.ExitStack()
        service = stack.enter_context(running_service(artifact_dir(request), folder, **kwargs))
        _SHARED[name] = (service, stack)
        request.config.add_cleanup(lambda: _stop_shared(name))
    return _SHARED[name][0]


def _stop_shared(name: str) -> None:
    entry = _SHARED.pop(name, None)
    if entry is not None:
        entry[1].close()


def release_shared_services(request: pytest.FixtureRequest) -> None:
    """Called when a sharing module ends (a module-scoped fixture's teardown): stops every shared service unless
    a sharing module still has tests to run in this session."""
    items = request.session.items
    mine = [i for i, item in enumerate(items) if getattr(item, "module", None) is request.module]
    later = items[max(mine) + 1 :] if mine else []
    if not any(Path(str(item.fspath)).parent == SHARING_FOLDER for item in later):
        for name in reversed(list(_SHARED)):
            _stop_shared(name)


# The configuration most tests share: PostgreSQL + Redis, with small limits so that the limit checks are cheap.
MAIN_LIMITS = {
    "max_rows": 8,
    "max_samples": 64,
    "max_work": 500,  # 8 rows x 20 samples and 20 samples x 10 candidates fit; 8 rows x 64 samples do not
    "max_body_bytes": 64 * 1024,
    "max_upload_bytes": 256 * 1024,
    "max_table_bytes": 1024 * 1024,
    "max_job_rows": 5000,
    "default_samples": SAMPLES,
}


def main_service(request: pytest.FixtureRequest) -> Service:
    """The main configuration: PostgreSQL registry/audit/jobs, Redis sessions, auth off; shared by test modules."""
    return shared_service(request, "main", database="postgresql", sessions="redis", **MAIN_LIMITS)


def lite_service(request: pytest.FixtureRequest) -> Service:
    """The smoke configuration: SQLite + in-process sessions; the model is known from a registry row written
    before start-up (no models_dir), and audit events keep raw values (`audit_values=True`)."""
    return shared_service(
        request, "lite", database="sqlite", sessions="memory", register="registry", audit_values=True, **MAIN_LIMITS
    )


def second_version(service: Service) -> dict[str, Any]:
    """Registers (once per service) a changed copy of the demo artifact through the admin API: version 2 of the
    model, active. Returns the registration response body."""
    cached = service.memo.get("second_version")
    if cached is None:
        copy = variant_copy(service.artifact, service.models_dir.parent / "variant" / MODEL, "second version")
        r = service.client().post("/v1/models", json={"path": str(copy)})
        assert r.status_code == 201, r.text
        cached = r.json()
        service.memo["second_version"] = cached
    return cached


def activate(service: Service, version: int) -> None:
    r = service.client().post(f"/v1/models/{MODEL}/versions/{version}/activate")
    assert r.status_code == 200 and r.json()["active"], r.text


# ------------------------------------------------------------------------------------------------------ asserts


def declared_length_request(url: str, path: str, length: int) -> tuple[int, dict[str, str], bytes]:
    """POSTs only headers declaring a `length`-byte JSON body (none follows): what the server answers at once."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def problem(response: httpx.Response, status: int, *fields: str) -> dict[str, Any]:
    """Asserts `response` is a problem document with `status` naming each of `fields` in `errors`; returns it."""
    assert response.status_code == status, (response.status_code, response.text[:2000])
    assert response.headers["content-type"].startswith(PROBLEM), response.headers["content-type"]
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("/problems/") and body["title"]
    assert "Traceback" not in response.text
    named = [e["field"] for e in body.get("errors") or []]
    for f in fields:
        assert f in named, (f, body)
    return body


def reason(body: dict[str, Any], field_name: str) -> str:
    """The `reason` given for `field_name` in a problem document."""
    return next(e["reason"] for e in body["errors"] if e["field"] == field_name)


# ------------------------------------------------------------------------------------------------ real processes


class ServiceProcess:
    """`hhvaem`'s service in a process of its own (uvicorn, as deployed), for what only real processes show:
    SIGTERM and kill -9 during a batch job, a failed start-up's output. `env` are HHVAEM_* settings."""

    def __init__(self, env: dict[str, str], folder: Path):
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "HHVAEM_THREADS": "1", "HHVAEM_INFERENCE_WORKERS": "1"}
        self.env.update(env)
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.stderr_path = folder / f"service-{self.port}.log"

    def start(self, wait: bool = True, timeout: float = 90) -> ServiceProcess:
        import sys

        command = [sys.executable, "-m", "uvicorn", "hhvaem.app.main:app", "--factory"]
        command += ["--http", "hhvaem.app.core.http:ReadDeadlines"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--timeout-graceful-shutdown", "5"]
        self.stderr = open(self.stderr_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, env=self.env, stdout=self.stderr, stderr=subprocess.STDOUT)
        if wait:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the service exited ({self.process.returncode}):\n{self.output()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                        return self
                time.sleep(0.1)
            raise RuntimeError(f"the service did not start:\n{self.output()[-3000:]}")
        return self

    def output(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if getattr(self, "stderr", None) is not None:
            self.stderr.close()
