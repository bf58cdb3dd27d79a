"""SQL state: migrations, model registry, audit events, batch jobs, API keys.

Every test that takes ``db_url`` / ``db_sql_engine`` / ``db_tx`` runs on SQLite and on PostgreSQL.
"""

import datetime as dt
import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, inspect, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hhvaem.app.core.security import ADMIN, INFER
from hhvaem.app.db import repository as repo
from hhvaem.app.db.database import (
    MIGRATIONS_DIR,
    alembic_config,
    default_database_url,
    migrate,
    normalize_url,
    sql_engine,
    transaction_factory,
)
from hhvaem.app.db.models import ApiKeyRecord, Base, ModelRecord

TABLES = {"models", "audit_events", "batch_jobs", "api_keys"}
REPO_ROOT = Path(__file__).resolve().parents[2]


def _register(s: Session, name: str = "diabetes", checksum: str = "c1", **kwargs) -> ModelRecord:
    return repo.register_model(
        s,
        name,
        f"/artifacts/{name}/{checksum}",
        checksum,
        "1",
        kwargs.pop("metrics", {"nll_y": 1.25}),
        kwargs.pop("summary", {"targets": ["y"], "n_features": 8, "variant": "hhvaem"}),
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------- migrations


def test_migration_creates_exactly_these_tables(db_sql_engine):
    inspector = inspect(db_sql_engine)
    assert set(inspector.get_table_names()) == TABLES | {"alembic_version"}
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with db_sql_engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head


def test_no_drift_between_orm_and_migrations(db_sql_engine):
    with db_sql_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_drift_check_is_not_vacuous(db_sql_engine):
    altered = MetaData()
    for table in Base.metadata.sorted_tables:
        copy = table.to_metadata(altered)
        if table.name == "models":
            copy.append_column(Column("not_in_migration", Integer))
    with db_sql_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), altered)
    assert any(op[0] == "add_column" and op[3].name == "not_in_migration" for op in diff)


def test_migrate_is_idempotent_and_downgrade_roundtrips(fresh_db_url):
    migrate(fresh_db_url)  # already at head: nothing to do
    engine = sql_engine(fresh_db_url)
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
            command.upgrade(config, "head")
            assert TABLES <= set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_migrate_works_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = default_database_url(tmp_path / "data")
    assert url.startswith("sqlite:///") and url.endswith("/data/hhvaem.db")
    migrate(url)
    engine = sql_engine(url)
    try:
        assert TABLES <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
    assert MIGRATIONS_DIR.is_relative_to(Path(__import__("app").__file__).parent)


def test_alembic_command_line_takes_the_url_from_the_caller(tmp_path):
    url = f"sqlite:///{(tmp_path / 'cli.sqlite3').as_posix()}"
    env = {k: v for k, v in os.environ.items() if k not in ("HHVAEM_DATABASE_URL", "DATABASE_URL")}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO_ROOT / "alembic.ini"), "-x", f"url={url}", "upgrade", "head"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    engine = sql_engine(url)
    try:
        assert TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_in_memory_sqlite_is_shared_across_connections():
    engine = sql_engine("sqlite://")
    try:
        migrate(engine)
        with transaction_factory(engine).begin() as s:
            _register(s)
        with transaction_factory(engine)() as s:
            assert [m.version for m in repo.list_models(s)] == [1]
    finally:
        engine.dispose()


def test_postgres_urls_get_the_psycopg3_driver():
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


# ------------------------------------------------------------------------------------------------ registry


def test_versions_increment_per_name(db_tx):
    assert [_register(db_tx, "a", f"a{i}").version for i in range(3)] == [1, 2, 3]
    assert _register(db_tx, "b", "b0").version == 1
    assert _register(db_tx, "a", "a3").version == 4
    db_tx.commit()
    assert [(m.name, m.version) for m in repo.list_models(db_tx)] == [
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("a", 4),
        ("b", 1),
    ]
    assert [m.version for m in repo.list_models(db_tx, "b")] == [1]


def test_record_fields_round_trip(db_sql_engine):
    transactions = transaction_factory(db_sql_engine)
    with transactions.begin() as s:
        _register(s, metrics={"nll_y": 1.25, "per_split": [1.0, 1.5]})
    with transactions() as s:
        m = repo.get_model(s, "diabetes")
        assert m is not None
        assert (m.path, m.checksum, m.format_version) == ("/artifacts/diabetes/c1", "c1", "1")
        assert m.metrics == {"nll_y": 1.25, "per_split": [1.0, 1.5]}
        assert m.summary == {"targets": ["y"], "n_features": 8, "variant": "hhvaem"}
        assert m.created_at.tzinfo is not None and m.created_at.utcoffset() == dt.timedelta(0)
        assert abs(dt.datetime.now(dt.UTC) - m.created_at) < dt.timedelta(minutes=5)


def test_one_active_version_per_name(db_tx):
    v1 = _register(db_tx, "a", "x1")
    v2 = _register(db_tx, "a", "x2")
    other = _register(db_tx, "b", "y1")
    v3 = _register(db_tx, "a", "x3", activate=False)
    db_tx.commit()
    assert repo.get_model(db_tx, "a").version == 2
    assert (v1.active, v2.active, v3.active, other.active) == (False, True, False, True)
    assert {(m.name, m.version) for m in repo.list_active_models(db_tx)} == {("a", 2), ("b", 1)}
    active_a = db_tx.scalars(select(ModelRecord).where(ModelRecord.name == "a", ModelRecord.active)).all()
    assert len(active_a) == 1


def test_reactivation(db_sql_engine):
    transactions = transaction_factory(db_sql_engine)
    with transactions.begin() as s:
        for i in range(3):
            _register(s, "a", f"x{i}")
    with transactions.begin() as s:
        assert repo.activate_model(s, "a", 1).active
        assert repo.activate_model(s, "a", 1).active  # idempotent
    with transactions() as s:
        assert repo.get_model(s, "a").version == 1
        assert [m.active for m in repo.list_models(s, "a")] == [True, False, False]
        assert repo.get_model(s, "a", 3).version == 3
        assert repo.get_model(s, "a", 9) is None
        assert repo.get_model(s, "nope") is None
        with pytest.raises(repo.NotFoundError):
            repo.activate_model(s, "a", 9)
    with transactions.begin() as s:
        repo.activate_model(s, "a", 3)
    with transactions() as s:
        assert [m.active for m in repo.list_models(s, "a")] == [False, False, True]


def test_database_refuses_two_active_versions(db_tx):
    _register(db_tx, "a", "x1")
    _register(db_tx, "a", "x2", activate=False)
    db_tx.commit()
    with pytest.raises(IntegrityError):
        db_tx.execute(update(ModelRecord).where(ModelRecord.name == "a").values(active=True))
        db_tx.flush()
    db_tx.rollback()


def test_checksum_lookup_and_idempotent_registration(db_tx):
    first, created = repo.ensure_model(db_tx, "a", "/art/a", "sum1", "1", {}, {})
    assert created and first.version == 1
    again, created = repo.ensure_model(db_tx, "a", "/moved/a", "sum1", "1", {}, {})
    assert not created and again.id == first.id and again.path == "/moved/a"
    second, created = repo.ensure_model(db_tx, "a", "/art/a2", "sum2", "1", {}, {})
    assert created and second.version == 2 and second.active
    # Re-registering the old artifact at start-up neither adds a version nor steals the activation.
    old, created = repo.ensure_model(db_tx, "a", "/art/a", "sum1", "1", {}, {})
    assert not created and old.version == 1 and not old.active
    db_tx.commit()
    assert repo.find_model_by_checksum(db_tx, "a", "sum1").version == 1
    assert repo.find_model_by_checksum(db_tx, "a", "sum2").version == 2
    assert repo.find_model_by_checksum(db_tx, "a", "other") is None
    assert repo.find_model_by_checksum(db_tx, "b", "sum1") is None
    assert len(repo.list_models(db_tx, "a")) == 2


def test_a_retired_version_is_recorded_and_final(db_sql_engine):
    """Issue #22, 8: a version can be retired (when, why), never the active one, and is never activated again, by an
    admin or by a start-up that registers its artifact while its name has no active version."""
    transactions = transaction_factory(db_sql_engine)
    with transactions.begin() as s:
        _register(s, "a", "x1")
        _register(s, "a", "x2")
    with transactions.begin() as s:
        with pytest.raises(repo.StateConflict, match="is the active version: activate another version first"):
            repo.retire_model(s, "a", 2)
        with pytest.raises(repo.NotFoundError):
            repo.retire_model(s, "a", 9)
        retired = repo.retire_model(s, "a", 1, "superseded by version 2")
    when = retired.retired_at
    assert when is not None and when.tzinfo is not None
    with transactions.begin() as s:
        again = repo.retire_model(s, "a", 1, "another reason")  # idempotent: the first retirement stands
        assert (again.retired_at, again.retired_reason) == (when, "superseded by version 2")
        with pytest.raises(repo.StateConflict, match="was retired"):
            repo.activate_model(s, "a", 1)
    with transactions.begin() as s:  # the name left without an active version, then its old artifact at start-up
        s.execute(update(ModelRecord).where(ModelRecord.name == "a").values(active=False))
        record, created = repo.ensure_model(s, "a", "/artifacts/a/x1", "x1", "1", {}, {}, activate=True)
        assert not created and record.version == 1 and not record.active
    with transactions() as s:
        row = repo.get_model(s, "a", 1)
        assert (row.retired, row.retired_at, row.retired_reason, row.active) == (
            True,
            when,
            "superseded by version 2",
            False,
        )
        assert not repo.get_model(s, "a", 2).retired


def test_concurrent_registrations_get_distinct_versions(db_sql_engine):
    transactions = transaction_factory(db_sql_engine)
    failures: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with transactions.begin() as s:
                _register(s, "a", f"w{i}")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert failures == []
    with transactions() as s:
        models = repo.list_models(s, "a")
        assert [m.version for m in models] == [1, 2, 3, 4]
        assert sum(m.active for m in models) == 1


# --------------------------------------------------------------------------------------------------- audit


def test_audit_events_round_trip_and_filtering(db_sql_engine):
    transactions = transaction_factory(db_sql_engine)
    t0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    with transactions.begin() as s:
        key, _ = repo.create_api_key(s, "client", [INFER])
        repo.record_event(s, "model.registered", model_name="m", model_version=1, at=t0)
        repo.record_event(
            s,
            "session.created",
            model_name="m",
            model_version=1,
            session_id="s1",
            api_key_id=key.id,
            detail={"observed": ["age", "bmi"], "n": 2, "nested": {"ok": True, "none": None}},
            at=t0 + dt.timedelta(seconds=1),
        )
        repo.record_event(
            s,
            "session.observation",
            model_name="m",
            model_version=1,
            session_id="s1",
            detail={"feature": "glucose"},
            at=t0 + dt.timedelta(seconds=2),
        )
        repo.record_event(s, "prediction.served", model_name="m", model_version=1, session_id="s2")
        key_id = key.id
    with transactions() as s:
        events = repo.list_events(s)
        assert [e.kind for e in events] == [
            "prediction.served",
            "session.observation",
            "session.created",
            "model.registered",
        ]
        created = repo.list_events(s, kind="session.created")[0]
        assert created.detail == {"observed": ["age", "bmi"], "n": 2, "nested": {"ok": True, "none": None}}
        assert created.at == t0 + dt.timedelta(seconds=1) and created.at.tzinfo is not None
        assert (created.model_name, created.model_version, created.api_key_id) == ("m", 1, key_id)
        assert [e.kind for e in repo.list_events(s, session_id="s1")] == ["session.observation", "session.created"]
        assert repo.list_events(s, kind="session.observation", session_id="s2") == []
        assert len(repo.list_events(s, limit=2)) == 2
        assert len(repo.list_events(s, since=t0 + dt.timedelta(seconds=1))) == 3
        assert repo.list_events(s, kind="model.registered")[0].detail == {}
        with pytest.raises(ValueError):
            repo.list_events(s, limit=0)


def test_event_time_is_stored_as_utc(db_sql_engine):
    transactions = transaction_factory(db_sql_engine)
    plus_two = dt.timezone(dt.timedelta(hours=2))
    with transactions.begin() as s:
        repo.record_event(s, "x", at=dt.datetime(2024, 1, 1, 14, 0, tzinfo=plus_two))
    with transactions() as s:
        (event,) = repo.list_events(s)
        assert event.at == dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC)
        assert event.at.utcoffset() == dt.timedelta(0)


# ---------------------------------------------------------------------------------------------- batch jobs


def test_batch_job_lifecycle(db_sql_engine):
    transactions = transaction_factory(db_sql_engine)
    with transactions.begin() as s:
        job = repo.create_batch_job(s, "m", 2, "both", input_path="/in/x.csv", total_rows=10)
        job_id = job.id
        assert len(job_id) == 32 and int(job_id, 16) >= 0
        assert (job.status, job.processed_rows, job.failed_rows, job.errors, job.finished_at) == (
            "queued",
            0,
            0,
            [],
            None,
        )
        created_at = job.created_at
    with transactions.begin() as s:
        repo.update_batch_job(s, job_id, status="running")
        repo.update_batch_job(s, job_id, processed_rows=5)
        repo.add_batch_job_errors(s, job_id, [{"row": 3, "column": "age", "reason": "not a number"}])
    with transactions() as s:
        job = repo.get_batch_job(s, job_id)
        assert (job.status, job.processed_rows, job.finished_at) == ("running", 5, None)
        assert job.errors == [{"row": 3, "column": "age", "reason": "not a number"}]
        assert job.updated_at >= created_at
    with transactions.begin() as s:
        repo.update_batch_job(
            s, job_id, status="succeeded", processed_rows=10, failed_rows=1, result_path="/out/x.parquet"
        )
    with transactions() as s:
        job = repo.get_batch_job(s, job_id)
        assert job.status == "succeeded" and job.finished and job.finished_at is not None
        assert job.finished_at >= created_at and job.finished_at.tzinfo is not None
        assert (job.result_path, job.input_path, job.model_version) == ("/out/x.parquet", "/in/x.csv", 2)
        assert repo.get_batch_job(s, "0" * 32) is None
        assert [j.id for j in repo.list_batch_jobs(s, status="succeeded")] == [job_id]
        assert repo.list_batch_jobs(s, status="queued") == []


def test_batch_job_errors_are_capped(db_sql_engine):
    transactions = transaction_factory(db_sql_engine)
    many = [{"row": i, "column": "x", "reason": "bad"} for i in range(2500)]
    with transactions.begin() as s:
        a = repo.create_batch_job(s, "m", 1, "impute").id
        b = repo.create_batch_job(s, "m", 1, "predict").id
        repo.update_batch_job(s, a, status="failed", failed_rows=2500, errors=many, message="too many bad rows")
        repo.add_batch_job_errors(s, b, many[:600])
        repo.add_batch_job_errors(s, b, many[600:])
        repo.add_batch_job_errors(s, b, many[:5])  # full: nothing more is kept
    with transactions() as s:
        job_a, job_b = repo.get_batch_job(s, a), repo.get_batch_job(s, b)
        assert len(job_a.errors) == repo.MAX_STORED_ERRORS == 1000
        assert job_a.errors[0] == {"row": 0, "column": "x", "reason": "bad"} and job_a.errors[-1]["row"] == 999
        assert (job_a.failed_rows, job_a.message, job_a.finished_at is not None) == (2500, "too many bad rows", True)
        assert [e["row"] for e in job_b.errors] == list(range(1000))


def test_batch_job_validation(db_tx):
    with pytest.raises(ValueError, match="operation"):
        repo.create_batch_job(db_tx, "m", 1, "train")
    job = repo.create_batch_job(db_tx, "m", 1, "predict")
    with pytest.raises(ValueError, match="status"):
        repo.update_batch_job(db_tx, job.id, status="exploded")
    with pytest.raises(ValueError, match="model_name"):
        repo.update_batch_job(db_tx, job.id, model_name="other")
    with pytest.raises(ValueError, match="negative"):
        repo.update_batch_job(db_tx, job.id, processed_rows=-1)
    with pytest.raises(repo.NotFoundError):
        repo.update_batch_job(db_tx, "missing", status="running")
    db_tx.commit()
    # The database itself refuses a bad status.
    with pytest.raises(IntegrityError):
        db_tx.execute(text("UPDATE batch_jobs SET status = 'exploded'"))
        db_tx.flush()
    db_tx.rollback()


# ------------------------------------------------------------------------------------------------ API keys


def test_api_keys_are_hashed_at_rest(db_sql_engine):
    transactions = transaction_factory(db_sql_engine)
    with transactions.begin() as s:
        record, plaintext = repo.create_api_key(s, "ops", [ADMIN])
    assert plaintext.startswith("hhv_")
    with db_sql_engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).mappings().all()
    assert len(rows) == 1
    row = dict(rows[0])
    stored = " ".join(str(v) for v in row.values())
    assert plaintext not in stored
    assert plaintext[len("hhv_") :] not in stored
    assert row["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert row["prefix"] == plaintext[4:12] and len(row["prefix"]) == 8
    assert row["revoked_at"] is None
    with transactions() as s:
        assert s.get(ApiKeyRecord, record.id).scopes == [ADMIN]


def test_api_key_verify_and_revoke(db_sql_engine):
    transactions = transaction_factory(db_sql_engine)
    with transactions.begin() as s:
        infer_key, infer_secret = repo.create_api_key(s, "client", [INFER])
        admin_key, admin_secret = repo.create_api_key(s, "ops", [INFER, ADMIN, ADMIN])
    assert admin_key.scopes == [ADMIN, INFER]
    with transactions() as s:
        assert repo.verify_api_key(s, infer_secret).id == infer_key.id
        assert repo.verify_api_key(s, admin_secret).id == admin_key.id
        # Wrong keys: another random key, a tampered key with the right prefix, garbage, empty.
        assert repo.verify_api_key(s, "hhv_" + "A" * 43) is None
        assert repo.verify_api_key(s, infer_secret[:-1] + ("A" if infer_secret[-1] != "A" else "B")) is None
        assert repo.verify_api_key(s, infer_secret + "x") is None
        assert repo.verify_api_key(s, "not a key") is None
        assert repo.verify_api_key(s, "") is None
    with transactions.begin() as s:
        revoked = repo.revoke_api_key(s, infer_key.id)
        first_revocation = revoked.revoked_at
        assert revoked.revoked and first_revocation is not None
        assert repo.revoke_api_key(s, infer_key.id).revoked_at == first_revocation  # idempotent
        with pytest.raises(repo.NotFoundError):
            repo.revoke_api_key(s, 10_000)
    with transactions() as s:
        assert repo.verify_api_key(s, infer_secret) is None
        assert repo.verify_api_key(s, admin_secret).id == admin_key.id
        assert [k.name for k in repo.list_api_keys(s)] == ["client", "ops"]
        assert [k.name for k in repo.list_api_keys(s, include_revoked=False)] == ["ops"]
        assert repo.get_api_key(s, infer_key.id).revoked_at == first_revocation


def test_api_key_scopes_are_validated(db_tx):
    with pytest.raises(ValueError, match="unknown scope"):
        repo.create_api_key(db_tx, "x", ["root"])
    with pytest.raises(ValueError):
        repo.create_api_key(db_tx, "x", [])
    assert repo.list_api_keys(db_tx) == []


def test_replicas_starting_together_on_an_empty_postgresql_all_migrate(request):
    """Replicas of a fresh deployment start at once and each migrates at start-up: they must not race on the empty
    database (creating `alembic_version` twice failed all but one of them: docker compose, 3 API containers)."""
    import threading

    from psycopg import sql

    from tests.app.conftest import _connect

    schemas = request.getfixturevalue("_postgres_schemas")
    schema = f"hhv_test_race_{os.getpid()}"
    with _connect(schemas.base) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    schemas.created.append(schema)  # dropped at the end of the session
    url = schemas.url(schema)
    barrier, failures = threading.Barrier(6), []

    def start() -> None:
        barrier.wait()
        try:
            migrate(url)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            failures.append(repr(e))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    engine = sql_engine(url)
    try:
        assert TABLES <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    finally:
        engine.dispose()
