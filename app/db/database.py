"""The SQL database: connections, transactions and migrations.

Words: in this project a "session" is a questionnaire session and an "engine" is the inference engine; the
database side speaks of the database (`Database`), its SQLAlchemy engine (`sql_engine`) and transactions.

Typical use::

    url = settings.database_url or default_database_url(settings.data_dir)
    migrate(url)                                  # Alembic upgrade head; idempotent
    db = Database(url)
    with db.transaction() as tx:                  # commits on success, rolls back on error
        repository.register_model(tx, ...)
    with db.read() as tx:                         # reads; nothing to commit
        repository.list_models(tx)

A database that cannot answer (refused, hung, gone) surfaces as `DatabaseUnavailable` from `transaction()`,
`read()` and `ping()`, quickly: waits are bounded and a failure opens a breaker (`app/db/availability.py`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from hhvaem.app.db.availability import Breaker, DatabaseUnavailable, bound_postgres, is_unavailable, one_line

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
"""Alembic script directory; it ships inside the ``hhvaem.app`` package so ``migrate`` works from an installed wheel."""

SQLITE_FILENAME = "hhvaem.db"  # same name as app.core.config uses for its default


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL, choosing the psycopg 3 driver for bare ``postgresql://`` / ``postgres://`` URLs."""
    if isinstance(url, str) and url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_memory_sqlite(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or (url.query.get("mode") == "memory")


def sql_engine(url: str | URL, timeout: float | None = None, **kwargs: Any) -> Engine:
    """A SQLAlchemy engine configured for the backend.

    SQLite: usable from any thread (``check_same_thread=False``); every connection gets WAL journaling,
    foreign keys on and a busy timeout; the driver's implicit transaction handling is replaced by explicit
    ``BEGIN`` so that SAVEPOINTs and transactional DDL behave as on PostgreSQL. An in-memory database uses a
    single shared connection (otherwise each connection would see its own empty database).
    PostgreSQL: ``pool_pre_ping`` so connections dropped by a server restart are replaced transparently; with
    ``timeout`` (seconds), connecting, every operation and a wait for a pooled connection are bounded by it
    (:func:`app.db.availability.bound_postgres`). Extra ``kwargs`` go to :func:`sqlalchemy.create_engine`.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)
        connect_args.setdefault("timeout", 30)
        if _is_memory_sqlite(parsed):
            kwargs.setdefault("poolclass", StaticPool)
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
        _configure_sqlite(engine, wal=not _is_memory_sqlite(parsed))
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if timeout is not None:
        kwargs.setdefault("pool_timeout", timeout)
    engine = create_engine(parsed, **kwargs)
    if timeout is not None:
        bound_postgres(engine, timeout)
    return engine


def _configure_sqlite(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Take transaction control away from pysqlite (it would otherwise BEGIN lazily and commit around
        # DDL); the "begin" listener below emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE: take the write lock up front. A deferred transaction that reads and then writes fails
        # at once ("database is locked", the busy timeout does not apply) when another writer committed in
        # between; this way concurrent writers queue on the busy timeout instead. SQLite is the
        # single-node default, where serialised transactions cost nothing that matters.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def transaction_factory(engine: Engine) -> sessionmaker[Session]:
    """SQLAlchemy's session factory. ``expire_on_commit=False``: records returned by the repository stay readable
    after the transaction commits (for building responses), without lazy reloads."""
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


class Database:
    """One database: its SQLAlchemy engine and the transactions on it.

    `timeout` bounds every wait on a PostgreSQL server (see the module docstring); `retry_seconds` is how long
    callers are refused at once after a connection failure before the next try."""

    def __init__(self, url: str | URL, timeout: float | None = None, retry_seconds: float = 1.0, **kwargs: Any):
        self.sql = sql_engine(url, timeout, **kwargs)
        self._factory = transaction_factory(self.sql)
        self.breaker = Breaker(retry_seconds)
        self._networked = self.sql.dialect.name != "sqlite"

    @property
    def url(self) -> URL:
        return self.sql.url

    @contextmanager
    def _guarded(self, session_context: Any, trial: bool) -> Iterator[Session]:
        if self._networked and not (self.breaker.admit() if trial else not self.breaker.is_open):
            raise self.breaker.refusal()
        try:
            with session_context as tx:
                yield tx
        except DatabaseUnavailable:
            raise
        except Exception as e:
            if not is_unavailable(e):
                self.breaker.released()
                raise
            if self._networked:
                self.breaker.failed(one_line(e))
            raise DatabaseUnavailable(f"the database is unreachable ({one_line(e)})") from e
        except BaseException:
            self.breaker.released()
            raise
        self.breaker.succeeded()

    def transaction(self, trial: bool = True):
        """``with db.transaction() as tx:`` commits on success, rolls back on error. While the breaker is open it
        refuses at once, except for one trial now and then; ``trial=False``: never be that trial (for work that
        must not wait on a database that may be hung, e.g. an audit event on the way to an answer)."""
        return self._guarded(self._factory.begin(), trial)

    def read(self, trial: bool = True):
        """``with db.read() as tx:`` for reads (nothing is committed); ``trial`` as for `transaction`."""
        return self._guarded(self._factory(), trial)

    def ping(self) -> None:
        """Raises `DatabaseUnavailable` when the database cannot be reached (at once while the breaker is open)."""
        from sqlalchemy import text

        with self.read() as tx:
            tx.execute(text("SELECT 1"))

    def probe(self) -> None:
        """Like `ping`, but always tries (the breaker does not refuse it): what background checks call."""
        from sqlalchemy import text

        try:
            with self.sql.connect() as c:
                c.execute(text("SELECT 1"))
        except Exception as e:
            if not is_unavailable(e):
                raise
            self.breaker.failed(one_line(e))
            raise DatabaseUnavailable(f"the database is unreachable ({one_line(e)})") from e
        self.breaker.succeeded()

    def dispose(self) -> None:
        self.sql.dispose()


def default_database_url(data_dir: str | os.PathLike[str]) -> str:
    """SQLite file URL for ``<data_dir>/hhvaem.db`` (the directory is created if needed)."""
    directory = Path(data_dir).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(directory / SQLITE_FILENAME).as_posix()}"


def alembic_config(url: str | URL | None = None) -> Any:
    """An Alembic ``Config`` built in code (no ini file needed) with the packaged script directory.

    The URL travels in ``config.attributes`` rather than the ini option so that ``%`` in passwords needs no
    escaping.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.attributes["url"] = normalize_url(url)
    return config


MIGRATION_LOCK = 0x68687661656D  # the PostgreSQL advisory lock key migrations hold ("hhvaem" in ASCII)


def migrate(url: str | URL | Engine, revision: str = "head", timeout: float | None = None) -> None:
    """Upgrade the database to ``revision`` (default: the newest). Idempotent; safe to call on every start, from
    several processes at once (on PostgreSQL they take turns under an advisory lock).

    ``url`` may also be an existing :class:`Engine` (needed for an in-memory SQLite database, which lives only
    as long as its engine); an engine made here from a URL is disposed of afterwards. ``timeout`` bounds every wait
    on a PostgreSQL server (``sql_engine``), so that a start-up against a hung server fails instead of hanging.
    """
    from alembic import command

    engine = url if isinstance(url, Engine) else sql_engine(url, timeout)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Replicas of a new deployment start, and migrate, at once: one at a time, the others then find the
                # database at head (unlocked, all but one failed creating the same tables). Released at commit.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            config = alembic_config(engine.url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        if engine is not url:
            engine.dispose()
