"""Alembic environment for the hhvaem SQL state.

The database URL comes from the caller, in this order: ``config.attributes["connection"]`` (an open
connection, as :func:`app.db.database.migrate` passes), ``config.attributes["url"]``, ``-x url=...`` on the
command line, then the ``HHVAEM_DATABASE_URL`` and ``DATABASE_URL`` environment variables.
"""

from __future__ import annotations

import logging
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from hhvaem.app.db.database import normalize_url, sql_engine
from hhvaem.app.db.models import Base

config = context.config

# Only the command-line tool configures logging from the ini file; programmatic runs leave the host's
# logging alone.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Lines Alembic logs at INFO on every run, whether or not anything changes ("Context impl SQLiteImpl.", "Will assume
# non-transactional DDL."); the service migrates at every start, so they were start-up noise. What changes the
# database ("Running upgrade ...") is still logged. (Its "setup plugin" lines come at `import alembic`, before this
# file runs: app/main.py quiets that logger.)
ROUTINE = ("Context impl ", "Will assume ")


def _not_routine(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(ROUTINE)


_migration_log = logging.getLogger("alembic.runtime.migration")
if not any(getattr(f, "__name__", None) == _not_routine.__name__ for f in _migration_log.filters):
    _migration_log.addFilter(_not_routine)  # once per process (this file runs at every migration)

target_metadata = Base.metadata


def _database_url():
    url = config.attributes.get("url")
    if url is None:
        url = context.get_x_argument(as_dictionary=True).get("url")
    if url is None:
        url = os.environ.get("HHVAEM_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError(
            "no database URL: pass -x url=..., set HHVAEM_DATABASE_URL, or call app.db.database.migrate(url)"
        )
    return normalize_url(url)


def _configure(**kwargs: object) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, **kwargs)


def run_migrations_offline() -> None:
    url = _database_url()
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: Connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = sql_engine(_database_url())
    try:
        with engine.begin() as conn:
            _run_with(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
