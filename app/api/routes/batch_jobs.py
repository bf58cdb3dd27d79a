"""Batch scoring jobs: upload a CSV or Parquet table, score it in the background, fetch the result, or cancel it.

The upload is checked before a job exists (readable, within the size and row limits, with some of the model's
columns); a refused one is recorded as a failed job with the reason and answered 422. Scoring itself is the batch
runner's (`app/services/jobs.py`): checkpointed, resumed after a restart, retried through a database outage.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.deps import Inferrer, State, check_samples, resolve_model
from hhvaem.app.api.json_body import StrictJSONRoute
from hhvaem.app.api.problems import Problem, clip, not_found, problem_responses, unprocessable
from hhvaem.app.api.schemas import JOB_ID, JOB_LINKS, MAX_VERSION, MODEL_NAME, BatchJobOut
from hhvaem.app.db import repository as repo
from hhvaem.app.db.models import new_job_id
from hhvaem.app.engine.scoring import check_columns, passthrough
from hhvaem.model.io.contract import CHUNK_ROWS
from hhvaem.model.io.tables import TableError, read_table_with_notes

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/batch-jobs", tags=["batch"], route_class=StrictJSONRoute)
SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
JobId = Annotated[str, PathParam(description="The job's id (32 hex characters).", examples=["0" * 32])]


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


def _file_name(upload: UploadFile) -> str:
    """The client's file name, safe to echo and store (no path, no control characters, bounded)."""
    name = Path(upload.filename or "upload.csv").name
    return clip("".join(ch if ch.isprintable() else "?" for ch in name), 120) or "upload.csv"


@router.post(
    "",
    status_code=202,
    response_model=BatchJobOut,
    responses={
        202: {"description": "Accepted", "links": JOB_LINKS},
        **problem_responses(401, 403, 404, 410, 413, 422, 503),
    },
)
async def create_job(
    state: State,
    caller: Inferrer,
    file: Annotated[UploadFile, File(description="The table: .csv, .csv.gz or .parquet with a header row.")],
    model: Annotated[str, Form(description="Registered model name.", pattern="^" + MODEL_NAME + "$")],
    operation: Annotated[Literal["impute", "predict", "both"], Form(description="What to score.")] = "both",
    samples: Annotated[int | None, Form(ge=2)] = None,
    version: Annotated[int | None, Form(ge=1, le=MAX_VERSION)] = None,
    imputations: Annotated[
        int | None,
        Form(ge=1, description="Multiple imputation: each row M times in a row, `imputation` 1..M (at most samples)."),
    ] = None,
    plausibility: Annotated[
        bool,
        Form(
            description="Also check each observed value against the row's others: `<column>__plausibility`, `unusual`."
        ),
    ] = False,
    calibrated: Annotated[bool, Form(description="false: the model's raw quantiles, not its correction.")] = True,
):
    """Accepts a table and scores it in the background; poll the job, then fetch `result_url` (CSV)."""
    samples = check_samples(state.settings, samples)
    if imputations is not None and (operation == "predict" or imputations > samples):
        why = "needs operation impute or both" if operation == "predict" else f"at most samples ({samples})"
        raise unprocessable([{"field": "imputations", "reason": why}])
    m = await run_in_threadpool(resolve_model, state.registry, model, version)
    name = _file_name(file)
    if not name.lower().endswith(SUFFIXES):
        raise unprocessable([{"field": "file", "reason": f"{name!r}: expected a .csv, .csv.gz or .parquet file"}])
    parameters = {"samples": samples, "seed": 0, "chunk_rows": CHUNK_ROWS}
    if plausibility and imputations is not None and operation != "both":
        why = "with imputations it needs operation both (the prediction carries the checks)"
        raise unprocessable([{"field": "plausibility", "reason": why}])
    if imputations is not None:
        parameters["imputations"] = imputations  # passed on to score_frame
    if plausibility:
        parameters["plausibility"] = True
    if not calibrated:
        parameters["calibrated"] = False
    job, detail = await run_in_threadpool(_accept, state, caller, m, operation, parameters, file, name)
    if job is None:
        raise unprocessable([{"field": "file", "reason": detail}])
    state.jobs.wake()
    await state.audit("batch.created", caller, (m.name, m.version), detail={"job": job.id, "rows": detail})
    return _out(job)


def _accept(state, caller, m, operation: str, parameters: dict, file: UploadFile, name: str):
    """Saves and checks the upload; (the queued job, its rows), or (None, why) after recording the refusal as a
    failed job. Nothing is left behind when this fails (no folder without a job, no job without its input)."""
    job_id = new_job_id()
    folder = state.jobs.folder(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("input" + "".join(Path(name).suffixes[-2:]).lower())
    job_fields = {"api_key_id": caller.key_id, "job_id": job_id, "parameters": parameters}
    try:
        with open(path, "wb") as f:
            shutil.copyfileobj(file.file, f)
        df, notes = read_table_with_notes(path, **state.jobs.limits, verbatim=passthrough(m.engine))
        check_columns(m.engine, df)
        _check_output_rows(len(df), parameters.get("imputations", 1), state.jobs.limits["max_rows"])
    except TableError as e:
        shutil.rmtree(folder, ignore_errors=True)
        reason = str(e).replace(str(path), name).replace(path.name, name)  # the user's file, not our copy
        with state.database.transaction() as tx:
            repo.create_batch_job(tx, m.name, m.version, operation, failed_because=reason, **job_fields)
        return None, reason
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    notes = [{"row": None, "column": None, "reason": n.replace(path.name, name)} for n in notes]
    try:
        with state.database.transaction() as tx:
            job = repo.create_batch_job(
                tx, m.name, m.version, operation, input_path=str(path), total_rows=len(df), **job_fields
            )
            if notes:
                job = repo.add_batch_job_errors(tx, job_id, notes)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # no job: nothing may be left behind
        raise
    return job, len(df)


def _check_output_rows(rows: int, imputations: int, most: int) -> None:
    """The result has a line per row and imputation: bounded like the input (`max_job_rows`), so that a small
    table with many imputations cannot make a result hundreds of times its size."""
    if rows * imputations > most:
        reason = f"{rows:,} rows x {imputations:,} imputations = {rows * imputations:,} result rows; at most {most:,}"
        raise unprocessable([{"field": "imputations", "reason": reason}])


async def _job(state, job_id: str, caller):
    if not _is_job_id(job_id):  # never sent to the database (a NUL byte would not even get there)
        raise not_found("batch job", clip(job_id, 64))

    def get():
        with state.database.read() as tx:
            return repo.get_batch_job(tx, job_id)

    job = await run_in_threadpool(get)
    if job is None or (job.api_key_id is not None and job.api_key_id != caller.key_id):
        raise not_found("batch job", job_id)
    return job


def _is_job_id(job_id: str) -> bool:
    return _JOB_ID.fullmatch(job_id) is not None


_JOB_ID = re.compile(JOB_ID.strip("^$"))


@router.get("/{job_id}", response_model=BatchJobOut, responses=problem_responses(401, 403, 404, 503))
async def get_job(job_id: JobId, state: State, caller: Inferrer):
    return _out(await _job(state, job_id, caller))


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={200: {"content": {"text/csv": {}}}, **problem_responses(401, 403, 404, 409, 503)},
)
async def get_result(job_id: JobId, state: State, caller: Inferrer):
    job = await _job(state, job_id, caller)
    if job.status != "succeeded" or not job.result_path or not Path(job.result_path).is_file():
        raise Problem(
            409,
            "Result not ready",
            f"Job {job_id} is {job.status}; poll it until it has succeeded.",
            "result-not-ready",
            status_of_job=job.status,
        )
    return FileResponse(job.result_path, media_type="text/csv", filename=f"{job_id}.csv")


@router.post(
    "/{job_id}/cancel",
    response_model=BatchJobOut,
    responses=problem_responses(401, 403, 404, 409, 503),
    summary="Cancel a job",
)
async def cancel_job(job_id: JobId, state: State, caller: Inferrer):
    """Stops a queued or running job (a running one stops after the chunk it is scoring) and deletes its files;
    409 when it has already finished."""
    job = await _job(state, job_id, caller)

    def cancel():
        with state.database.transaction() as tx:
            return repo.cancel_batch_job(tx, job.id)

    cancelled = await run_in_threadpool(cancel)
    if cancelled is None:
        raise Problem(
            409, "Job finished", f"Job {job_id} has already {job.status}.", "job-finished", status_of_job=job.status
        )
    state.jobs.wake()
    await state.audit("batch.cancelled", caller, (job.model_name, job.model_version), detail={"job": job.id})
    return _out(cancelled)
