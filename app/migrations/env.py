"""Alembic environment for the hhvaem SQL state.

The database URL comes from the caller, in this order: ``config.attributes["connection"]`` (an open
connection, as :func:`app.db.database.migrate` passes), ``config.attributes["url"]``, ``-x url=...`` on the
command line, then the ``HHVAEM_DATABASE_URL`` and ``DATABASE_URL`` environment variables.
"""

from __future__ import annotations

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
