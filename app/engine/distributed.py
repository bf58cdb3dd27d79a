"""Batch scoring on a Ray cluster with Ray Data: many processes, many machines, one scoring code path.

    partitions (blocks)  ->  map_batches(_PartitionScorer actors)  ->  write_parquet

* **Partitions** are fixed row ranges of the input (`app/engine/partitions.py`), one block each: for Parquet a
  block names the partition, and the actor that scores it reads it, where it runs, from only the row groups it
  covers; a CSV is read once, by the project's reader (its checks), and its partitions go to the object store.
  Ray Data's `read_parquet` is not used: it numbers no rows (the input's row identity is needed for the results,
  the seeds and resumption), and its blocks are not the fixed ranges that make results independent of the cluster.
* **Scoring**: an actor pool (`ActorPoolStrategy`, one CPU each); every actor loads the artifact once and keeps
  its ONNX Runtime sessions for all the partitions it is given. Each partition is scored by `score_frame`, each row
  from its own seed, so the numbers are those of the in-process scorer with the same seed, row by row.
* **Output**: `write_parquet` into the output directory, every row with its `row` number and `error` (a bad row is
  reported there and in the errors, never sinks its partition).
* **Failures**: a killed worker is restarted and its partition retried by Ray (bounded: `max_retries`); a partition
  that still fails is dropped by Ray Data (`max_errored_blocks`) and reported by index and rows, while the others
  are written. A rerun with the same output scores only the partitions missing there (resumption after an
  interruption, a crash, or a failure). Ray Data's own checkpointing (beta) is not used: its filter actors take a
  CPU each, which deadlocks a small cluster whose CPUs the scorers hold, and rows are the wrong unit here.
* **Progress**: each actor reports every partition it finishes to a small tracker actor, which the driver polls.
* **Drivers**: a process on a node of the cluster (`auto`, `host:6379`, a local cluster) runs the pipeline itself; a
  Ray Client driver (`ray://host:10001`: an API replica or a laptop outside the cluster) cannot run Ray Data's
  executor, so the pipeline runs in a task on the cluster (no CPU of its own) and the driver only polls the tracker.

Paths (artifact, input, output) must be the same on every node: one machine, or a shared file system.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy, DataContext

from hhvaem.app.engine.engine import Engine
from hhvaem.app.engine.partitions import (
    ROW,
    Partition,
    TablePlan,
    claim_output,
    frame_partition,
    output_schema,
    plan_table,
    read_partition,
    result_files,
    score_partition,
    written_partitions,
)
from hhvaem.app.engine.scoring import OPERATIONS, check_columns, passthrough
from hhvaem.model.io.artifact import manifest_checksum
from hhvaem.model.io.contract import CHUNK_ROWS

log = logging.getLogger(__name__)

PARTITION_ROWS = 4096
PARTITION = "__partition"  # the column of a block that names a Parquet partition for its scorer to read
MAX_RETRIES = 3  # restarts of a dead actor, and retries of the partition it was scoring
ERRORS_KEPT = 1000  # per run: the first errors in detail (every bad row also says why in its `error` cell)

Progress = Callable[[int, int, list[dict]], None]


@dataclass
class RayReport:
    """What a run did. `failed`: the partitions that could not be written (after Ray's retries); `pending`: the
    ones not attempted because the run was stopped. Both are scored by a rerun with the same output."""

    output: Path
    total_rows: int
    partitions: int
    skipped: list[int]  # written by an earlier run
    written: list[int]
    failed: list[Partition]
    pending: list[int]
    errors: list[dict]
    failed_rows: int
    workers: int
    seconds: float
    notes: list[dict] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed and not self.pending


def connect(address: str | None = None) -> dict[str, float]:
    """Joins the Ray cluster at `address` (`auto`, `ray://host:10001`, `host:6379`), or starts one on this machine
    (`local`, or None without RAY_ADDRESS); once per process. Returns the cluster's resources."""
    if not ray.is_initialized():
        local = address in (None, "local") and not os.environ.get("RAY_ADDRESS")
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if local:
            options["include_dashboard"] = False
        ray.init(address=None if local else address, **options)
    return ray.cluster_resources()


def score_on_ray(
    model_dir: str | Path,
    source: str | Path,
    output: str | Path,
    operation: str = "both",
    samples: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    seed: int = 0,
    *,
    partition_rows: int = PARTITION_ROWS,
    workers: int | None = None,
    imputations: int | None = None,
    plausibility: bool = False,
    calibrated: bool = True,
    address: str | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_rows: int | None = None,
    max_retries: int = MAX_RETRIES,
) -> RayReport:
    """Scores `source` (a CSV or Parquet file, a directory or glob of Parquet files) into the directory `output`
    (Parquet partitions) on Ray. `progress(done_rows, total_rows, new_errors)` is called as partitions finish (an
    exception it raises stops the run and is raised here); `should_stop()` true stops the run after the partitions
    being scored (the rest stay pending). TableError / ValueError for bad input, before anything runs."""
    started = time.monotonic()
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r} (expected one of {', '.join(OPERATIONS)})")
    if partition_rows <= 0 or partition_rows % chunk_rows:
        raise ValueError(f"partition_rows ({partition_rows}) must be a multiple of chunk_rows ({chunk_rows})")
    engine = Engine(model_dir, threads=1)  # checks the artifact here, before a cluster is involved
    plan = plan_table(source, partition_rows, max_rows, verbatim=passthrough(engine))
    check_columns(engine, plan.schema.empty_table().to_pandas())
    schema, notes = output_schema(engine, plan.schema, operation, imputations, plausibility)
    out = Path(output)
    options = {"operation": operation, "samples": samples, "chunk_rows": chunk_rows, "seed": seed}
    options |= {"imputations": imputations} if imputations else {}
    options |= {"plausibility": True} if plausibility else {}
    options |= {} if calibrated else {"calibrated": False}
    job = {"model": manifest_checksum(engine.path), "input": plan.fingerprint(), "partition_rows": partition_rows}
    claim_output(out, job | options)
    done = written_partitions(out, plan, partition_rows, imputations or 1)
    todo = [p for p in plan.partitions if p.index not in done]
    known = {c.name for c in engine.schema.columns}
    options |= {"partition_rows": partition_rows, "passthrough": [n for n in plan.schema.names if n not in known]}
    report = RayReport(out, plan.total_rows, len(plan.partitions), sorted(done), [], [], [], [], 0, 0, 0.0, notes)
    if todo:
        pipeline = _Pipeline(plan, todo, schema, options, str(engine.path), workers, max_retries)
        pipeline.run(report, address, progress, should_stop)
    now = written_partitions(out, plan, partition_rows, imputations or 1)
    report.written = sorted(now - done)
    report.failed = [p for p in todo if p.index not in now and p.index not in report.pending]
    report.failed_rows = _failed_rows(out)
    report.seconds = time.monotonic() - started
    return report


@dataclass
class _Pipeline:
    """The Ray Data pipeline over the partitions `todo`."""

    plan: TablePlan
    todo: list[Partition]
    schema: Any  # the result's pyarrow schema
    options: dict[str, Any]
    model_dir: str
    workers: int | None
    max_retries: int

    def run(self, report: RayReport, address: str | None, progress, should_stop) -> None:
        """Writes the partitions into `report.output`; fills in `report.errors`, `pending`, `workers`."""
        resources = connect(address)
        report.workers = self.workers or max(1, int(resources.get("CPU", 1)))
        tracker = _Tracker.remote()
        poller = _Poller(tracker, report, self.plan.total_rows - sum(p.rows for p in self.todo), progress, should_stop)
        poller.start()
        try:
            if ray.util.client.ray.is_connected():
                # A Ray Client driver (ray://, e.g. an API replica outside the cluster) cannot run Ray Data's
                # executor (it needs a core worker: ray-project/ray#39860); the pipeline runs in a task on the
                # cluster instead, while progress and the stop flag still go through the tracker.
                ray.get(_write_on_cluster.remote(self, tracker, report.workers, str(report.output)))
            else:
                self.write(tracker, report.workers, str(report.output))
        finally:
            poller.finish()
            if poller.stopped:
                report.pending = [p.index for p in self.todo if p.index not in poller.seen]
            ray.kill(tracker)
        if poller.error is not None:
            raise poller.error

    def write(self, tracker, workers: int, output: str) -> None:
        context = DataContext.get_current()
        context.max_errored_blocks = -1  # a partition that keeps failing is dropped and reported, the rest go on
        context.enable_progress_bars = False  # progress goes to `progress`
        context.print_on_execution_start = False
        with warnings.catch_warnings():
            # Ray 2.60 names no parameter for actor restarts: `**ray_remote_args` (deprecated for 2.64) it is.
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            self.dataset(tracker, workers).write_parquet(output)

    def dataset(self, tracker, workers: int):
        """Parquet: one block per partition naming it, read by the actor that scores it; a CSV, read by the
        driver: its partitions' rows, through the object store."""
        if self.plan.frame is not None:
            ds = ray.data.from_arrow_refs([ray.put(frame_partition(self.plan, p)) for p in self.todo])
        else:
            ds = ray.data.from_items([{PARTITION: p.index} for p in self.todo], override_num_blocks=len(self.todo))
        parquet_plan = None if self.plan.frame is not None else TablePlan(**{**vars(self.plan), "frame": None})
        return ds.map_batches(
            _PartitionScorer,
            fn_constructor_kwargs={
                "model_dir": self.model_dir,
                "plan": parquet_plan,
                "schema": self.schema,
                "options": self.options,
                "tracker": tracker,
            },
            batch_size=None,  # one block, one partition
            batch_format="pyarrow",
            compute=ActorPoolStrategy(min_size=1, max_size=workers),  # starts with the CPUs free now
            num_cpus=1,
            # A dead actor is restarted, and the partition it had retried, `max_retries` times (Ray Data's default
            # retries forever: a partition that kills its worker would never let the job end).
            max_restarts=self.max_retries,
            max_task_retries=self.max_retries,
        )


@ray.remote(num_cpus=0, max_retries=0)  # no CPU: the scorers hold them; not retried: the rerun resumes instead
def _write_on_cluster(pipeline: _Pipeline, tracker, workers: int, output: str) -> None:
    pipeline.write(tracker, workers, output)


def _failed_rows(output: Path) -> int:
    rows = set()
    for path in result_files(output):
        t = pq.read_table(path, columns=[ROW, "error"])
        bad = t.filter(pc.not_equal(t.column("error"), ""))
        rows.update(bad.column(ROW).to_pylist())
    return len(rows)


class _Poller(threading.Thread):
    """Polls the tracker while the pipeline runs: progress, errors, and the stop request."""

    def __init__(self, tracker, report: RayReport, done_rows: int, progress: Progress | None, should_stop):
        super().__init__(name="ray-progress", daemon=True)
        self.tracker, self.report, self.progress, self.should_stop = tracker, report, progress, should_stop
        self.done_rows = done_rows  # in partitions written by an earlier run
        self.seen: dict[int, int] = {}  # partition -> rows, scored in this run
        self.polled = 0
        self.stopped = False
        self.error: BaseException | None = None
        self._end = threading.Event()

    def run(self) -> None:
        while not self._end.wait(0.25):
            self._poll()

    def finish(self) -> None:
        self._end.set()
        self.join(timeout=30)
        self._poll()

    def _poll(self) -> None:
        try:
            new = ray.get(self.tracker.since.remote(self.polled), timeout=30)
        except (ray.exceptions.RayError, TimeoutError) as e:
            log.warning("batch scoring progress not read (%s)", type(e).__name__)
            return
        self.polled += len(new)
        errors = []
        for index, rows, partition_errors in new:
            if index not in self.seen:  # a partition retried after its worker died may report twice
                self.seen[index] = rows
                errors += partition_errors
        self.report.errors += errors[: max(0, ERRORS_KEPT - len(self.report.errors))]
        try:
            if new and self.progress is not None and self.error is None:
                self.progress(self.done_rows + sum(self.seen.values()), self.report.total_rows, errors)
            if self.should_stop is not None and not self.stopped and self.should_stop():
                self._request_stop()
        except BaseException as e:  # noqa: BLE001 - raised again by score_on_ray, once the pipeline has drained
            self.error = self.error or e
            self._request_stop()

    def _request_stop(self) -> None:
        self.stopped = True
        ray.get(self.tracker.stop.remote())


@ray.remote(num_cpus=0)
class _Tracker:
    """Which partitions are scored (index, rows, errors), and the stop flag."""

    def __init__(self):
        self.finished: list[tuple[int, int, list[dict]]] = []
        self.stopping = False

    def record(self, index: int, rows: int, errors: list[dict]) -> None:
        self.finished.append((index, rows, errors))

    def since(self, n: int) -> list[tuple[int, int, list[dict]]]:
        return self.finished[n:]

    def stop(self) -> None:
        self.stopping = True

    def should_stop(self) -> bool:
        return self.stopping


class _PartitionScorer:
    """A Ray Data actor: loads the artifact once, then scores the partitions it is given, one block each."""

    def __init__(self, model_dir: str, plan: TablePlan | None, schema, options: dict[str, Any], tracker):
        self.engine = Engine(model_dir, threads=1)
        self.partitions = {p.index: p for p in plan.partitions} if plan is not None else {}
        self.plan, self.schema, self.options, self.tracker = plan, schema, options, tracker

    def __call__(self, block):
        if ray.get(self.tracker.should_stop.remote()):
            return self.schema.empty_table()  # stopping: the partition stays pending
        if PARTITION in block.column_names:  # a Parquet partition, named: read it here
            block = read_partition(self.plan.schema, self.partitions[block.column(PARTITION)[0].as_py()])
        result, errors = score_partition(self.engine, block, self.schema, self.options)
        index = (int(block.column(ROW)[0].as_py()) - 1) // int(self.options["partition_rows"])
        self.tracker.record.remote(index, len(block), errors[:ERRORS_KEPT])
        return result
