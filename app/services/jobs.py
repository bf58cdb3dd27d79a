"""Batch scoring jobs that survive their process: checkpointed, leased, resumed, cancellable, cleaned up.

A job's table is scored in chunks (`chunk_rows`, 128 by default). Each chunk's result is written to its own part
file (atomically: written aside, then renamed) and only then is the job's progress recorded in the database, so
the part files are the truth about what is done and a job can be continued from them by any process that sees the
same data directory.

Who scores a job is a lease in its database row (`lease_owner`, `lease_expires_at`), taken with a conditional
update and renewed every second or so while the job runs. Every process runs a `BatchRunner` that claims jobs
nobody holds: new ones, ones handed back at a shutdown, and ones whose process died (their lease ran out). So:

* **Shutdown** (SIGTERM): running jobs finish the chunk they are on (within `batch_drain_seconds`), record it and
  hand the job back (`queued`, with a message); the next process to run resumes it from its part files.
* **Crash / kill -9**: the lease runs out after `batch_lease_seconds`; then any process takes the job over. A job
  taken over `MAX_TAKEOVERS` times (it keeps killing its process) is failed with that reason.
* **Database outage**: a progress or status write that fails is retried (backoff up to 5 s) until it succeeds; the
  job pauses meanwhile and nothing scored is lost.
* **Cancel** (`POST /v1/batch-jobs/{id}/cancel`): the row says `cancelled`; the process holding the job sees it at
  its next checkpoint and stops.
* **Retention**: a job's input and part files are deleted when it ends; the job and its result are deleted
  `batch_retention_seconds` after it finished; folders with no job (an upload cut short) after an hour.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hhvaem.app.db import repository as repo
from hhvaem.app.db.availability import DatabaseUnavailable
from hhvaem.app.engine.scoring import passthrough, score_frame
from hhvaem.app.services.registry import ModelNotFound
from hhvaem.model.io.artifact import ArtifactError
from hhvaem.model.io.contract import CHUNK_ROWS
from hhvaem.model.io.tables import TableError, read_table

log = logging.getLogger(__name__)

MAX_TAKEOVERS = 3
ORPHAN_SECONDS = 3600.0
RESULT = "result.csv"
BASE_PARAMETERS = ("samples", "seed", "chunk_rows")  # the rest of a job's parameters go to score_frame as is


class Stopped(Exception):
    """The job must stop here: the service is shutting down, or the job was cancelled or taken over."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    write(tmp)
    os.replace(tmp, path)


class BatchRunner:
    """Claims and scores batch jobs in background threads (one job at a time per process)."""

    def __init__(self, database: Any, registry: Any, settings: Any, owner: str | None = None):
        self.database, self.registry = database, registry
        self.root = Path(settings.data_dir) / "batch"
        self.lease = float(settings.batch_lease_seconds)
        self.retention = float(settings.batch_retention_seconds)
        self.drain = float(settings.batch_drain_seconds)
        self.slice = float(settings.batch_slice_seconds)
        self.max_result_bytes = int(settings.max_result_bytes)
        self.limits = {"max_rows": settings.max_job_rows, "max_bytes": settings.max_table_bytes}
        self.owner = owner or f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.poll = min(1.0, self.lease / 3)
        self.workers = 1
        self.ray_address = getattr(settings, "ray_address", None)  # set: jobs are scored on that Ray cluster
        self.ray_partition_rows = getattr(settings, "ray_partition_rows", 4096)
        self._stop, self._wake = threading.Event(), threading.Event()
        self._running: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_purge = 0.0

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    # ---- the loop -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="batch-runner", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """A job was queued: look for work now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Running jobs checkpoint their current chunk and hand the job back (within `drain` seconds)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        deadline = time.monotonic() + self.drain
        with self._lock:
            threads = list(self._running.values())
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = sorted(self._running)
        if left:
            log.warning("batch jobs %s still running at shutdown: resumed once their lease runs out", left)

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._running)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._renew()
                self._claim()
                if time.monotonic() - self._last_purge > min(60.0, self.retention / 2):
                    self._purge()
                    self._last_purge = time.monotonic()
            except DatabaseUnavailable as e:
                log.debug("batch runner waits for the database: %s", e.reason)
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("batch runner")
            self._wake.wait(self.poll)
            self._wake.clear()

    def _renew(self) -> None:
        if self.running():
            with self.database.transaction(trial=False) as tx:
                repo.renew_leases(tx, self.owner, _now() + dt.timedelta(seconds=self.lease))

    def _claim(self) -> None:
        free = self.workers - len(self.running())
        if free <= 0:
            return
        with self.database.read() as tx:
            candidates = repo.claimable_jobs(tx, _now(), limit=free)
        for job_id in candidates:
            with self.database.transaction() as tx:
                job = repo.claim_batch_job(tx, job_id, self.owner, _now() + dt.timedelta(seconds=self.lease))
            if job is None:
                continue  # another process was quicker
            if job.takeovers > MAX_TAKEOVERS:
                self._fail(job.id, f"the service stopped {job.takeovers} times while scoring it (too large?)")
                continue
            thread = threading.Thread(target=self._run, args=(job,), name=f"batch-{job.id[:8]}", daemon=True)
            with self._lock:
                self._running[job.id] = thread
            thread.start()

    # ---- one job --------------------------------------------------------------------------------------------
    def _run(self, job: Any) -> None:
        try:
            self._score(job)
        except Stopped:
            pass
        except (TableError, ModelNotFound, ArtifactError, OSError) as e:
            self._fail(job.id, f"failed: {e}")
        except Exception as e:  # noqa: BLE001 - the job fails with a reason; the service goes on
            log.exception("batch job %s failed", job.id)
            self._fail(job.id, f"scoring failed ({type(e).__name__})")
        finally:
            with self._lock:
                self._running.pop(job.id, None)
            self._wake.set()  # a worker is free: take the next job now, not at the next poll

    def _score(self, job: Any) -> None:
        params = dict(job.parameters or {})
        chunk = int(params.get("chunk_rows", CHUNK_ROWS))
        if not job.input_path:
            raise TableError("the uploaded table is no longer there")
        engine = self.registry.resolve(job.model_name, job.model_version).engine
        if self.ray_address:
            return self._score_on_ray(job, engine, params)
        df = read_table(job.input_path, **self.limits, verbatim=passthrough(engine))
        parts = self.folder(job.id) / "parts"
        parts.mkdir(parents=True, exist_ok=True)
        total, done, failed = len(df), 0, 0
        taken, scored_here, written = time.monotonic(), 0, 0
        for index, start in enumerate(range(0, total, chunk)):
            rows = min(chunk, total - start)
            summary = parts / f"{index:06d}.json"
            if summary.exists():  # scored before, by this process or another
                done, failed = done + rows, failed + json.loads(summary.read_text())["failed"]
                written += summary.with_suffix(".csv").stat().st_size
                continue
            if self._stop.is_set():
                self._handback(job.id, done, total)
                raise Stopped
            # a turn is at least one chunk, so two keys' jobs never hand the runner back and forth without progress
            if scored_here and time.monotonic() - taken >= self.slice and self._others_waiting(job):
                self._handback(job.id, done, total, why="paused to let another key's job run")
                raise Stopped
            bad, errors = _score_chunk(engine, job.operation, df, start, rows, params, parts / f"{index:06d}")
            done, failed, scored_here = done + rows, failed + bad, scored_here + 1
            written += summary.with_suffix(".csv").stat().st_size
            self._check_result_size(written, done, total)
            self._checkpoint(job.id, done, failed, errors)
        result = self.folder(job.id) / RESULT
        _write_atomically(result, lambda p: _assemble(sorted(parts.glob("*.csv")), p))
        everything = [e for e in (job.errors or []) if e.get("row") is None]  # notes made at the upload
        for summary in sorted(parts.glob("*.json")):
            everything += [e for e in json.loads(summary.read_text())["errors"] if e not in everything]
        self._finish(
            job.id,
            status="succeeded",
            result_path=str(result),
            processed_rows=total,
            failed_rows=failed,
            errors=everything,
            message=f"{total - failed} rows scored, {failed} rows rejected",
        )
        self._clean(job.id, keep_result=True)

    def _score_on_ray(self, job: Any, engine: Any, params: dict) -> None:
        """The job on the Ray cluster at `ray_address` (`app/engine/distributed.py`): its partitions go to the job's
        folder, so whichever process runs the job next (after a shutdown or a crash) scores only the missing ones;
        the result is the same CSV as in-process."""
        try:
            from hhvaem.app.engine.distributed import score_on_ray
            from hhvaem.app.engine.partitions import read_results
        except ImportError as e:  # the serving image without the `ray` extra
            why = f"HHVAEM_RAY_ADDRESS is set but Ray cannot be imported ({e}): pip install 'hhvaem[ray]'"
            raise TableError(why) from None

        failed = job.failed_rows or 0

        def progress(done: int, total: int, errors: list[dict]) -> None:
            nonlocal failed
            failed += len({e["row"] for e in errors})
            self._checkpoint(job.id, done, failed, errors)  # Stopped when cancelled or taken over: the run drains

        report = score_on_ray(
            engine.path,
            job.input_path,
            self.folder(job.id) / "ray",
            job.operation,
            params.get("samples"),
            int(params.get("chunk_rows", CHUNK_ROWS)),
            int(params.get("seed", 0)),
            **{k: v for k, v in params.items() if k not in BASE_PARAMETERS},
            partition_rows=self.ray_partition_rows,
            address=self.ray_address,
            progress=progress,
            should_stop=self._stop.is_set,
            max_rows=self.limits["max_rows"],
        )
        if report.pending:
            size = self.ray_partition_rows
            left = sum(min(size, report.total_rows - k * size) for k in report.pending)
            self._handback(job.id, report.total_rows - left, report.total_rows)
            raise Stopped
        if report.failed:
            names = "; ".join(p.describe() for p in report.failed[:5])
            raise TableError(f"{len(report.failed)} of {report.partitions} partitions could not be scored: {names}")
        result = self.folder(job.id) / RESULT
        table = read_results(self.folder(job.id) / "ray").drop(columns="row")  # the in-process result's columns
        _write_atomically(result, lambda p: table.to_csv(p, index=False))
        self._check_result_size(result.stat().st_size, report.total_rows, report.total_rows)
        with self.database.read() as tx:
            recorded = list((repo.get_batch_job(tx, job.id) or job).errors or [])
        bad = report.failed_rows
        self._finish(
            job.id,
            status="succeeded",
            result_path=str(result),
            processed_rows=report.total_rows,
            failed_rows=bad,
            errors=recorded + [e for e in report.errors if e not in recorded],
            message=f"{report.total_rows - bad} rows scored, {bad} rows rejected (on Ray, {report.workers} workers)",
        )
        self._clean(job.id, keep_result=True)

    def _checkpoint(self, job_id: str, done: int, failed: int, errors: list[dict]) -> None:
        def write() -> bool:
            with self.database.transaction() as tx:
                job = repo.held_batch_job(tx, job_id, self.owner)
                if job is None:
                    return False
                if errors:
                    repo.add_batch_job_errors(tx, job_id, errors)
                repo.update_batch_job(tx, job_id, processed_rows=done, failed_rows=failed)
                return True

        if not self._retrying(write):
            self._gone(job_id)

    def _check_result_size(self, written: int, done: int, total: int) -> None:
        """Fails the job (TableError) when its result, projected from the rows scored so far, would be over
        `max_result_bytes`: known after the first chunk, not after filling the disk."""
        projected = written * total / max(done, 1)
        if projected > self.max_result_bytes:
            mib = 1024 * 1024
            raise TableError(
                f"its result would be about {projected / mib:,.0f} MiB ({written / mib:,.1f} MiB for the first "
                f"{done:,} of {total:,} rows), over the limit of {self.max_result_bytes / mib:,.0f} MiB "
                "(HHVAEM_MAX_RESULT_BYTES): score fewer imputations or quantiles, or split the table"
            )

    def _others_waiting(self, job: Any) -> bool:
        try:
            with self.database.read() as tx:
                return repo.others_waiting(tx, job.api_key_id, _now())
        except DatabaseUnavailable:
            return False  # go on with this one

    def _handback(self, job_id: str, done: int, total: int, why: str = "interrupted by a shutdown") -> None:
        resumes = "it resumes in turn" if why.startswith("paused") else "it resumes when the service runs again"
        message = f"{why} after {done} of {total} rows; {resumes}"
        self._retrying(lambda: self._in_transaction(repo.release_batch_job, job_id, self.owner, message))

    def _finish(self, job_id: str, **fields: Any) -> None:
        def write() -> bool:
            with self.database.transaction() as tx:
                return repo.finish_batch_job(tx, job_id, self.owner, **fields)

        if not self._retrying(write):
            self._gone(job_id)

    def _fail(self, job_id: str, message: str) -> None:
        try:
            self._finish(job_id, status="failed", message=message[:1000])
        except Stopped:
            return
        self._clean(job_id, keep_result=False)

    def _gone(self, job_id: str) -> None:
        """The job was cancelled or taken over: stop; a cancelled job's files go now."""
        with self.database.read() as tx:
            job = repo.get_batch_job(tx, job_id)
        if job is not None and job.status == "cancelled":
            self._clean(job_id, keep_result=False)
        raise Stopped

    def _in_transaction(self, fn: Callable, *args: Any) -> Any:
        with self.database.transaction() as tx:
            return fn(tx, *args)

    def _retrying(self, write: Callable[[], Any]) -> Any:
        """`write()`, again and again while the database is unavailable (unless the service is stopping)."""
        delay = 0.2
        while True:
            try:
                return write()
            except DatabaseUnavailable as e:
                if self._stop.is_set():
                    raise Stopped from None  # the lease runs out; whoever runs next resumes the job
                log.warning("batch job state not recorded yet (retrying in %.1f s): %s", delay, e.reason)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    # ---- clean-up -------------------------------------------------------------------------------------------
    def _clean(self, job_id: str, keep_result: bool) -> None:
        folder = self.folder(job_id)
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            if keep_result and entry.name == RESULT:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if not keep_result:
            shutil.rmtree(folder, ignore_errors=True)
        try:
            with self.database.transaction(trial=False) as tx:
                if repo.get_batch_job(tx, job_id) is not None:
                    repo.update_batch_job(tx, job_id, input_path=None)
        except DatabaseUnavailable:
            pass  # the files are gone; the purge clears the path later

    def _purge(self) -> None:
        """The retention policy (see the module docstring)."""
        before = _now() - dt.timedelta(seconds=self.retention)
        with self.database.transaction(trial=False) as tx:
            expired = [j.id for j in repo.finished_jobs_before(tx, before)]
            for job_id in expired:
                repo.delete_batch_job(tx, job_id)
            leftover = [j.id for j in repo.finished_jobs_with_input(tx)]
        for job_id in expired:
            shutil.rmtree(self.folder(job_id), ignore_errors=True)
        if expired:
            log.info("deleted %d batch jobs finished over %.0f s ago, with their results", len(expired), self.retention)
        for job_id in leftover:  # ended in another process, or before a crash, with the input still there
            with self.database.read(trial=False) as tx:
                job = repo.get_batch_job(tx, job_id)
            if job is not None:
                self._clean(job_id, keep_result=job.status == "succeeded")
        self._purge_orphans()

    def _purge_orphans(self) -> None:
        if not self.root.is_dir():
            return
        old = [p for p in self.root.iterdir() if p.is_dir() and time.time() - p.stat().st_mtime > ORPHAN_SECONDS]
        if not old:
            return
        with self.database.read(trial=False) as tx:
            known = repo.batch_job_ids(tx, [p.name for p in old])
        for p in old:
            if p.name not in known:
                shutil.rmtree(p, ignore_errors=True)


def _score_chunk(engine: Any, operation: str, df: Any, start: int, rows: int, params: dict, part: Path):
    """Scores rows `start`..`start + rows` into `part`.csv (the rows) and `part`.json (rejected rows, errors);
    (rows rejected, errors) with data row numbers of the whole table. Each row's seed comes from the job's and the
    row itself (`app.engine.seeds`), so a resumed job scores each chunk exactly as the first attempt would have."""
    options = {k: v for k, v in params.items() if k not in BASE_PARAMETERS}
    out, errors = score_frame(
        engine,
        df.iloc[start : start + rows].reset_index(drop=True),
        operation,
        params.get("samples"),
        rows,
        int(params.get("seed", 0)),
        **options,
    )
    errors = [
        {**e, "row": e["row"] + start} if e["row"] is not None else e
        for e in errors
        if e["row"] is not None or start == 0  # a note about the table (row None) is made once
    ]
    bad = len({e["row"] for e in errors if e["row"] is not None})
    _write_atomically(part.with_suffix(".csv"), lambda p: out.to_csv(p, index=False))
    _write_atomically(part.with_suffix(".json"), lambda p: p.write_text(json.dumps({"failed": bad, "errors": errors})))
    return bad, errors


def _assemble(parts: list[Path], out: Path) -> None:
    """One CSV from the part files, as text (no value is parsed and re-formatted): the union of their columns in
    order of first appearance, an empty cell where a part lacks a column."""
    columns: list[str] = []
    for part in parts:
        with open(part, newline="") as f:
            header = next(csv.reader(f), [])
        columns += [c for c in header if c not in columns]
    with open(out, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for part in parts:
            with open(part, newline="") as src:
                for row in csv.DictReader(src):
                    writer.writerow([row.get(c, "") for c in columns])
