"""Database fixtures for the service tests.

``db_url`` is parametrised over ``["sqlite", "postgresql"]``: every test that uses it (directly or through
``db_sql_engine`` / ``db_tx``) runs once per backend, each time on an empty database migrated to head.

* SQLite: a new file under the test's ``tmp_path`` (a copy of a template migrated once per test session).
* PostgreSQL: a schema of its own in the ``hhvaem_test`` database (created if missing), selected through the
  connection's ``search_path``. The schema is migrated once per test session and emptied before each test
  (rows deleted, sequences restarted), which costs ~10 ms where a new schema costs ~0.25 s of DDL; it is
  rebuilt if a test left it off head. Separate schemas keep concurrent test runs apart; they are dropped at
  the end of the session.

``fresh_db_url`` (same parameters) always migrates a brand-new database, for tests that alter the schema.

The server is ``HHVAEM_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/hhvaem_test``).
If it cannot be reached the PostgreSQL cases are skipped, or fail when ``HHVAEM_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from hhvaem.app.db.database import alembic_config, migrate, normalize_url, sql_engine, transaction_factory

POSTGRES_URL = os.environ.get("HHVAEM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/hhvaem_test")
REQUIRE_POSTGRES = os.environ.get("HHVAEM_REQUIRE_POSTGRES", "") not in ("", "0", "false", "no")


@functools.cache
def _head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _connect(url: URL, **overrides: Any):
    import psycopg

    params: dict[str, Any] = {"host": url.host or "127.0.0.1", "port": url.port or 5432, "dbname": url.database}
    if url.username:
        params["user"] = url.username
    if url.password:
        params["password"] = url.password
    params.update(overrides)
    return psycopg.connect(**params, autocommit=True, connect_timeout=3)


class _PostgresSchemas:
    """Migrated schemas in the test database: one shared per session, plus throw-away ones."""

    def __init__(self, base: URL) -> None:
        self.base = base
        self.created: list[str] = []
        self.shared: str | None = None

    def url(self, schema: str) -> str:
        url = self.base.update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    def new(self) -> str:
        from psycopg import sql

        schema = f"hhv_test_{uuid.uuid4().hex[:16]}"
        with _connect(self.base) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        self.created.append(schema)
        migrate(self.url(schema))
        return schema

    def drop(self, schema: str) -> None:
        from psycopg import sql

        with _connect(self.base) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        if schema in self.created:
            self.created.remove(schema)

    def empty(self, schema: str) -> bool:
        """Delete all rows but Alembic's and restart the sequences; False (nothing done) if not at head."""
        from psycopg import errors, sql

        with _connect(self.base) as conn:
            conn.execute("SET lock_timeout = '10s'")
            try:
                version = conn.execute(
                    sql.SQL("SELECT version_num FROM {}.alembic_version").format(sql.Identifier(schema))
                ).fetchall()
            except errors.UndefinedTable:
                return False
            if version != [(_head_revision(),)]:
                return False
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = %s AND table_type = 'BASE TABLE' AND table_name <> 'alembic_version'",
                (schema,),
            ).fetchall()
            sequences = conn.execute(
                "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = %s", (schema,)
            ).fetchall()
            with conn.transaction():
                # Foreign keys are not enforced meanwhile, so the order of the tables does not matter.
                conn.execute("SET LOCAL session_replication_role = replica")
                for (table,) in tables:
                    conn.execute(sql.SQL("DELETE FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table)))
                for (sequence,) in sequences:
                    conn.execute(
                        sql.SQL("ALTER SEQUENCE {}.{} RESTART").format(sql.Identifier(schema), sql.Identifier(sequence))
                    )
        return True

    def emptied_shared(self) -> str:
        """The shared schema, emptied (or rebuilt if a test broke it)."""
        if self.shared is None or not self.empty(self.shared):
            if self.shared is not None:
                self.drop(self.shared)
            self.shared = self.new()
        return self.shared


@pytest.fixture(scope="session")
def _postgres_schemas() -> Iterator[_PostgresSchemas]:
    """Creates the test database if missing; drops this session's schemas at the end."""
    import psycopg
    from psycopg import sql

    base = normalize_url(POSTGRES_URL)
    try:
        with _connect(base, dbname="postgres") as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (base.database,)).fetchone()
            if not exists:
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(base.database)))
                except psycopg.errors.DuplicateDatabase:  # another test run created it meanwhile
                    pass
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL not reachable at {base.render_as_string(hide_password=True)}: {exc}".strip()
        if REQUIRE_POSTGRES:
            pytest.fail(message)
        pytest.skip(message)
    schemas = _PostgresSchemas(base)
    try:
        yield schemas
    finally:
        for schema in list(schemas.created):
            schemas.drop(schema)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session."""
    path = tmp_path_factory.mktemp("sqlite-template") / "hhvaem.sqlite3"
    migrate(_sqlite_url(path))  # disposes its engine: the WAL is checkpointed into the file and removed
    return path


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.as_posix()}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty database migrated to head, once per backend (see the module docstring)."""
    if request.param == "sqlite":
        path = tmp_path / "hhvaem.sqlite3"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        return _sqlite_url(path)
    schemas: _PostgresSchemas = request.getfixturevalue("_postgres_schemas")
    return schemas.url(schemas.emptied_shared())


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new database migrated from scratch (new file / new schema) that the test may alter freely."""
    if request.param == "sqlite":
        url = _sqlite_url(tmp_path / "fresh.sqlite3")
        migrate(url)
        yield url
        return
    schemas: _PostgresSchemas = request.getfixturevalue("_postgres_schemas")
    schema = schemas.new()
    try:
        yield schemas.url(schema)
    finally:
        schemas.drop(schema)


@pytest.fixture
def db_sql_engine(db_url: str) -> Iterator[Engine]:
    """A SQLAlchemy engine on the ``db_url`` database (disposed after the test)."""
    engine = sql_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def db_tx(db_sql_engine: Engine) -> Iterator[Session]:
    """A transaction on the ``db_url`` database; the test commits as it likes, leftovers are rolled back."""
    tx = transaction_factory(db_sql_engine)()
    try:
        yield tx
    finally:
        tx.rollback()
        tx.close()
