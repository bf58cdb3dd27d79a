"""The CLI end to end on a small synthetic table: train -> artifact, evaluate -> JSON, errors -> exit 2."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from hhvaem.cli import app
from hhvaem.model.io.artifact import FORMAT_VERSION, manifest_text
from hhvaem.training.artifact import ArtifactError, load_model, read_manifest
from hhvaem.training.evaluate import protocol_test_mask, split_indices

runner = CliRunner()


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> str:
    """Mixed-type table with genuine holes: y depends on a and b, c is binary, d categorical text."""
    rng = np.random.default_rng(0)
    n = 120
    a = rng.normal(size=n)
    b = a + 0.3 * rng.normal(size=n)
    c = (a + rng.normal(size=n) > 0).astype(float)
    d = np.where(b > 0.5, "high", np.where(b < -0.5, "low", "mid"))
    y = np.exp(0.5 * a + 0.2 * rng.normal(size=n))
    df = pd.DataFrame({"a": a, "b": b, "c": c, "d": d, "y": y})
    df.loc[rng.random(n) < 0.1, "a"] = np.nan
    df.loc[rng.random(n) < 0.1, "y"] = np.nan
    path = tmp_path_factory.mktemp("data") / "table.csv"
    df.to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def artifact(table, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("model") / "m"
    res = runner.invoke(app, ["train", table, "--target", "y", "--steps", "60", "--seed", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return str(out)


def test_train_writes_a_complete_manifest(artifact):
    m = read_manifest(artifact)
    assert m["format_version"] == FORMAT_VERSION
    assert set(m["files"]) == {"model.pt", "impute.onnx", "acquire.onnx", "conditional.onnx"}
    assert {n: g["file"] for n, g in m["graphs"].items()} == {n: f"{n}.onnx" for n in m["graphs"]}
    assert [t["name"] for t in m["graphs"]["impute"]["inputs"]][:2] == ["x", "mask"]  # no targets: none observed
    momentum = next(t for t in m["graphs"]["conditional"]["inputs"] if t["name"] == "momentum")
    assert momentum["axes"] == ["steps", "rows", "samples", "latent"] and m["sampler"]["hmc_steps"] == 5  # T, once
    assert "hmc_steps" not in m["architecture"]
    assert [c["name"] for c in m["schema"]["targets"]] == ["y"]
    # 120 rows: too few to hold any out of the served model, so a cross-fit model trained on 96 rows is calibrated
    # and measured on the other 24, and the manifest says so
    q = m["metrics"]["quality"]
    assert q["held_out"] is True and q["cross_fit"] is True and q["rows"] == 24 and "cross-fit" in q["rows_chosen"]
    cal = m["calibration"]
    assert cal["cross_fit"] is True and cal["rows"] == 24 and cal["method"] == "conformal"
    assert set(cal["columns"]) == {"a", "b", "y"}  # the numeric columns; categories are not corrected
    assert all(np.isfinite(q[k]) for k in ("rmse_xu", "acc_xu", "target_rmse")), q
    types = {c["name"]: c["type"] for c in m["schema"]["features"]}
    assert types == {"a": "real", "b": "real", "c": "binary", "d": "categorical"}
    s = m["sampler"]
    # Small table (< 10 features): latent [4, 2], T = 5; step sizes per step and dimension.
    assert m["architecture"]["latent_dims"] == [4, 2]
    assert np.array(s["step_sizes"]).shape == (5, 6)
    assert s["leapfrog_steps"] == 5 and s["mass"] == "encoder" and s["inflation"] > 0
    assert set(m["preprocessing"]) == {"a", "b", "y"}
    assert m["data"]["rows"] == 120 and len(m["data"]["sha256"]) == 64
    for stage in ("marginal", "vi", "hmc"):
        assert m["training"][stage]["seconds"] > 0
    assert "model.pt" in m["files"]


def test_artifact_round_trip_and_checksum(artifact, tmp_path):
    model, pp, manifest = load_model(artifact)
    assert torch.allclose(model.step_sizes, torch.tensor(manifest["sampler"]["step_sizes"]))
    # A file changed after export is refused.
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(artifact, bad)
    with open(bad / "model.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(ArtifactError, match="checksum mismatch for model.pt"):
        read_manifest(bad)
    # An unknown format version is refused.
    m = json.loads((bad / "manifest.json").read_text())
    m["format_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format version 99"):
        read_manifest(bad)
    # A version-4 artifact (before warps and bounded scales) means the same to this build: it is read.
    old = tmp_path / "old"
    shutil.copytree(artifact, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 4
    (old / "manifest.json").write_text(manifest_text(m))  # sealed as a version-4 writer sealed it
    assert read_manifest(old)["format_version"] == 4


def test_training_is_reproducible_with_seed(table, artifact, tmp_path):
    out = tmp_path / "again"
    args = ["train", table, "--target", "y", "--steps", "60", "--seed", "3", "--no-calibrate", "--out", str(out)]
    res = runner.invoke(app, args)  # the served model's weights do not depend on the calibration
    assert res.exit_code == 0, res.output
    a, _, _ = load_model(artifact)
    b, _, _ = load_model(out)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "nope"], "unknown target column 'nope'"),
        (["--target", "y", "--variant", "bogus"], "unknown variant 'bogus'"),
    ],
)
def test_train_rejects_bad_input_with_one_line(table, tmp_path, args, message):
    res = runner.invoke(app, ["train", table, *args, "--steps", "20", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output


def test_train_rejects_missing_file(tmp_path):
    res = runner.invoke(app, ["train", str(tmp_path / "none.csv"), "--target", "y", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "file not found" in res.output


def test_evaluate_writes_protocol_json(table, tmp_path):
    out = tmp_path / "m.json"
    res = runner.invoke(
        app,
        ["evaluate", table, "--target", "y", "--variant", "vaem", "--steps", "40", "--splits", "0,1"]
        + ["--samples", "16", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())
    assert summary["variant"] == "vaem" and summary["splits"] == [0, 1]
    for name in ("nll_xu", "nll_y", "rmse_xu", "acc_xu", "target_rmse", "train_seconds"):
        m = summary["metrics"][name]
        assert len(m["per_split"]) == 2 and np.isfinite(m["mean"]) and m["std"] >= 0
    assert 0 <= summary["metrics"]["acc_xu"]["mean"] <= 1
    assert "nll_xu" in res.output
    # the per-column diagnosis: in the JSON per split, and one printed line per column
    for key in ("col/b/hidden_rmse", "col/b/observed_rmse", "col/b/marginal_rmse", "col/d/hidden_accuracy"):
        assert len(summary["metrics"][key]["per_split"]) == 2, key
    shares = [m["mean"] for k, m in summary["metrics"].items() if k.endswith("/share")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-9)  # a share per split sums to 1, so does their mean
    printed = [line for line in res.output.splitlines() if line.strip().startswith(("a ", "b ", "c ", "d "))]
    assert len(printed) == 4 and "majority" in printed[3] and "col/" not in res.output


def test_evaluate_rejects_bad_splits(table):
    res = runner.invoke(app, ["evaluate", table, "--target", "y", "--splits", "0,12"])
    assert res.exit_code == 2 and "--splits" in res.output


def test_protocol_splits_and_masks_are_the_documented_ones():
    from sklearn.model_selection import KFold

    folds = list(KFold(n_splits=10, shuffle=True, random_state=0).split(np.arange(57)))
    train, test = split_indices(57, 4)
    assert np.array_equal(train, folds[4][0]) and np.array_equal(test, folds[4][1])
    mask = protocol_test_mask(6, 5, 2)
    assert np.array_equal(mask, np.random.default_rng(1002).random((6, 5)) < 0.5)


def test_train_on_parquet_with_a_regression_and_a_classification_target(tmp_path):
    rng = np.random.default_rng(1)
    n = 80
    a = rng.normal(size=n)
    df = pd.DataFrame(
        {
            "a": a,
            "b": a + 0.5 * rng.normal(size=n),
            "size": rng.choice(["S", "M", "L"], size=n),
            "price": np.exp(a),
            "label": np.where(a > 0, "yes", "no"),
        }
    )
    df.loc[rng.random(n) < 0.2, "label"] = None  # genuinely missing target cells
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    out = tmp_path / "m"
    res = runner.invoke(
        app,
        [
            "train",
            str(path),
            "--target",
            "price",
            "--target",
            "label",
            "--steps",
            "30",
            "--no-calibrate",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    model, pp, manifest = load_model(out)
    targets = {c["name"]: c for c in manifest["schema"]["targets"]}
    assert targets["price"]["type"] == "positive"
    assert targets["label"]["type"] == "binary" and targets["label"]["categories"] == ["no", "yes"]
    assert [c.name for c in model.schema.features] == ["a", "b", "size"]
    # The model predicts both targets: raw parameters for 2 target columns per posterior sample.
    from hhvaem.training.fit import encode_rows

    data = encode_rows(pp, df.head(4))
    obs = model.observed(data.x, data.mx, data.y, torch.zeros_like(data.my))
    eps, _ = model.posterior(obs, 3)
    assert model.target_params(eps, obs.unsqueeze(-2)).shape[:3] == (4, 3, 2)


# ---- the first hour (issue #12): threads, progress in a log, the demo, counts and column order ---------------


def test_free_cores_counts_the_cores_not_busy(monkeypatch):
    from hhvaem import cli

    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(cli, "_cpu_quota", lambda: None)
    for load, free in ((0.0, 4), (0.4, 4), (2.6, 1), (1.4, 3), (9.0, 1)):
        monkeypatch.setattr(cli.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert cli.free_cores() == free, load
    monkeypatch.setattr(cli, "_cpu_quota", lambda: 2)  # docker run --cpus 2
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert cli.free_cores() == 2


def test_training_threads_default_to_the_free_cores(table, tmp_path, monkeypatch):
    from hhvaem import cli

    before = torch.get_num_threads()
    monkeypatch.setattr(cli, "free_cores", lambda: 1)
    try:
        torch.set_num_threads(2)
        res = runner.invoke(
            app, ["train", table, "--target", "y", "--steps", "10", "--no-calibrate", "--out", str(tmp_path / "m")]
        )
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 1
        assert ", 1 torch thread" in res.output
        res = runner.invoke(app, ["train", table, "--target", "y", "--ignore-extra", "--out", str(tmp_path / "n")])
        assert res.exit_code == 2 and "--ignore-extra: needs --schema" in res.output
    finally:
        torch.set_num_threads(before)


def test_train_logs_progress_from_the_start_then_scores_counts_as_integers(tmp_path):
    """`hhvaem train` with its output going to a log (not a terminal): a first line before torch has loaded, the
    plan, lines from every stage; the count column it infers comes back from `hhvaem score` as whole numbers, and
    the scored table keeps the input's column order with the added columns after it."""
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(4)
    n = 100
    visits = rng.poisson(6, n).astype(object)
    df = pd.DataFrame({"a": rng.normal(size=n), "visits": visits, "y": rng.normal(size=n)})
    df.loc[7, "visits"] = "many"  # one text cell, read as missing on request (with a warning naming it)
    data = tmp_path / "visits.csv"
    df.to_csv(data, index=False)
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "hhvaem.cli", "train", str(data), "--target", "y", "--steps", "40", "--no-calibrate"]
    cmd += ["--out", str(out)]
    started = time.monotonic()
    proc = subprocess.Popen(
        [*cmd, "--non-numeric-as-missing"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    first = proc.stderr.readline()
    first_after = time.monotonic() - started
    rest, _ = proc.communicate(timeout=300)[::-1]
    assert proc.returncode == 0, rest
    assert first == f"reading {data}\n"
    assert first_after < 5, f"the first line came after {first_after:.1f} s"
    lines = rest.splitlines()
    assert "warning: column 'visits': 1 non-numeric cell read as missing (row 8: 'many')" in lines
    plan = next(line for line in lines if line.startswith("100 rows, 2 features"))
    assert (
        "(1 real, 1 count)" in plan
        and "target y (real); 50 steps = 10 marginal-VAE + 36 VI + 4 HMC (40 dependency-VAE steps, from --steps)"
        in plan
    )
    for stage, steps in (("stage 1 marginal VAEs", 10), ("stage 2 dependency VAE", 36), ("stage 3 VAE + HMC", 4)):
        assert any(line.startswith(f"{stage}: step 1/{steps}, loss ") for line in lines), stage
        assert any(line.startswith(f"{stage}: {steps} steps, loss ") for line in lines), stage
    assert "exporting the ONNX graphs" in lines

    rows = pd.DataFrame(
        {"y": [0.1, None, 0.3], "note": ["p", "q", "r"], "visits": [3, None, None], "a": [None, 0.2, 1]}
    )
    rows.to_csv(tmp_path / "rows.csv", index=False)
    scored = tmp_path / "scored.csv"
    res = runner.invoke(app, ["score", str(out), str(tmp_path / "rows.csv"), str(scored), "--samples", "20"])
    assert res.exit_code == 0, res.output
    header, *body = scored.read_text().splitlines()
    assert header.split(",") == [
        "y", "note", "visits", "a",  # the input's columns, as they came
        "a__std", "visits__std",  # per imputed feature, in the schema's order
        "y__mean", "y__std", "y__q05", "y__q50", "y__q95",  # per target
        "error",
    ]  # fmt: skip
    visits_cells = [line.split(",")[2] for line in body]
    assert visits_cells[0] == "3" and all(v.isdigit() for v in visits_cells), visits_cells


def test_demo_trains_once_into_its_folder_then_reuses_it(tmp_path, monkeypatch):
    from dataclasses import replace

    import hhvaem.training.demo as demo_module
    from hhvaem.cli import _demo_needs_training
    from hhvaem.model.io.artifact import read_manifest

    models = tmp_path / "models"
    res = runner.invoke(app, ["demo", "--train-only", "--models", str(models), "--steps", "20", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert f"training the demo model into {models / 'diabetes'} (first run only; about a minute, 1 torch thread)" in (
        res.output
    )
    assert "stage 1 marginal VAEs: step 1/" in res.output and "demo model trained and exported in" in res.output
    assert read_manifest(models / "diabetes", require_graphs=True)["name"] == "diabetes"
    assert [p.name for p in models.iterdir()] == ["diabetes"], "nothing half-written left beside it"

    res = runner.invoke(app, ["demo", "--train-only", "--models", str(models)])
    assert res.exit_code == 0 and f"the demo model is in {models / 'diabetes'}" in res.output
    assert "training" not in res.output

    # a demo trained by an earlier version, whose columns differ from this version's table, is trained again
    table, schema = demo_module.demo_table()
    edited = replace(
        schema, features=(replace(schema.features[0], description="Another sentence."), *schema.features[1:])
    )
    with monkeypatch.context() as patch:
        patch.setattr(demo_module, "demo_table", lambda: (table, edited))
        assert "the demo's columns changed" in _demo_needs_training(models / "diabetes", rebuild=False)
    assert _demo_needs_training(models / "diabetes", rebuild=False) is None

    (models / "diabetes" / "impute.onnx").write_bytes(b"not a graph")  # e.g. an interrupted copy
    assert "checksum mismatch for impute.onnx" in _demo_needs_training(models / "diabetes", rebuild=False)
    assert _demo_needs_training(tmp_path / "nothing", rebuild=False) == "first run only"
