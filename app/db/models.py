"""SQLAlchemy 2 typed ORM for the service's SQL state.

The tables are created only by the Alembic migrations in ``app/migrations/versions``; these classes must
match them (``tests/app/test_db.py`` checks there is no drift). Change both together: edit the model, then
add a migration (``alembic revision --autogenerate -m ...`` with ``-x url=...``) and review it.

All timestamps are timezone-aware UTC on the way in and on the way out, on SQLite too (see :class:`UTCDateTime`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names, identical on every backend, so later migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

BATCH_OPERATIONS = ("impute", "predict", "both")
BATCH_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
BATCH_FINAL_STATUSES = ("succeeded", "failed", "cancelled")


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# Integer primary keys that may grow large: BIGINT on PostgreSQL, INTEGER on SQLite (only an
# ``INTEGER PRIMARY KEY`` column is SQLite's auto-incrementing rowid alias).
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    """Current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def new_job_id() -> str:
    """A batch job id: 32 lowercase hex characters (uuid4)."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[dt.datetime]):
    """``TIMESTAMP WITH TIME ZONE`` that always hands back aware UTC datetimes.

    PostgreSQL stores the instant; SQLite has no time zone type and would return naive values, so values are
    normalised to UTC before they are written and marked UTC when read. Naive input is taken to be UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
        list[str]: JSON(),
        list[dict[str, Any]]: JSON(),
    }


class ModelRecord(Base):
    """One registered version of a model artifact (``models`` table).

    ``version`` counts 1, 2, 3... per ``name``; at most one row per name has ``active`` set (enforced by a
    partial unique index as well as by the repository). A retired version (``retired_at`` set) is never served or
    activated again; the active version cannot be retired (the repository refuses both).
    """

    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        Index(
            "uq_models_name_active",
            "name",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
        Index("ix_models_name_checksum", "name", "checksum"),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(64))
    format_version: Mapped[str] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    retired_reason: Mapped[str | None] = mapped_column(Text, default=None)

    @property
    def retired(self) -> bool:
        return self.retired_at is not None

    def __repr__(self) -> str:
        flag = " active" if self.active else " retired" if self.retired else ""
        return f"<ModelRecord {self.name} v{self.version}{flag}>"


class ApiKeyRecord(Base):
    """An API key (``api_keys`` table). Only the prefix and the SHA-256 of the key are stored."""

    __tablename__ = "api_keys"
    __table_args__ = (
        UniqueConstraint("key_hash"),
        Index("ix_api_keys_prefix", "prefix"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def __repr__(self) -> str:
        return f"<ApiKeyRecord {self.id} {self.name!r} {self.prefix} scopes={self.scopes}>"


class AuditEvent(Base):
    """Something the service was asked and answered (``audit_events`` table).

    ``detail`` is free JSON; the caller decides whether raw feature values go in (by default they should not).
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_kind_at", "kind", "at"),
        Index("ix_audit_events_session_id", "session_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(200))
    model_version: Mapped[int | None] = mapped_column(Integer)
    session_id: Mapped[str | None] = mapped_column(String(64))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)

    def __repr__(self) -> str:
        return f"<AuditEvent {self.id} {self.kind} {self.at.isoformat() if self.at else None}>"


class BatchJob(Base):
    """A batch scoring job (``batch_jobs`` table). ``errors`` holds at most 1000 ``{row, column, reason}``."""

    __tablename__ = "batch_jobs"
    __table_args__ = (
        CheckConstraint(_in_list("operation", BATCH_OPERATIONS), name="operation_valid"),
        CheckConstraint(_in_list("status", BATCH_STATUSES), name="status_valid"),
        Index("ix_batch_jobs_status_created_at", "status", "created_at"),
        Index("ix_batch_jobs_finished_at", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[int] = mapped_column(Integer)
    operation: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    total_rows: Mapped[int | None] = mapped_column(Integer, default=None)
    processed_rows: Mapped[int] = mapped_column(Integer, default=0)
    failed_rows: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    input_path: Mapped[str | None] = mapped_column(Text, default=None)
    result_path: Mapped[str | None] = mapped_column(Text, default=None)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), default=None)
    # What the job was asked (samples, seed, chunk rows...), so that any process can resume it.
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The process scoring it, until when (renewed while it runs); an expired lease means that process is gone.
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # How many times a process took it over after another one died on it (a job that keeps killing its
    # process is failed after a few).
    takeovers: Mapped[int] = mapped_column(Integer, default=0)

    @property
    def finished(self) -> bool:
        return self.status in BATCH_FINAL_STATUSES

    def __repr__(self) -> str:
        return f"<BatchJob {self.id} {self.operation} {self.status} {self.processed_rows}/{self.total_rows}>"
