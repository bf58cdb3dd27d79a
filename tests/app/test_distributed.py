"""Batch scoring on Ray (issue #13), on a real local cluster (`ray.init(num_cpus=2)`): the same numbers as the
in-process scorer row by row whatever the partitioning, bad rows by their row numbers, a scoring worker killed
mid-job (the job completes), a partition that cannot be read (reported exactly, the rest written), resumption of an
interrupted `hhvaem score --engine ray` and of a failed run, and the batch-job route scoring on the cluster."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.app.api.test_api_batch import csv_bytes, table
from tests.app.service import MODEL, SAMPLES, ServiceProcess, artifact_dir, free_port

ray = pytest.importorskip("ray")

from hhvaem.app.engine import Engine  # noqa: E402
from hhvaem.app.engine.distributed import score_on_ray  # noqa: E402
from hhvaem.app.engine.partitions import ROW, read_results, result_files  # noqa: E402
from hhvaem.app.engine.scoring import score_frame  # noqa: E402

SEED = 7


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of two CPUs for the module; its address, for other processes to join."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def artifact(request) -> str:
    return artifact_dir(request)


@pytest.fixture(scope="module")
def engine(artifact) -> Engine:
    return Engine(artifact, threads=1)


def rows_with_problems(n: int, seed: int) -> pd.DataFrame:
    """`n` rows with holes, an identifier the model does not know (kept as it is), and three bad rows."""
    df = table(n, seed=seed)
    df.insert(0, "patient", np.arange(n, dtype=np.int64) * 1_000_003 + 10**12)  # exact only as an integer
    df.loc[5, "bmi"] = -3.0  # negative in a positive column
    df.loc[300, "sex"] = 7.0  # not one of the binary column's values
    df.loc[n - 1, "age"] = np.inf
    return df


def in_process(engine: Engine, df: pd.DataFrame, operation: str = "both", **kw):
    return score_frame(engine, df, operation, SAMPLES, 128, SEED, **kw)


def assert_same_rows(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert got[ROW].tolist() == list(range(1, len(expected) + 1))
    pd.testing.assert_frame_equal(
        got[list(expected.columns)].reset_index(drop=True), expected, check_dtype=False, check_exact=True
    )


def test_the_same_rows_as_in_process_whatever_the_partitioning(cluster, artifact, engine, tmp_path: Path) -> None:
    df = rows_with_problems(700, seed=3)
    data = tmp_path / "in"
    data.mkdir()
    df.iloc[:300].to_parquet(data / "a.parquet", index=False, row_group_size=64)
    df.iloc[300:].to_parquet(data / "b.parquet", index=False, row_group_size=100)  # partitions span both files
    expected, errors = in_process(engine, df)

    seen = []
    report = score_on_ray(
        artifact,
        data,
        tmp_path / "out",
        "both",
        SAMPLES,
        128,
        SEED,
        partition_rows=256,
        progress=lambda done, total, new: seen.append((done, total, len(new))),
    )
    assert report.complete and report.written == [0, 1, 2] and report.workers == 2
    got = read_results(tmp_path / "out")
    assert_same_rows(got, expected)
    assert got["patient"].dtype == np.int64 and got["patient"].tolist() == df["patient"].tolist()
    # Bad rows: by their row numbers in the whole input, each with its reason, their partitions scored all the same.
    assert sorted(e["row"] for e in report.errors) == [6, 301, 700] == sorted(e["row"] for e in errors if e["row"])
    assert {(e["row"], e["column"]) for e in report.errors} == {(6, "bmi"), (301, "sex"), (700, "age")}
    assert report.failed_rows == 3 and (got["error"] != "").sum() == 3
    assert got.loc[got[ROW] == 6, "error"].item().startswith("bmi:")
    assert [n["column"] for n in report.notes] == ["patient"]  # said once, not once per partition
    assert seen[-1][:2] == (700, 700) and sum(n for _, _, n in seen) == 3

    # Smaller partitions, one worker: the same numbers (each partition is seeded by its first row).
    again = score_on_ray(artifact, data, tmp_path / "out128", "both", SAMPLES, 128, SEED, partition_rows=128, workers=1)
    assert again.workers == 1 and len(again.written) == 6
    assert_same_rows(read_results(tmp_path / "out128"), expected)

    # A rerun with the same output finds every partition written and scores none.
    rerun = score_on_ray(artifact, data, tmp_path / "out", "both", SAMPLES, 128, SEED, partition_rows=256)
    assert rerun.skipped == [0, 1, 2] and rerun.written == [] and rerun.complete
    # ... and one with other options is refused rather than mixed in.
    with pytest.raises(ValueError, match="another job .*seed"):
        score_on_ray(artifact, data, tmp_path / "out", "both", SAMPLES, 128, SEED + 1, partition_rows=256)


def scorer_pids() -> list[int]:
    """The Ray Data scoring actors' processes (their title names the actor class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "MapWorker" in title and "_PartitionScorer" in title:
                pids.append(int(entry.name))
    return pids


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes(cluster, artifact, engine, tmp_path: Path) -> None:
    df = table(2048, seed=11)
    df.to_parquet(tmp_path / "in.parquet", index=False)
    killed: list[int] = []

    def kill_one(done: int, total: int, errors: list) -> None:
        if not killed and done < total:
            pids = scorer_pids()
            assert pids, "no scoring actor found"
            os.kill(pids[0], signal.SIGKILL)  # once: Ray restarts the actor and retries its partition
            killed.append(pids[0])

    started = time.monotonic()
    report = score_on_ray(
        artifact,
        tmp_path / "in.parquet",
        tmp_path / "out",
        "predict",
        SAMPLES,
        128,
        SEED,
        partition_rows=128,
        progress=kill_one,
    )
    assert killed and time.monotonic() - started < 240
    assert report.complete and len(report.written) == 16
    expected, _ = in_process(engine, df, "predict")
    assert_same_rows(read_results(tmp_path / "out"), expected)


def test_a_stopped_run_leaves_the_rest_pending_and_a_rerun_finishes(cluster, artifact, engine, tmp_path) -> None:
    """What a batch job does at a service shutdown: stop after the partitions being scored; the next run resumes."""
    df = table(2048, seed=13)
    df.to_parquet(tmp_path / "in.parquet", index=False)
    done: list[int] = []
    stopped = score_on_ray(
        artifact,
        tmp_path / "in.parquet",
        tmp_path / "out",
        "impute",
        SAMPLES,
        128,
        SEED,
        partition_rows=128,
        workers=1,
        progress=lambda d, t, e: done.append(d),
        should_stop=lambda: bool(done),
    )
    assert stopped.pending and not stopped.failed and not stopped.complete
    assert sorted(stopped.written + stopped.pending) == list(range(16))
    assert len(stopped.written) < 16 and sum(128 for _ in stopped.written) >= done[0]
    resumed = score_on_ray(
        artifact, tmp_path / "in.parquet", tmp_path / "out", "impute", SAMPLES, 128, SEED, partition_rows=128
    )
    assert resumed.complete and resumed.skipped == stopped.written and resumed.written == stopped.pending
    expected, _ = in_process(engine, df, "impute")
    assert_same_rows(read_results(tmp_path / "out"), expected)


def break_data_pages(path: Path) -> bytes:
    """Zeroes a Parquet file's data pages, keeping its footer: planning (metadata only) passes, reading fails."""
    raw = path.read_bytes()
    footer = int.from_bytes(raw[-8:-4], "little")
    path.write_bytes(raw[:4] + bytes(len(raw) - 12 - footer) + raw[-8 - footer :])
    return raw


def test_a_partition_that_fails_is_reported_exactly_and_a_rerun_scores_only_it(
    cluster, artifact, engine, tmp_path: Path
) -> None:
    df = table(640, seed=5)
    data = tmp_path / "in"
    data.mkdir()
    for i, start in enumerate(range(0, 640, 256)):  # files of 256, 256 and 128 rows
        df.iloc[start : start + 256].to_parquet(data / f"part-{i}.parquet", index=False)
    original = break_data_pages(data / "part-1.parquet")  # rows 257-512: partitions 2 and 3 of 128 rows

    report = score_on_ray(
        artifact, data, tmp_path / "out", "impute", SAMPLES, 128, SEED, partition_rows=128, max_retries=1
    )
    assert [p.index for p in report.failed] == [2, 3] and report.written == [0, 1, 4]
    assert [p.describe() for p in report.failed] == ["partition 2 (rows 257-384)", "partition 3 (rows 385-512)"]
    assert not report.complete
    written = sorted(pq.read_table(p, columns=[ROW]).column(ROW)[0].as_py() for p in result_files(tmp_path / "out"))
    assert written == [1, 129, 513]

    (data / "part-1.parquet").write_bytes(original)  # the file is repaired: the rerun scores what is missing
    rerun = score_on_ray(artifact, data, tmp_path / "out", "impute", SAMPLES, 128, SEED, partition_rows=128)
    assert rerun.skipped == [0, 1, 4] and rerun.written == [2, 3] and rerun.complete
    expected, _ = in_process(engine, df, "impute")
    assert_same_rows(read_results(tmp_path / "out"), expected)


def hhvaem(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("hhvaem")), "score", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_an_interrupted_cli_run_resumes_where_it_stopped(cluster, artifact, engine, tmp_path: Path) -> None:
    df = table(2048, seed=8)
    (tmp_path / "in.csv").write_bytes(csv_bytes(df))
    out = tmp_path / "scored.csv"
    parts = tmp_path / "scored.csv.parts"
    command = [artifact, str(tmp_path / "in.csv"), str(out), "--engine", "ray", "--address", cluster]
    command += ["--operation", "predict", "--samples", str(SAMPLES), "--seed", str(SEED), "--partition-rows", "128"]

    first = hhvaem(*command)
    deadline = time.monotonic() + 180
    while len(result_files(parts) if parts.exists() else []) < 3:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no partitions written"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # the driver dies mid-run: no clean-up at all
    first.wait(30)
    assert not out.exists()
    done_before = len(result_files(parts))
    assert 3 <= done_before < 16

    second = hhvaem(*command)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    skipped = int(stdout.split("partitions scored, ")[1].split(" already there")[0])
    assert skipped >= done_before - 2  # a file being written when the driver died is scored again
    assert not parts.exists()
    expected, _ = in_process(engine, df, "predict")
    got = pd.read_csv(out)
    assert got[ROW].tolist() == list(range(1, 2049))
    expected = pd.read_csv(io.StringIO(expected.to_csv(index=False)))  # as a CSV reads back
    pd.testing.assert_frame_equal(got[list(expected.columns)], expected, check_dtype=False)


@pytest.fixture
def ray_client_address(cluster):
    """A Ray Client server on the module's cluster (what `ray start --head` runs on port 10001): the address a
    driver outside the cluster, e.g. an API replica in another container, connects to."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ray.util.client.server", f"--address={cluster}", "--host=127.0.0.1"]
        + [f"--port={port}", "--mode=specific-server"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"ray://127.0.0.1:{port}"
    server.terminate()
    server.wait(30)


def test_a_ray_client_driver_scores_on_the_cluster(ray_client_address, artifact, engine, tmp_path: Path) -> None:
    """Ray Data's executor cannot run in a Ray Client driver (it needs a core worker): the pipeline then runs in a task
    on the cluster, and the numbers are the same as in-process."""
    df = rows_with_problems(400, seed=5)
    df.to_parquet(tmp_path / "in.parquet", index=False)
    command = [artifact, str(tmp_path / "in.parquet"), str(tmp_path / "out"), "--engine", "ray"]
    command += ["--address", ray_client_address, "--samples", str(SAMPLES), "--seed", str(SEED)]
    p = hhvaem(*command, "--partition-rows", "256", "--workers", "1")
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    assert "2 partitions scored" in stdout, stdout
    expected, _ = in_process(engine, df)
    assert_same_rows(read_results(tmp_path / "out"), expected)


def test_bad_input_is_one_line_and_exit_2(cluster, artifact, tmp_path: Path) -> None:
    (tmp_path / "other.parquet").write_bytes(b"not parquet at all, but long enough to have a footer")
    cases = [
        ([str(tmp_path / "missing.parquet")], "file not found"),
        ([str(tmp_path / "other.parquet")], "cannot read parquet file"),
        ([str(tmp_path / "nothing-*.parquet")], "no file matches"),
    ]
    for args, reason in cases:
        p = hhvaem(artifact, *args, str(tmp_path / "out"), "--engine", "ray", "--address", cluster)
        _, stderr = p.communicate(timeout=120)
        assert p.returncode == 2 and reason in stderr and "Traceback" not in stderr, stderr
    p = hhvaem(artifact, "x.csv", "y.csv", "--engine", "ray", "--partition-rows", "100")
    assert p.wait(60) == 2 and "not a multiple of --chunk-rows" in p.communicate()[1]


def test_batch_jobs_are_scored_on_the_cluster_when_ray_address_is_set(cluster, artifact, engine, tmp_path) -> None:
    models = tmp_path / "models"
    shutil.copytree(artifact, models / MODEL)
    env = {
        "HHVAEM_DATA_DIR": str(tmp_path / "data"),
        "HHVAEM_MODELS_DIR": str(models),
        "HHVAEM_RAY_ADDRESS": cluster,
        "HHVAEM_RAY_PARTITION_ROWS": "256",
    }
    df = table(600, seed=21)
    # columns the model does not use come back as the file has them (issue #22, 4): ids with leading zeros, text
    # that a CSV reader would take for a missing value, a leading blank
    df.insert(0, "id", [f"{i:05d}" for i in range(600)])
    df["note"] = [("NA", "None", " lead", "", "nan", "null")[i % 6] for i in range(600)]
    service = ServiceProcess(env, tmp_path).start()
    try:
        data = {"model": MODEL, "operation": "predict", "samples": str(SAMPLES)}
        r = httpx.post(f"{service.url}/v1/batch-jobs", files={"file": ("t.csv", csv_bytes(df))}, data=data)
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        deadline = time.monotonic() + 240
        while (state := httpx.get(f"{service.url}/v1/batch-jobs/{job}").json())["status"] not in (
            "succeeded",
            "failed",
        ):
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert state["status"] == "succeeded", state
        assert state["processed_rows"] == 600 and "on Ray, 2 workers" in state["message"]
        result = httpx.get(f"{service.url}/v1/batch-jobs/{job}/result")
        assert result.status_code == 200
    finally:
        service.stop()
    text = pd.read_csv(io.StringIO(result.text), dtype=str, keep_default_na=False)
    assert text["id"].tolist() == df["id"].tolist() and text["note"].tolist() == df["note"].tolist()
    got = pd.read_csv(io.StringIO(result.text)).drop(columns=["id", "note"])
    expected, _ = score_frame(engine, df, "predict", SAMPLES, 128, 0)  # the route's seed
    expected = pd.read_csv(io.StringIO(expected.to_csv(index=False))).drop(columns=["id", "note"])
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
