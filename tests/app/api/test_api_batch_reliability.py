"""Batch jobs that lose and corrupt nothing (issue #11), over real HTTP with PostgreSQL: ragged CSV lines, tables
with none of the model's columns, cancellation, retention, and a database outage in the middle of a job."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.app.api.test_api_batch import JOBS, csv_bytes, result, table, upload, wait
from tests.app.service import (
    SAMPLES,
    TARGET,
    Service,
    artifact_dir,
    problem,
    proxied_pg_schema,
    reason,
    running_service,
)


def trailing_commas(df: pd.DataFrame) -> bytes:
    """The export format of the issue: the header as usual, every data line ending with an empty field."""
    header, *lines = df.to_csv(index=False).strip("\n").split("\n")
    return ("\n".join([header, *(line + "," for line in lines)]) + "\n").encode()


def test_a_trailing_comma_on_every_line_scores_every_row_in_place(c: httpx.Client) -> None:
    df = table(6, seed=7, holes=0.0)
    plain = wait(c, upload(c, "plain.csv", csv_bytes(df), operation="predict").json()["id"])[0]
    r = upload(c, "export.csv", trailing_commas(df), operation="predict")
    assert r.status_code == 202, r.text
    job, _ = wait(c, r.json()["id"])
    assert job["status"] == "succeeded" and job["failed_rows"] == 0, job
    assert any("end with empty fields" in e["reason"] and "export.csv" in e["reason"] for e in job["errors"])
    got, expected = result(c, job), result(c, plain)
    pd.testing.assert_frame_equal(got[list(df.columns)], df, check_dtype=False)  # every value on its row
    pd.testing.assert_frame_equal(got, expected)  # and scored exactly as the same table without the commas


def test_a_line_with_a_value_beyond_the_header_is_refused_with_its_line_number(c: httpx.Client) -> None:
    content = b"age,bmi\n50,30\n60,31,1\n"
    why = reason(problem(upload(c, "shifted.csv", content), 422, "file"), "file")
    assert "shifted.csv: line 3 has 3 fields but the header names 2 columns" in why


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"age;bmi\n50;30\n60;31\n", "separated by ';'"),
        (b"age\tbmi\n50\t30\n", "separated by '\\t'"),
        (b"height,weight\n170,70\n", "expected age, sex, bmi"),
    ],
    ids=["semicolon", "tab", "other-columns"],
)
def test_a_table_with_none_of_the_models_columns_is_refused(c: httpx.Client, content: bytes, hint: str) -> None:
    why = reason(problem(upload(c, "t.csv", content), 422, "file"), "file")
    assert "none of the columns" in why and hint in why, why


def test_the_columns_the_model_does_not_use_come_back_as_they_were_sent(c: httpx.Client) -> None:
    """Issue #22, 4: ids lost their leading zeros (`007` came back `7.0`), text such as `NA` or `None` came back
    empty, a leading blank was dropped."""
    content = b"id,age,bmi,note\n007,50,30,NA\n00123,61,,None\n42,,25,null\nx9,40,22, lead\n8,55,31,\n"
    job, _ = wait(c, upload(c, "ids.csv", content, operation="impute").json()["id"])
    assert job["status"] == "succeeded", job
    text = c.get(job["result_url"]).text
    got = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    assert got["id"].tolist() == ["007", "00123", "42", "x9", "8"]
    assert got["note"].tolist() == ["NA", "None", "null", " lead", ""]
    assert got["age"].tolist()[0] in ("50", "50.0") and got["bmi"][1] not in ("", "nan")  # the hole is imputed


@pytest.mark.parametrize("name", ["error", "bmi__std", "age__q05"])
def test_an_input_column_named_like_an_added_one_is_refused(c: httpx.Client, name: str) -> None:
    why = reason(problem(upload(c, "t.csv", f"age,bmi,{name}\n50,30,keep me\n".encode()), 422, "file"), "file")
    assert f"column {name!r} has the name of a column the result adds" in why and "rename it" in why


def test_true_and_false_in_a_numeric_column_are_refused(c: httpx.Client) -> None:
    """Issue #22, 6: a column of TRUE/FALSE where the model expects numbers was scored as 1/0."""
    why = reason(problem(upload(c, "t.csv", b"age,bmi\nTRUE,30\nFALSE,31\n"), 422, "file"), "file")
    assert "column 'age' holds TRUE/FALSE" in why


def test_a_small_job_does_not_wait_behind_another_keys_large_one(request, tmp_path_factory) -> None:
    """Issue #22, 5: one runner, one job at a time: a 2-row job waited behind another key's 50 MB job. Now a job
    that has run `batch_slice_seconds` (0 here) hands its place back between two chunks when another key's job
    waits, and resumes from its checkpoints: every row scored once, as in one go."""
    folder = tmp_path_factory.mktemp("service-fair")
    with running_service(
        artifact_dir(request), folder, database="sqlite", sessions="memory", auth_enabled=True, batch_slice_seconds=0
    ) as svc:
        a, b = (svc.client(svc.create_api_key(name, ["infer"])[1]) for name in ("large", "small"))
        big = table(128 * 16, seed=3)
        large = upload(a, "large.csv", csv_bytes(big), operation="predict")
        assert large.status_code == 202, large.text
        deadline = time.monotonic() + 30
        while a.get(f"{JOBS}/{large.json()['id']}").json()["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        small = upload(b, "small.csv", csv_bytes(table(2, seed=4)), operation="predict")
        assert small.status_code == 202, small.text
        small_job, _ = wait(b, small.json()["id"])
        large_job, seen = wait(a, large.json()["id"])
        assert small_job["status"] == large_job["status"] == "succeeded"
        assert large_job["processed_rows"] == len(big) and large_job["failed_rows"] == 0
        assert small_job["finished_at"] < large_job["finished_at"]
        assert any("paused to let another key's job run" in (s.get("message") or "") for s in seen), [
            s.get("message") for s in seen
        ]
        again = upload(a, "again.csv", csv_bytes(big), operation="predict")  # the same table, in one go
        whole, _ = wait(a, again.json()["id"])
        pd.testing.assert_frame_equal(result(a, large_job), result(a, whole))


def test_cancel(svc: Service, c: httpx.Client) -> None:
    r = upload(c, "long.csv", csv_bytes(table(2000, seed=8)), operation="predict")
    job_id = r.json()["id"]
    cancelled = c.post(f"{JOBS}/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    assert problem(c.post(f"{JOBS}/{job_id}/cancel"), 409)["status_of_job"] == "cancelled"
    assert problem(c.get(f"{JOBS}/{job_id}/result"), 409)["status_of_job"] == "cancelled"
    deadline = time.monotonic() + 30
    folder = svc.state.jobs.folder(job_id)
    while folder.exists() and time.monotonic() < deadline:  # the runner stops at its next chunk, cleans up
        time.sleep(0.1)
    assert not folder.exists()
    job = c.get(f"{JOBS}/{job_id}").json()
    assert job["status"] == "cancelled" and job["processed_rows"] < 2000
    done, _ = wait(c, upload(c, "short.csv", csv_bytes(table(3)), operation="predict").json()["id"])
    assert problem(c.post(f"{JOBS}/{done['id']}/cancel"), 409)["status_of_job"] == "succeeded"


def test_a_finished_job_keeps_only_its_result(svc: Service, c: httpx.Client) -> None:
    job, _ = wait(c, upload(c, "p.csv", csv_bytes(table(4)), operation="predict").json()["id"])
    folder = svc.state.jobs.folder(job["id"])
    assert sorted(p.name for p in folder.iterdir()) == ["result.csv"]  # input and parts deleted at the end


@pytest.fixture(scope="module")
def short_retention(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("service-retention")
    with running_service(
        artifact_dir(request), folder, database="sqlite", sessions="memory", batch_retention_seconds=2,
        default_samples=SAMPLES,
    ) as service:  # fmt: skip
        yield service


def test_retention_deletes_old_jobs_and_their_results(short_retention: Service) -> None:
    c = short_retention.client()
    job, _ = wait(c, upload(c, "p.csv", csv_bytes(table(3)), operation="predict").json()["id"])
    folder = short_retention.state.jobs.folder(job["id"])
    assert (folder / "result.csv").is_file()
    orphan = short_retention.state.jobs.root / ("0" * 32)  # an upload cut short, long ago
    orphan.mkdir(parents=True)
    (orphan / "input.csv").write_text("age\n1\n")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    deadline = time.monotonic() + 20
    while (folder.exists() or orphan.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not folder.exists() and not orphan.exists()
    problem(c.get(f"{JOBS}/{job['id']}"), 404)


def test_a_database_outage_during_a_job_loses_nothing(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    with proxied_pg_schema() as (through, proxy):
        with running_service(
            artifact_dir(request), tmp_path, database="url", database_url=through, sessions="memory",
            database_timeout_seconds=2, registry_refresh_seconds=0.5, default_samples=SAMPLES,
        ) as svc:  # fmt: skip
            c = svc.client()
            df = table(640, seed=9)
            job_id = upload(c, "p.csv", csv_bytes(df), operation="predict").json()["id"]
            deadline = time.monotonic() + 60
            while c.get(f"{JOBS}/{job_id}").json()["processed_rows"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            proxy.mode = "refuse"  # mid-job: progress cannot be recorded
            problem(c.get(f"{JOBS}/{job_id}"), 503)
            time.sleep(3)
            proxy.mode = "forward"
            deadline = time.monotonic() + 10  # recovery by itself: within a registry refresh or two
            while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            job, _ = wait(c, job_id, timeout=120)
            assert job["status"] == "succeeded" and job["processed_rows"] == 640 and job["failed_rows"] == 0
            out = result(c, job)
            assert len(out) == 640 and out[f"{TARGET}__mean"].notna().all()


def test_score_cli_reads_a_trailing_comma_table_in_place(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hhvaem.cli import app

    df = table(5, seed=10, holes=0.0)
    (tmp_path / "in.csv").write_bytes(trailing_commas(df))
    out = tmp_path / "out.csv"
    r = CliRunner().invoke(app, ["score", artifact_dir(request), str(tmp_path / "in.csv"), str(out),
                                 "--operation", "predict", "--samples", str(SAMPLES)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "end with empty fields" in r.output
    pd.testing.assert_frame_equal(pd.read_csv(out)[list(df.columns)], df, check_dtype=False)
    (tmp_path / "bad.csv").write_bytes(b"age,bmi\n50,30,7\n")
    r = CliRunner().invoke(app, ["score", artifact_dir(request), str(tmp_path / "bad.csv"), str(out)])
    assert r.exit_code == 2 and "line 2 has 3 fields" in r.output and "Traceback" not in r.output
    (tmp_path / "semi.csv").write_bytes(b"age;bmi\n50;30\n")
    r = CliRunner().invoke(app, ["score", artifact_dir(request), str(tmp_path / "semi.csv"), str(out)])
    assert r.exit_code == 2 and "none of the columns" in r.output


def test_train_cli_reads_a_trailing_comma_table_in_place(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hhvaem.cli import app

    df = table(40, seed=11, holes=0.1)
    df["y"] = df["age"] * 2.0
    (tmp_path / "train.csv").write_bytes(trailing_commas(df))
    (tmp_path / "bad.csv").write_bytes(b"age,y\n50,1\n60,2,3\n")
    r = CliRunner().invoke(app, ["train", str(tmp_path / "bad.csv"), "--target", "y", "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "line 3 has 3 fields" in r.output, r.output
    from hhvaem.training.tabular import load_dataset

    loaded, schema = load_dataset(tmp_path / "train.csv", ["y"], None)  # what `hhvaem train` reads
    assert [c.name for c in schema.features] == list(df.columns[:-1]) and len(loaded) == 40
    pd.testing.assert_frame_equal(loaded[list(df.columns)].reset_index(drop=True), df, check_dtype=False)


def test_a_batch_result_is_bounded_like_its_input(request, tmp_path_factory) -> None:
    """Issue #22, 7: a 1.6 KB table with 1000 imputations made a 27 MB result; the limits allowed ~135 GB per job.
    Now the result's lines (rows x imputations) are bounded by `max_job_rows` at the upload (422 naming
    `imputations`, nothing queued), and its size by `max_result_bytes`, projected after the first chunk (the job
    fails saying both figures, nothing kept)."""
    folder = tmp_path_factory.mktemp("service-bounds")
    with running_service(
        artifact_dir(request), folder, database="sqlite", sessions="memory", max_job_rows=60, max_result_bytes=6000
    ) as svc:
        c = svc.client()
        r = upload(c, "many.csv", csv_bytes(table(10, seed=5)), operation="impute", imputations=8)
        why = reason(problem(r, 422, "imputations"), "imputations")
        assert why == "10 rows x 8 imputations = 80 result rows; at most 60"
        assert not any((svc.settings.data_dir / "batch").glob("*"))  # nothing kept, nothing queued

        small = wait(c, upload(c, "small.csv", csv_bytes(table(4, seed=5)), operation="both").json()["id"])[0]
        assert small["status"] == "succeeded", small
        assert len(c.get(small["result_url"]).content) <= 6000

        big, _ = wait(c, upload(c, "big.csv", csv_bytes(table(50, seed=5)), operation="both").json()["id"])
        assert big["status"] == "failed", big
        assert "its result would be about" in big["message"] and "over the limit of" in big["message"], big
        assert "HHVAEM_MAX_RESULT_BYTES" in big["message"]
        assert not (svc.settings.data_dir / "batch" / big["id"]).exists()  # nothing of it kept


def test_a_target_column_passes_through_and_the_prediction_never_reads_it(c: httpx.Client) -> None:
    """Issue #22, 6: a labelled table scored with `predict` conditioned on its own labels (their value back). Now
    the target column comes back as it was sent, with a note, and the prediction is the one made without it."""
    df = table(6, seed=11, holes=0.0)
    labelled = df.assign(**{TARGET: [25.0, 60.0, 150.0, 200.0, 280.0, 340.0]})
    without = wait(c, upload(c, "features.csv", csv_bytes(df), operation="predict").json()["id"])[0]
    job, _ = wait(c, upload(c, "labelled.csv", csv_bytes(labelled), operation="predict").json()["id"])
    assert job["status"] == "succeeded" and job["failed_rows"] == 0, job
    assert any(e["column"] == TARGET and "do not read it" in e["reason"] for e in job["errors"]), job["errors"]
    got, expected = result(c, job), result(c, without)
    assert got[TARGET].tolist() == labelled[TARGET].tolist()
    pd.testing.assert_frame_equal(got.drop(columns=TARGET), expected)
