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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

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


def sql_engine(url: str | URL, **kwargs: Any) -> Engine:
    """A SQLAlchemy engine configured for the backend.

    SQLite: usable from any thread (``check_same_thread=False``); every connection gets WAL journaling,
    foreign keys on and a busy timeout; the driver's implicit transaction handling is replaced by explicit
    ``BEGIN`` so that SAVEPOINTs and transactional DDL behave as on PostgreSQL. An in-memory database uses a
    single shared connection (otherwise each connection would see its own empty database).
    PostgreSQL: ``pool_pre_ping`` so connections dropped by a server restart are replaced transparently.
    Extra ``kwargs`` go to :func:`sqlalchemy.create_engine`.
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
    return create_engine(parsed, **kwargs)


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
    """One database: its SQLAlchemy engine and the transactions on it."""

    def __init__(self, url: str | URL, **kwargs: Any):
        self.sql = sql_engine(url, **kwargs)
        self._factory = transaction_factory(self.sql)

    @property
    def url(self) -> URL:
        return self.sql.url

    def transaction(self):
        """``with db.transaction() as tx:`` commits on success, rolls back on error."""
        return self._factory.begin()

    def read(self) -> Session:
        """``with db.read() as tx:`` for reads (nothing is committed)."""
        return self._factory()

    def ping(self) -> None:
        """Raises when the database cannot be reached."""
        from sqlalchemy import text

        with self.sql.connect() as c:
            c.execute(text("SELECT 1"))

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


def migrate(url: str | URL | Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default: the newest). Idempotent; safe to call on every start.

    ``url`` may also be an existing :class:`Engine` (needed for an in-memory SQLite database, which lives only
    as long as its engine); an engine made here from a URL is disposed of afterwards.
    """
    from alembic import command

    engine = url if isinstance(url, Engine) else sql_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config(engine.url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        if engine is not url:
            engine.dispose()
