"""Typed data-access functions over a :class:`sqlalchemy.orm.Session`.

Conventions:

* Every function takes the session first and returns plain ORM objects (:class:`ModelRecord`,
  :class:`AuditEvent`, :class:`BatchJob`, :class:`ApiKeyRecord`). Sessions from
  :func:`app.db.session.transaction_factory` do not expire objects on commit, so a returned record stays
  readable after its transaction ends. Treat returned records as read-only outside this module: change
  state through these functions.
* Functions flush (so ids, versions and constraint errors appear at once) but never commit: the caller owns
  the transaction, e.g. ``with Session.begin() as s: ...``.
* Missing rows: ``get_*``/``find_*``/``verify_*`` return ``None``; functions that must change an existing row
  raise :class:`NotFoundError` (a ``LookupError``). Invalid arguments raise ``ValueError``.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from hhvaem.app.core import security
from hhvaem.app.db.models import (
    BATCH_FINAL_STATUSES,
    BATCH_OPERATIONS,
    BATCH_STATUSES,
    ApiKeyRecord,
    AuditEvent,
    BatchJob,
    ModelRecord,
    new_job_id,
    utcnow,
)

MAX_STORED_ERRORS = 1000
"""At most this many ``{row, column, reason}`` entries are kept per batch job (``failed_rows`` still counts all)."""

MAX_EVENT_LIMIT = 10_000


class NotFoundError(LookupError):
    """The row to change does not exist."""


class StateConflict(ValueError):
    """The change contradicts the row's state: retiring the active version, activating a retired one."""


# --------------------------------------------------------------------------------------------------- models


def _serialize_registration(s: Session, name: str) -> None:
    """Serialise version allocation for ``name`` until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock on the name. SQLite: a no-op write, which takes the
    database's write lock now instead of after the read of the current versions (a deferred transaction that
    read first would otherwise fail when another writer got in between). Without this, two processes
    registering at the same time (several workers starting up) would both pick the same next version.
    """
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"hhvaem.models:{name}"})
    elif dialect == "sqlite":
        s.execute(text("UPDATE models SET id = id WHERE 0 = 1"))


def _deactivate_all(s: Session, name: str) -> None:
    s.execute(
        update(ModelRecord)
        .where(ModelRecord.name == name, ModelRecord.active.is_(True))
        .values(active=False)
        .execution_options(synchronize_session="fetch")
    )


def register_model(
    s: Session,
    name: str,
    path: str,
    checksum: str,
    format_version: str,
    metrics: Mapping[str, Any] | None = None,
    summary: Mapping[str, Any] | None = None,
    *,
    activate: bool = True,
) -> ModelRecord:
    """Add the next version (1, 2, 3... per ``name``) of a model artifact.

    With ``activate`` (the default) the new version becomes the active one and the others of that name are
    deactivated. ``checksum`` is the sha256 hex of the artifact's ``manifest.json``. To avoid a new version
    when the same artifact is registered again, use :func:`ensure_model` (or :func:`find_model_by_checksum`).
    """
    if not name:
        raise ValueError("model name must not be empty")
    _serialize_registration(s, name)
    current = s.scalar(select(func.max(ModelRecord.version)).where(ModelRecord.name == name))
    if activate:
        _deactivate_all(s, name)
    record = ModelRecord(
        name=name,
        version=(current or 0) + 1,
        path=str(path),
        checksum=checksum,
        format_version=str(format_version),
        metrics=dict(metrics or {}),
        summary=dict(summary or {}),
        active=activate,
        created_at=utcnow(),
    )
    s.add(record)
    s.flush()
    return record


def ensure_model(
    s: Session,
    name: str,
    path: str,
    checksum: str,
    format_version: str,
    metrics: Mapping[str, Any] | None = None,
    summary: Mapping[str, Any] | None = None,
    *,
    activate: bool = True,
) -> tuple[ModelRecord, bool]:
    """Register an artifact unless a version of ``name`` with the same ``checksum`` already exists.

    Returns ``(record, created)``. For start-up registration: restarting with the same artifact keeps its
    version (its ``path`` is updated if the directory moved) and does not override an activation made since;
    it is only activated, with ``activate``, when no version of the name is active.
    """
    _serialize_registration(s, name)
    existing = find_model_by_checksum(s, name, checksum)
    if existing is None:
        return register_model(s, name, path, checksum, format_version, metrics, summary, activate=activate), True
    if existing.path != str(path):
        existing.path = str(path)
    if activate and not existing.retired and get_model(s, name) is None:  # a retired version stays retired
        existing.active = True
    s.flush()
    return existing, False


def list_models(s: Session, name: str | None = None) -> list[ModelRecord]:
    """All registered versions (of one ``name`` if given), ordered by name then version."""
    query = select(ModelRecord).order_by(ModelRecord.name, ModelRecord.version)
    if name is not None:
        query = query.where(ModelRecord.name == name)
    return list(s.scalars(query))


def list_active_models(s: Session) -> list[ModelRecord]:
    """The active version of every name that has one, ordered by name."""
    return list(s.scalars(select(ModelRecord).where(ModelRecord.active.is_(True)).order_by(ModelRecord.name)))


def get_model(s: Session, name: str, version: int | None = None) -> ModelRecord | None:
    """One version of ``name``; ``version=None`` means the active version (``None`` if none is active)."""
    query = select(ModelRecord).where(ModelRecord.name == name)
    if version is None:
        query = query.where(ModelRecord.active.is_(True))
    else:
        query = query.where(ModelRecord.version == version)
    return s.scalar(query)


def activate_model(s: Session, name: str, version: int) -> ModelRecord:
    """Make ``version`` the active version of ``name`` (deactivating the others). Idempotent. A retired version
    raises :class:`StateConflict`."""
    _serialize_registration(s, name)  # against a retirement of the same version in another process
    record = get_model(s, name, version)
    if record is None:
        raise NotFoundError(f"model {name!r} has no version {version}")
    if record.retired:
        raise StateConflict(f"version {version} of {name!r} was retired: it is never served again")
    if not record.active:
        _deactivate_all(s, name)
        s.flush()
        record.active = True
        s.flush()
    return record


def retire_model(s: Session, name: str, version: int, reason: str | None = None) -> ModelRecord:
    """Retire ``version`` of ``name``: it is never served or activated again. Retiring a retired version returns
    it unchanged (its first time and reason). The active version raises :class:`StateConflict`: a name must not
    be left without an active version by accident, so another version is activated first."""
    _serialize_registration(s, name)  # against an activation of the same version in another process
    record = get_model(s, name, version)
    if record is None:
        raise NotFoundError(f"model {name!r} has no version {version}")
    if record.retired:
        return record
    if record.active:
        raise StateConflict(
            f"version {version} of {name!r} is the active version: activate another version first, then retire it"
        )
    record.retired_at = utcnow()
    record.retired_reason = reason
    s.flush()
    return record


def find_model_by_checksum(s: Session, name: str, checksum: str) -> ModelRecord | None:
    """The newest version of ``name`` registered with this manifest checksum, if any."""
    return s.scalar(
        select(ModelRecord)
        .where(ModelRecord.name == name, ModelRecord.checksum == checksum)
        .order_by(ModelRecord.version.desc())
        .limit(1)
    )


# --------------------------------------------------------------------------------------------------- audit


def record_event(
    s: Session,
    kind: str,
    *,
    model_name: str | None = None,
    model_version: int | None = None,
    session_id: str | None = None,
    api_key_id: int | None = None,
    detail: Mapping[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> AuditEvent:
    """Append an audit event. ``kind`` is dotted, e.g. ``"prediction.served"``; ``detail`` must be JSON-able.

    The caller decides what goes into ``detail``; by default it should describe the request (features asked
    for, counts, timings) without raw feature values.
    """
    if not kind:
        raise ValueError("event kind must not be empty")
    event = AuditEvent(
        kind=kind,
        at=at or utcnow(),
        model_name=model_name,
        model_version=model_version,
        session_id=session_id,
        api_key_id=api_key_id,
        detail=dict(detail or {}),
    )
    s.add(event)
    s.flush()
    return event


def list_events(
    s: Session,
    kind: str | None = None,
    session_id: str | None = None,
    limit: int = 100,
    *,
    model_name: str | None = None,
    since: dt.datetime | None = None,
) -> list[AuditEvent]:
    """Audit events, newest first, optionally filtered; at most ``limit`` (capped at 10 000)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    query = select(AuditEvent)
    if kind is not None:
        query = query.where(AuditEvent.kind == kind)
    if session_id is not None:
        query = query.where(AuditEvent.session_id == session_id)
    if model_name is not None:
        query = query.where(AuditEvent.model_name == model_name)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    query = query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(min(limit, MAX_EVENT_LIMIT))
    return list(s.scalars(query))


# ---------------------------------------------------------------------------------------------- batch jobs

_UPDATABLE_JOB_FIELDS = frozenset(
    {
        "status",
        "total_rows",
        "processed_rows",
        "failed_rows",
        "errors",
        "input_path",
        "result_path",
        "message",
        "finished_at",
        "parameters",
    }
)
MAX_REASON_CHARS = 500  # a stored error's reason (it may quote a cell, and a cell may be long)


def _normalize_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for error in errors:
        if len(out) >= MAX_STORED_ERRORS:
            break
        row = error.get("row")
        column = error.get("column")
        out.append(
            {
                "row": None if row is None else int(row),
                "column": None if column is None else str(column),
                "reason": str(error.get("reason", ""))[:MAX_REASON_CHARS],
            }
        )
    return out


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")


def create_batch_job(
    s: Session,
    model_name: str,
    model_version: int,
    operation: str,
    *,
    input_path: str | None = None,
    total_rows: int | None = None,
    api_key_id: int | None = None,
    job_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    failed_because: str | None = None,
) -> BatchJob:
    """A new job in status ``queued`` (or, with ``failed_because``, a refused one: ``failed`` with that message).
    ``job_id`` defaults to a fresh uuid4 hex; ``parameters`` are what a resumed run needs (samples, seed...)."""
    _check_choice("operation", operation, BATCH_OPERATIONS)
    now = utcnow()
    job = BatchJob(
        id=job_id or new_job_id(),
        model_name=model_name,
        model_version=model_version,
        operation=operation,
        status="failed" if failed_because else "queued",
        parameters=dict(parameters or {}),
        takeovers=0,
        total_rows=total_rows,
        processed_rows=0,
        failed_rows=0,
        errors=[],
        input_path=None if input_path is None else str(input_path),
        result_path=None,
        message=failed_because,
        created_at=now,
        updated_at=now,
        finished_at=now if failed_because else None,
        api_key_id=api_key_id,
    )
    s.add(job)
    s.flush()
    return job


def update_batch_job(s: Session, job_id: str, **fields: Any) -> BatchJob:
    """Set fields of a job (``status``, counters, ``errors``, paths, ``message``, ``finished_at``).

    ``errors`` replaces the stored list and is cut to :data:`MAX_STORED_ERRORS` entries of
    ``{row, column, reason}`` (use :func:`add_batch_job_errors` to append). ``updated_at`` is always set;
    ``finished_at`` is set when the status becomes ``succeeded`` or ``failed`` unless given.
    """
    unknown = set(fields) - _UPDATABLE_JOB_FIELDS
    if unknown:
        raise ValueError(f"cannot update batch job field(s) {sorted(unknown)}")
    job = s.get(BatchJob, job_id)
    if job is None:
        raise NotFoundError(f"no batch job {job_id!r}")
    if "status" in fields:
        _check_choice("status", fields["status"], BATCH_STATUSES)
    for counter in ("total_rows", "processed_rows", "failed_rows"):
        value = fields.get(counter)
        if value is not None and value < 0:
            raise ValueError(f"{counter} must not be negative")
    if "errors" in fields:
        fields["errors"] = _normalize_errors(fields["errors"] or [])
    now = utcnow()
    for key, value in fields.items():
        setattr(job, key, value)
    if fields.get("status") in BATCH_FINAL_STATUSES and "finished_at" not in fields and job.finished_at is None:
        job.finished_at = now
    job.updated_at = now
    s.flush()
    return job


def add_batch_job_errors(s: Session, job_id: str, errors: Iterable[Mapping[str, Any]]) -> BatchJob:
    """Append ``{row, column, reason}`` entries to a job's stored errors, keeping at most the first 1000."""
    job = s.get(BatchJob, job_id)
    if job is None:
        raise NotFoundError(f"no batch job {job_id!r}")
    stored = list(job.errors or [])
    room = MAX_STORED_ERRORS - len(stored)
    if room > 0:
        # A new list object, so the ORM sees the change (plain JSON columns do not track in-place mutation).
        job.errors = stored + _normalize_errors(itertools.islice(errors, room))
        job.updated_at = utcnow()
        s.flush()
    return job


def get_batch_job(s: Session, job_id: str) -> BatchJob | None:
    return s.get(BatchJob, job_id)


def list_batch_jobs(s: Session, status: str | None = None, limit: int = 100) -> list[BatchJob]:
    """Jobs, newest first, optionally only those with ``status``."""
    query = select(BatchJob).order_by(BatchJob.created_at.desc(), BatchJob.id).limit(limit)
    if status is not None:
        _check_choice("status", status, BATCH_STATUSES)
        query = query.where(BatchJob.status == status)
    return list(s.scalars(query))


# A job's lease: the process scoring it says so, and until when; the conditional updates below are how two
# processes never score the same job at once, and how a job whose process died is taken over.


def _claimable(now: dt.datetime):
    return (BatchJob.status.in_(("queued", "running"))) & (
        (BatchJob.lease_owner.is_(None)) | (BatchJob.lease_expires_at < now)
    )


def claimable_jobs(s: Session, now: dt.datetime, limit: int = 10) -> list[str]:
    """Ids of unfinished jobs nobody holds (queued, or leased by a process whose lease ran out), in the order they
    joined the queue (`updated_at`: a job handed back to let another key's job run queues again at the end)."""
    query = (
        select(BatchJob.id)
        .where(_claimable(now))
        .order_by(BatchJob.updated_at, BatchJob.created_at, BatchJob.id)
        .limit(limit)
    )
    return list(s.scalars(query))


def others_waiting(s: Session, api_key_id: int | None, now: dt.datetime) -> bool:
    """Whether a job of another key (or of none, when this one has a key) waits to be taken."""
    other = (
        BatchJob.api_key_id.is_not(None)
        if api_key_id is None
        else (BatchJob.api_key_id.is_(None) | (BatchJob.api_key_id != api_key_id))
    )
    return s.scalar(select(BatchJob.id).where(_claimable(now), other).limit(1)) is not None


def claim_batch_job(s: Session, job_id: str, owner: str, until: dt.datetime) -> BatchJob | None:
    """Takes the job for `owner` until `until` if nobody holds it; the job (now ``running``), or None. Taking over
    from a process whose lease ran out counts in ``takeovers``."""
    now = utcnow()
    job = s.get(BatchJob, job_id, with_for_update=True, populate_existing=True)
    if job is None or job.status not in ("queued", "running"):
        return None
    if job.lease_owner is not None and job.lease_expires_at is not None and job.lease_expires_at >= now:
        return None
    if job.lease_owner is not None:
        job.takeovers = (job.takeovers or 0) + 1
    job.status, job.lease_owner, job.lease_expires_at, job.updated_at = "running", owner, until, now
    s.flush()
    return job


def renew_leases(s: Session, owner: str, until: dt.datetime) -> int:
    """Extends every lease `owner` holds on a running job; how many."""
    result = s.execute(
        update(BatchJob)
        .where(BatchJob.lease_owner == owner, BatchJob.status == "running")
        .values(lease_expires_at=until)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def held_batch_job(s: Session, job_id: str, owner: str) -> BatchJob | None:
    """The job, locked, if `owner` still holds it and it is running (else it was cancelled or taken over)."""
    job = s.get(BatchJob, job_id, with_for_update=True, populate_existing=True)
    if job is None or job.lease_owner != owner or job.status != "running":
        return None
    return job


def release_batch_job(s: Session, job_id: str, owner: str, message: str) -> bool:
    """Hands a job `owner` holds back to the queue (e.g. at shutdown), to be resumed by any process."""
    job = held_batch_job(s, job_id, owner)
    if job is None:
        return False
    job.status, job.lease_owner, job.lease_expires_at, job.message = "queued", None, None, message
    job.updated_at = utcnow()
    s.flush()
    return True


def finish_batch_job(s: Session, job_id: str, owner: str, **fields: Any) -> bool:
    """Sets `fields` (a final status among them) on a job `owner` holds, and ends the lease; False if not held."""
    job = held_batch_job(s, job_id, owner)
    if job is None:
        return False
    update_batch_job(s, job_id, **fields)
    job.lease_owner, job.lease_expires_at = None, None
    s.flush()
    return True


def cancel_batch_job(s: Session, job_id: str) -> BatchJob | None:
    """Cancels an unfinished job (whoever holds it stops at its next checkpoint); the job, or None if finished."""
    job = s.get(BatchJob, job_id, with_for_update=True, populate_existing=True)
    if job is None or job.status in BATCH_FINAL_STATUSES:
        return None
    now = utcnow()
    job.status, job.message, job.finished_at, job.updated_at = "cancelled", "cancelled on request", now, now
    job.lease_owner, job.lease_expires_at = None, None
    s.flush()
    return job


def finished_jobs_before(s: Session, before: dt.datetime, limit: int = 100) -> list[BatchJob]:
    """Finished jobs that finished before `before` (the retention policy deletes them), oldest first."""
    query = (
        select(BatchJob)
        .where(BatchJob.status.in_(BATCH_FINAL_STATUSES), BatchJob.finished_at < before)
        .order_by(BatchJob.finished_at)
        .limit(limit)
    )
    return list(s.scalars(query))


def finished_jobs_with_input(s: Session, limit: int = 100) -> list[BatchJob]:
    """Finished jobs whose input is still recorded (its file is deleted, then the path cleared)."""
    query = (
        select(BatchJob).where(BatchJob.status.in_(BATCH_FINAL_STATUSES), BatchJob.input_path.is_not(None)).limit(limit)
    )
    return list(s.scalars(query))


def delete_batch_job(s: Session, job_id: str) -> bool:
    job = s.get(BatchJob, job_id)
    if job is None:
        return False
    s.delete(job)
    s.flush()
    return True


def batch_job_ids(s: Session, ids: Iterable[str]) -> set[str]:
    """Which of `ids` are jobs (for cleaning up folders whose job is gone)."""
    ids = list(ids)
    return set(s.scalars(select(BatchJob.id).where(BatchJob.id.in_(ids)))) if ids else set()


# ------------------------------------------------------------------------------------------------ API keys


def create_api_key(s: Session, name: str, scopes: Iterable[str]) -> tuple[ApiKeyRecord, str]:
    """A new key: returns the record and the plaintext key, which is shown once and never stored."""
    if not name:
        raise ValueError("API key name must not be empty")
    normalized = security.normalize_scopes(scopes)
    plaintext = security.generate_api_key()
    record = ApiKeyRecord(
        name=name,
        prefix=security.key_prefix(plaintext),
        key_hash=security.hash_api_key(plaintext),
        scopes=normalized,
        created_at=utcnow(),
        revoked_at=None,
    )
    s.add(record)
    s.flush()
    return record, plaintext


def verify_api_key(s: Session, plaintext: str) -> ApiKeyRecord | None:
    """The live (unrevoked) key record matching ``plaintext``, else ``None``.

    Candidates are looked up by their clear prefix; the hashes are compared in constant time.
    """
    if not plaintext or not security.looks_like_api_key(plaintext):
        return None
    candidates = s.scalars(select(ApiKeyRecord).where(ApiKeyRecord.prefix == security.key_prefix(plaintext)))
    match = None
    for record in candidates:
        if security.verify_key_hash(plaintext, record.key_hash) and record.revoked_at is None:
            match = record
    return match


def revoke_api_key(s: Session, key_id: int) -> ApiKeyRecord:
    """Revoke a key (idempotent: the first revocation time is kept)."""
    record = s.get(ApiKeyRecord, key_id)
    if record is None:
        raise NotFoundError(f"no API key {key_id}")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
        s.flush()
    return record


def get_api_key(s: Session, key_id: int) -> ApiKeyRecord | None:
    return s.get(ApiKeyRecord, key_id)


def list_api_keys(s: Session, *, include_revoked: bool = True) -> list[ApiKeyRecord]:
    """Key records (never the keys themselves), oldest first."""
    query = select(ApiKeyRecord).order_by(ApiKeyRecord.id)
    if not include_revoked:
        query = query.where(ApiKeyRecord.revoked_at.is_(None))
    return list(s.scalars(query))
