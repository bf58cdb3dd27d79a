"""Batch jobs survive their process (issue #11), with real service processes on one PostgreSQL and one data
directory: a process killed (-9) in the middle of a job, whose lease runs out and another process takes it over; a
process stopped (SIGTERM) in the middle of a job, which checkpoints and hands it back, resumed by the next. Nothing
scored is lost or scored twice, and the results are the same as an uninterrupted run's."""

from __future__ import annotations

import io
import shutil
import signal
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.app.api.test_api_batch import csv_bytes, table
from tests.app.service import MODEL, SAMPLES, TARGET, ServiceProcess, artifact_dir, pg_schema

ROWS = 1024  # 8 chunks of 128


def job_row(url: str, job_id: str):
    from hhvaem.app.db import repository as repo
    from hhvaem.app.db.database import sql_engine, transaction_factory

    engine = sql_engine(url)
    try:
        with transaction_factory(engine)() as s:
            return repo.get_batch_job(s, job_id)
    finally:
        engine.dispose()


def upload(service: ServiceProcess, content: bytes) -> str:
    data = {"model": MODEL, "operation": "predict", "samples": str(SAMPLES)}
    r = httpx.post(service.url + "/v1/batch-jobs", files={"file": ("t.csv", content)}, data=data, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def until(condition, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def progress(service: ServiceProcess, job_id: str) -> dict:
    return httpx.get(f"{service.url}/v1/batch-jobs/{job_id}", timeout=30).json()


def result_text(service: ServiceProcess, job_id: str) -> str:
    r = httpx.get(f"{service.url}/v1/batch-jobs/{job_id}/result", timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def test_a_job_outlives_kill_and_sigterm(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    artifact = Path(artifact_dir(request))
    shutil.copytree(artifact, tmp_path / "models" / MODEL)
    content = csv_bytes(table(ROWS, seed=12))
    with pg_schema() as url:
        env = {
            "HHVAEM_DATABASE_URL": url,
            "HHVAEM_DATA_DIR": str(tmp_path / "data"),
            "HHVAEM_MODELS_DIR": str(tmp_path / "models"),
            "HHVAEM_DEFAULT_SAMPLES": str(SAMPLES),
            "HHVAEM_BATCH_LEASE_SECONDS": "2",
        }
        processes = []
        try:
            # 1. kill -9 in the middle of a job: its lease runs out, the next process takes it over.
            first = ServiceProcess(env, tmp_path).start()
            processes.append(first)
            killed = upload(first, content)
            until(lambda: progress(first, killed)["processed_rows"] >= 128, 60, "a first checkpoint")
            first.signal(signal.SIGKILL)
            first.wait()
            row = job_row(url, killed)
            assert row.status == "running" and row.processed_rows < ROWS, row  # left as it was, with a lease
            second = ServiceProcess(env, tmp_path).start()
            processes.append(second)
            done = until(lambda: progress(second, killed)["status"] == "succeeded", 90, "the takeover", 0.2)
            assert done and job_row(url, killed).takeovers == 1

            # 2. SIGTERM in the middle of a job: the chunk being scored is finished and recorded, the job handed back.
            stopped = upload(second, content)
            until(lambda: progress(second, stopped)["processed_rows"] >= 128, 60, "a first checkpoint")
            second.signal(signal.SIGTERM)
            assert second.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
            assert "Application shutdown complete" in second.output()
            row = job_row(url, stopped)
            assert row.status == "queued" and row.lease_owner is None, row
            assert f"interrupted by a shutdown after {row.processed_rows} of {ROWS} rows" in row.message
            assert 128 <= row.processed_rows < ROWS and row.processed_rows % 128 == 0
            third = ServiceProcess(env, tmp_path).start()
            processes.append(third)
            until(lambda: progress(third, stopped)["status"] == "succeeded", 90, "the resumption", 0.2)
            assert job_row(url, stopped).takeovers == 0  # handed back, not taken over

            # Both interrupted at different rows, in different ways: the same result, every row scored once.
            a, b = result_text(third, killed), result_text(third, stopped)
            assert a == b
            out = pd.read_csv(io.StringIO(a))
            assert len(out) == ROWS and out[f"{TARGET}__mean"].notna().all()
            final = progress(third, stopped)
            assert final["processed_rows"] == ROWS and final["failed_rows"] == 0
        finally:
            for p in processes:
                p.stop()
    # ... and the same as scoring the table in one go, in this process (chunk by chunk, the chunks' own seeds).
    from hhvaem.app.engine import Engine
    from hhvaem.app.engine.scoring import score_frame

    engine = Engine(artifact, threads=1)
    df = pd.read_csv(io.BytesIO(content))
    expected, _ = score_frame(engine, df.iloc[:128].reset_index(drop=True), "predict", SAMPLES, 128, 0)
    expected = pd.read_csv(io.StringIO(expected.to_csv(index=False)))  # as a CSV result reads back
    got = out.iloc[:128].reset_index(drop=True)
    pd.testing.assert_frame_equal(got[list(expected.columns)], expected, check_dtype=False, atol=1e-9)
