"""Batch scoring jobs: upload a CSV or Parquet table, score it in the background, fetch the result."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.deps import Inferrer, State, check_samples, resolve_model
from hhvaem.app.api.problems import Problem, not_found, problem_responses, unprocessable
from hhvaem.app.api.schemas import MAX_VERSION, BatchJobOut
from hhvaem.app.db import repository as repo
from hhvaem.app.engine.scoring import OPERATIONS, score_frame
from hhvaem.model.io.tables import TableError, read_table

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/batch-jobs", tags=["batch"])
SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def _out(job) -> dict:
    done = job.status == "succeeded"
    return {
        "id": job.id,
        "model": job.model_name,
        "version": job.model_version,
        "operation": job.operation,
        "status": job.status,
        "total_rows": job.total_rows,
        "processed_rows": job.processed_rows,
        "failed_rows": job.failed_rows,
        "errors": job.errors or [],
        "message": job.message,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "result_url": f"/v1/batch-jobs/{job.id}/result" if done else None,
    }


@router.post("", status_code=202, response_model=BatchJobOut, responses=problem_responses(401, 403, 404, 413, 422))
async def create_job(
    state: State,
    caller: Inferrer,
    file: Annotated[UploadFile, File(description="The table: .csv, .csv.gz or .parquet with a header row.")],
    model: Annotated[str, Form(description="Registered model name.")],
    operation: Annotated[str, Form(description="impute | predict | both")] = "both",
    samples: Annotated[int | None, Form(ge=2)] = None,
    version: Annotated[int | None, Form(ge=1, le=MAX_VERSION)] = None,
):
    """Accepts a table and scores it in the background; poll the job, then fetch `result_url` (CSV)."""
    if operation not in OPERATIONS:
        raise unprocessable([{"field": "operation", "reason": f"must be one of {', '.join(OPERATIONS)}"}])
    samples = check_samples(state.settings, samples)
    m = await run_in_threadpool(resolve_model, state.registry, model, version)
    name = Path(file.filename or "upload.csv").name
    if not name.lower().endswith(SUFFIXES):
        raise unprocessable([{"field": "file", "reason": f"{name!r}: expected a .csv, .csv.gz or .parquet file"}])
    root = state.settings.data_dir / "batch"

    def save_and_check():
        with state.database.transaction() as tx:
            job = repo.create_batch_job(tx, m.name, m.version, operation, api_key_id=caller.key_id)
            job_id = job.id
        folder = root / job_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ("input" + "".join(Path(name).suffixes[-2:]))
        with open(path, "wb") as f:
            shutil.copyfileobj(file.file, f)
        try:
            df = read_table(path)
        except TableError as e:
            shutil.rmtree(folder, ignore_errors=True)
            reason = str(e).replace(str(path), name).replace(path.name, name)  # the user's file, not our copy
            with state.database.transaction() as tx:
                repo.update_batch_job(tx, job_id, status="failed", message=reason)
            return None, reason
        with state.database.transaction() as tx:
            job = repo.update_batch_job(tx, job_id, input_path=str(path), total_rows=len(df))
            return job, df

    job, df = await run_in_threadpool(save_and_check)
    if job is None:
        raise unprocessable([{"field": "file", "reason": df}])
    task = asyncio.create_task(_run(state, job.id, m.engine, df, operation, samples))
    _tasks(state).add(task)
    task.add_done_callback(_tasks(state).discard)
    await state.audit("batch.created", caller, (m.name, m.version), detail={"job": job.id, "rows": len(df)})
    return _out(job)


def _tasks(state) -> set:
    if not hasattr(state, "_batch_tasks"):
        state._batch_tasks = set()
    return state._batch_tasks


async def _run(state, job_id: str, engine, df, operation: str, samples: int | None) -> None:
    folder = state.settings.data_dir / "batch" / job_id

    def update(**fields):
        with state.database.transaction() as tx:
            repo.update_batch_job(tx, job_id, **fields)

    def progress(done: int, total: int, new_errors: list[dict]) -> None:
        with state.database.transaction() as tx:
            if new_errors:
                repo.add_batch_job_errors(tx, job_id, new_errors)
            repo.update_batch_job(tx, job_id, processed_rows=done)

    def work():
        update(status="running")
        out, errors = score_frame(engine, df, operation, samples, progress=progress)
        result = folder / "result.csv"
        out.to_csv(result, index=False)
        failed = len({e["row"] for e in errors if e["row"] is not None})
        table_notes = [e for e in errors if e["row"] is None]  # e.g. ignored extra columns, reported once
        with state.database.transaction() as tx:
            if table_notes:
                repo.add_batch_job_errors(tx, job_id, table_notes)
            repo.update_batch_job(
                tx,
                job_id,
                status="succeeded",
                result_path=str(result),
                failed_rows=failed,
                message=f"{len(df) - failed} rows scored, {failed} rows rejected",
            )

    try:
        await run_in_threadpool(work)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # the job fails with a reason; the service goes on
        log.error("batch job %s failed: %s: %s", job_id, type(e).__name__, e)
        try:
            await run_in_threadpool(update, status="failed", message=f"scoring failed ({type(e).__name__})")
        except Exception as again:  # the database is down too: the log is all we can leave
            log.error("batch job %s: could not record the failure: %s", job_id, type(again).__name__)


async def shutdown(state) -> None:
    tasks = list(_tasks(state))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _job(state, job_id: str, caller):
    def get():
        with state.database.read() as tx:
            return repo.get_batch_job(tx, job_id)

    job = await run_in_threadpool(get)
    if job is None or (job.api_key_id is not None and job.api_key_id != caller.key_id):
        raise not_found("batch job", job_id)
    return job


@router.get("/{job_id}", response_model=BatchJobOut, responses=problem_responses(401, 403, 404))
async def get_job(job_id: str, state: State, caller: Inferrer):
    return _out(await _job(state, job_id, caller))


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={200: {"content": {"text/csv": {}}}, **problem_responses(401, 403, 404, 409)},
)
async def get_result(job_id: str, state: State, caller: Inferrer):
    job = await _job(state, job_id, caller)
    if job.status != "succeeded" or not job.result_path:
        raise Problem(
            409,
            "Result not ready",
            f"Job {job_id} is {job.status}; poll it until it has succeeded.",
            "result-not-ready",
            status_of_job=job.status,
        )
    return FileResponse(job.result_path, media_type="text/csv", filename=f"{job_id}.csv")
