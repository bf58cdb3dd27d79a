"""Batch scoring jobs over real HTTP: CSV / CSV.gz / Parquet uploads, polling, progress, results, bad rows, and the
upload errors (type, unreadable, size), against PostgreSQL (+ a SQLite smoke run)."""

from __future__ import annotations

import gzip
import io
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.app.service import (
    FEATURES,
    MODEL,
    SAMPLES,
    TARGET,
    Service,
    declared_length_request,
    http_client,
    problem,
    reason,
)

JOBS = "/v1/batch-jobs"


def table(n: int, seed: int = 0, holes: float = 0.2) -> pd.DataFrame:
    """`n` plausible rows of the demo model's features (no target), with holes."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "age": rng.integers(20, 80, n).astype(float),
            "sex": rng.integers(1, 3, n).astype(float),
            "bmi": rng.uniform(18, 42, n).round(1),
            "blood_pressure": rng.uniform(60, 130, n).round(0),
            "total_cholesterol": rng.uniform(100, 300, n).round(0),
            "ldl": rng.uniform(50, 200, n).round(1),
            "hdl": rng.uniform(25, 90, n).round(0),
            "cholesterol_ratio": rng.uniform(2, 9, n).round(2),
            "triglycerides": rng.uniform(30, 450, n).round(0),
            "blood_sugar": rng.uniform(60, 140, n).round(0),
        }
    )
    mask = rng.random(df.shape) < holes
    mask[:, 0] = False  # every row keeps its age
    return df.mask(mask)


def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def upload(c: httpx.Client, name: str, content: bytes, **form) -> httpx.Response:
    data = {"model": MODEL, "samples": str(SAMPLES), **{k: str(v) for k, v in form.items()}}
    return c.post(JOBS, files={"file": (name, content, "application/octet-stream")}, data=data)


def wait(c: httpx.Client, job_id: str, timeout: float = 120) -> tuple[dict, list[dict]]:
    """Polls a job until it is final; returns (final state, every state seen)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.get(f"{JOBS}/{job_id}")
        assert r.status_code == 200, r.text
        seen.append(r.json())
        if seen[-1]["status"] in ("succeeded", "failed"):
            return seen[-1], seen
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {seen[-1]}")


def result(c: httpx.Client, job: dict) -> pd.DataFrame:
    r = c.get(job["result_url"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
    return pd.read_csv(io.StringIO(r.text))


def test_csv_job_with_bad_rows(c: httpx.Client) -> None:
    df = table(12).astype(object)
    df.loc[2, "sex"] = 7  # data row 3
    df.loc[4, "bmi"] = "abc"  # data row 5
    r = upload(c, "patients.csv", csv_bytes(df), operation="both")
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] in ("queued", "running", "succeeded") and created["total_rows"] == 12
    assert created["model"] == MODEL and created["operation"] == "both" and created["version"] >= 1

    job, _ = wait(c, created["id"])
    assert job["status"] == "succeeded", job
    assert job["processed_rows"] == job["total_rows"] == 12 and job["failed_rows"] == 2
    assert job["message"] == "10 rows scored, 2 rows rejected"
    assert job["finished_at"] and job["result_url"] == f"{JOBS}/{job['id']}/result"
    errors = {(e["row"], e["column"]): e["reason"] for e in job["errors"]}
    assert set(errors) == {(3, "sex"), (5, "bmi")}
    assert "unknown category 7" in errors[(3, "sex")] and "abc" in errors[(5, "bmi")]

    out = result(c, job)
    assert len(out) == 12 and list(out.columns[: len(FEATURES)]) == list(FEATURES)
    stats = [f"{TARGET}__{s}" for s in ("mean", "std", "q05", "q50", "q95")]
    assert set(stats) <= set(out.columns) and "error" in out.columns
    good = out.drop(index=[2, 4])
    assert good["error"].isna().all() and out.loc[[2, 4], "error"].notna().all()
    assert out.loc[[2, 4], f"{TARGET}__mean"].isna().all()
    assert good[list(FEATURES)].notna().all().all()  # holes filled in every scored row
    assert (good[f"{TARGET}__mean"] > 0).all()
    assert (good[f"{TARGET}__q05"] <= good[f"{TARGET}__q50"]).all()
    assert (good[f"{TARGET}__q50"] <= good[f"{TARGET}__q95"]).all()
    holes = table(12).isna()
    assert any(f"{col}__std" in out.columns for col in holes.columns[holes.any()] if col != "sex")


@pytest.mark.parametrize("kind", ["parquet", "csv.gz"])
def test_parquet_and_gzip_uploads(c: httpx.Client, kind: str) -> None:
    df = table(9, seed=1)
    if kind == "parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        content = buf.getvalue()
    else:
        content = gzip.compress(csv_bytes(df))
    r = upload(c, f"patients.{kind}", content, operation="predict")
    assert r.status_code == 202, r.text
    job, _ = wait(c, r.json()["id"])
    assert job["status"] == "succeeded" and job["failed_rows"] == 0 and job["errors"] == []
    out = result(c, job)
    assert len(out) == 9 and (out[f"{TARGET}__mean"] > 0).all()
    pd.testing.assert_frame_equal(out[list(FEATURES)], df, check_dtype=False)  # predict leaves the inputs alone


def test_impute_job_fills_holes(c: httpx.Client) -> None:
    df = table(6, seed=2, holes=0.4)
    r = upload(c, "patients.csv", csv_bytes(df), operation="impute")
    job, _ = wait(c, r.json()["id"])
    assert job["status"] == "succeeded" and job["failed_rows"] == 0 and job["errors"] == []
    out = result(c, job)
    assert out[list(FEATURES)].notna().all().all()
    observed = df.notna().to_numpy()
    assert (out[list(FEATURES)].to_numpy()[observed] == df.to_numpy()[observed]).all()  # observed cells kept
    assert (out.loc[df["bmi"].isna().to_numpy(), "bmi"] > 0).all()
    assert f"{TARGET}__q05" not in out.columns  # no prediction columns for impute only


def test_plausibility_job_adds_its_columns(c: httpx.Client) -> None:
    df = table(4, seed=3, holes=0.0)
    df.loc[1, "ldl"] = 1200.0  # ten times what LDL is
    job, _ = wait(c, upload(c, "p.csv", csv_bytes(df), operation="predict", plausibility="true").json()["id"])
    assert job["status"] == "succeeded", job
    out = result(c, job)
    assert {f"{f}__plausibility" for f in FEATURES} <= set(out.columns) and "unusual" in out.columns
    assert out.loc[1, "ldl__plausibility"] < 0.01 and "ldl" in out.loc[1, "unusual"].split(",")
    r = upload(c, "p.csv", csv_bytes(df), operation="impute", plausibility="true", imputations=2)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "plausibility"


def test_ignored_extra_column_is_reported(c: httpx.Client) -> None:
    df = table(3, seed=5)
    df["shoe_size"] = 42  # not a model column: reported once, ignored
    job, _ = wait(c, upload(c, "patients.csv", csv_bytes(df), operation="predict").json()["id"])
    assert job["status"] == "succeeded" and (result(c, job)["shoe_size"] == 42).all()
    assert {"row": None, "column": "shoe_size", "reason": "not a column of the model; ignored"} in job["errors"]


def test_concurrent_uploads(svc: Service) -> None:
    content = csv_bytes(table(4, seed=6))
    assert all(s == 202 for s in concurrent_uploads(svc, content, 8).values())


def concurrent_uploads(svc: Service, content: bytes, n: int) -> dict[str, int]:
    """`n` uploads at once (own connections); {job id or "#i": status}, each job waited for when accepted."""
    import asyncio

    async def one(i: int) -> tuple[str, int]:
        async with svc.async_client() as ac:
            files = {"file": ("p.csv", content)}
            r = await ac.post(JOBS, files=files, data={"model": MODEL, "samples": str(SAMPLES), "operation": "predict"})
            return (r.json()["id"] if r.status_code == 202 else f"#{i}"), r.status_code

    async def all_at_once() -> list[tuple[str, int]]:
        return await asyncio.gather(*(one(i) for i in range(n)))

    codes = dict(asyncio.run(all_at_once()))
    assert list(codes.values()) == [202] * n, codes
    c = svc.client()
    for job_id in codes:
        job, _ = wait(c, job_id, timeout=60)
        assert job["status"] == "succeeded", job
    return codes


def test_concurrent_uploads_on_sqlite(lite: Service) -> None:
    # Deferred SQLite transactions that read, then write, fail at once (SQLITE_BUSY_SNAPSHOT, no busy wait) when
    # another writer commits in between: concurrent uploads answer 500 and jobs fail or stay "running" forever.
    concurrent_uploads(lite, csv_bytes(table(4, seed=6)), 12)


def test_progress_and_result_before_done_is_409(c: httpx.Client) -> None:
    df = table(300, seed=3)
    r = upload(c, "many.csv", csv_bytes(df), operation="predict")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    early = c.get(f"{JOBS}/{job_id}/result")
    body = problem(early, 409)
    assert body["status_of_job"] in ("queued", "running") and "poll it" in body["detail"]
    job, seen = wait(c, job_id)
    assert job["status"] == "succeeded" and job["processed_rows"] == job["total_rows"] == 300
    progress = [s["processed_rows"] for s in seen]
    assert progress == sorted(progress)  # never goes backwards
    assert all(s["total_rows"] == 300 for s in seen)
    assert {s["status"] for s in seen} <= {"queued", "running", "succeeded"}
    assert len(result(c, job)) == 300


def test_unreadable_upload_is_422_and_its_failed_job_is_409(svc: Service, c: httpx.Client) -> None:
    from hhvaem.app.db import repository as repo

    body = problem(upload(c, "broken.parquet", b"PAR1 this is not parquet"), 422, "file")
    assert "cannot read parquet file" in reason(body, "file")
    with svc.db() as s:
        failed = [j for j in repo.list_batch_jobs(s, status="failed") if "cannot read parquet" in (j.message or "")]
    assert failed, "the refused upload is recorded as a failed job"
    job = c.get(f"{JOBS}/{failed[0].id}").json()
    assert job["status"] == "failed" and job["result_url"] is None and "cannot read" in job["message"]
    body = problem(c.get(f"{JOBS}/{failed[0].id}/result"), 409)
    assert body["status_of_job"] == "failed"


def test_upload_error_names_the_uploaded_file(c: httpx.Client) -> None:
    why = reason(problem(upload(c, "my-table.csv", b""), 422, "file"), "file")
    assert "my-table.csv" in why, why


def test_upload_errors(c: httpx.Client) -> None:
    good = csv_bytes(table(3))
    assert "expected a .csv" in reason(problem(upload(c, "patients.txt", good), 422, "file"), "file")
    assert "empty" in reason(problem(upload(c, "empty.csv", b""), 422, "file"), "file")
    assert "no data rows" in reason(problem(upload(c, "header.csv", b"age,bmi\n"), 422, "file"), "file")
    dup = b"age,age\n1,2\n"
    assert "more than once" in reason(problem(upload(c, "dup.csv", dup), 422, "file"), "file")
    assert "cannot read csv" in reason(problem(upload(c, "zip.csv.gz", b"not gzip"), 422, "file"), "file")
    problem(upload(c, "patients.csv", good, operation="explain"), 422, "operation")
    problem(upload(c, "patients.csv", good, samples=65), 422, "samples")
    problem(upload(c, "patients.csv", good, samples=1), 422, "samples")
    problem(upload(c, "patients.csv", good, version=99), 404)
    problem(c.post(JOBS, files={"file": ("p.csv", good)}, data={"model": "nope"}), 404)
    problem(c.post(JOBS, data={"model": MODEL}), 422, "file")
    problem(c.post(JOBS, files={"file": ("p.csv", good)}), 422, "model")
    problem(c.post(JOBS, json={"model": MODEL}), 422)
    problem(c.get(f"{JOBS}/no-such-job"), 404)
    problem(c.get(f"{JOBS}/no-such-job/result"), 404)


def test_upload_size_limits(svc: Service, c: httpx.Client) -> None:
    limit = svc.settings.max_upload_bytes
    assert limit > svc.settings.max_body_bytes
    status, headers, raw = declared_length_request(svc.url, JOBS, limit + 1)
    assert status == 413 and headers["content-type"].startswith("application/problem+json")
    assert b"upload exceeds the limit" in raw
    with http_client(svc.url) as fresh:  # a real upload just over the limit
        try:
            r = upload(fresh, "big.csv", b"age\n" + b"42\n" * (limit // 3 + 10))
        except httpx.TransportError:  # the server may close before the client has sent everything
            pass
        else:
            problem(r, 413)
    # An upload over the JSON body limit but under the upload limit is fine (a wide column pads a few rows).
    df = table(5, seed=4)
    df["notes"] = "x" * (svc.settings.max_body_bytes // 4)
    content = csv_bytes(df)
    assert svc.settings.max_body_bytes < len(content) < limit
    r = upload(c, "wide.csv", content, operation="predict")
    assert r.status_code == 202, r.text
    job, _ = wait(c, r.json()["id"])
    assert job["status"] == "succeeded" and job["failed_rows"] == 0
