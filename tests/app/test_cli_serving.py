"""The serving side of the CLI: score, export, keys, serve's argument checks."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from hhvaem.cli import app
from hhvaem.model.io.artifact import FORMAT_VERSION, read_manifest

runner = CliRunner()


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HHVAEM_DATA_DIR", str(tmp_path / "data"))
    for name in ("HHVAEM_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_score_fills_holes_predicts_and_reports_bad_rows_by_number(demo_artifact, tmp_path):
    df = pd.DataFrame(
        {
            "age": [59, 48, 30, 61],
            "sex": [2, 1, 7, 1],  # row 3: no such category
            "bmi": [32.1, None, 25.0, "abc"],  # row 4: not a number
            "blood_pressure": [101, 87, None, 90],
        }
    )
    src, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    df.to_csv(src, index=False)
    res = runner.invoke(app, ["score", demo_artifact, str(src), str(out), "--samples", "20"])
    assert res.exit_code == 0, res.output
    assert "row 3, column sex: unknown category" in res.output and "row 4, column bmi" in res.output
    assert "2 rows scored, 2 rejected" in res.output
    got = pd.read_parquet(out)
    assert len(got) == 4 and got.loc[2, "error"].startswith("sex:") and got.loc[0, "error"] == ""
    assert float(got.loc[1, "bmi"]) > 10 and got.loc[1, "bmi__std"] > 0  # the hole in row 2 is filled, in kg/m²
    assert got.loc[0, "disease_progression__q05"] < got.loc[0, "disease_progression__q95"]
    assert pd.isna(got.loc[2, "disease_progression__mean"])  # rejected rows stay unscored


def test_score_checks_plausibility_and_writes_it_per_value(demo_artifact, tmp_path):
    """`--plausibility`: a p per observed value and the unusual ones; the scores themselves unchanged."""
    df = pd.DataFrame({"age": [59, 48], "bmi": [32.1, 25.0], "ldl": [120.0, 1200.0], "hdl": [50.0, None]})
    src = tmp_path / "in.csv"
    df.to_csv(src, index=False)
    for flags, name in (([], "plain.csv"), (["--plausibility"], "checked.csv")):
        res = runner.invoke(app, ["score", demo_artifact, str(src), str(tmp_path / name), "--samples", "20", *flags])
        assert res.exit_code == 0, res.output
    plain, checked = pd.read_csv(tmp_path / "plain.csv"), pd.read_csv(tmp_path / "checked.csv")
    pd.testing.assert_frame_equal(plain, checked[plain.columns])  # the checks add columns, change none
    assert list(checked.columns[-2:]) == ["unusual", "error"]
    assert checked.loc[1, "ldl__plausibility"] < 0.01 and "ldl" in checked.loc[1, "unusual"].split(",")
    assert checked.loc[0, "ldl__plausibility"] > 0.01
    assert pd.isna(checked.loc[1, "hdl__plausibility"]) and pd.isna(checked.loc[0, "blood_pressure__plausibility"])
    res = runner.invoke(
        app,
        [
            "score",
            demo_artifact,
            str(src),
            str(tmp_path / "o.csv"),
            "--plausibility",
            "--imputations",
            "2",
            "--operation",
            "impute",
        ],
    )
    assert res.exit_code == 2 and "--plausibility: with --imputations it needs --operation both" in res.output


def test_score_refuses_bad_arguments_with_one_line(demo_artifact, tmp_path):
    res = runner.invoke(app, ["score", demo_artifact, str(tmp_path / "nope.csv"), str(tmp_path / "o.csv")])
    assert res.exit_code == 2 and "file not found" in res.output
    res = runner.invoke(app, ["score", demo_artifact, "x.csv", "o.txt"])
    assert res.exit_code == 2 and "must end in .csv or .parquet" in res.output
    res = runner.invoke(app, ["score", str(tmp_path), "x.csv", "o.csv"])
    assert res.exit_code == 2 and "not an artifact directory" in res.output
    res = runner.invoke(app, ["score", demo_artifact, "x.csv", "o.csv", "--operation", "guess"])
    assert res.exit_code == 2 and "unknown operation" in res.output


def test_export_regenerates_the_graph_and_upgrades_old_manifests(demo_artifact, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(demo_artifact, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = 1
    for graph in m.pop("graphs").values():
        del m["files"][graph["file"]]
        (copy / graph["file"]).unlink()
    (copy / "manifest.json").write_text(json.dumps(m))
    res = runner.invoke(app, ["export", str(copy)])
    assert res.exit_code == 0, res.output
    fresh = read_manifest(copy, require_graphs=True)
    assert fresh["format_version"] == FORMAT_VERSION and {g["opset"] for g in fresh["graphs"].values()} == {17}
    assert set(fresh["graphs"]) == {"impute", "acquire", "conditional"}
    with open(copy / "model.pt", "ab") as f:
        f.write(b"x")
    res = runner.invoke(app, ["export", str(copy)])
    assert res.exit_code == 2 and "checksum mismatch for model.pt" in res.output


def test_keys_are_shown_once_and_stored_hashed(env):
    res = runner.invoke(app, ["keys", "create", "frontend", "--scope", "infer"])
    assert res.exit_code == 0, res.output
    key = res.output.strip().split(": ")[-1]
    assert key.startswith("hhv_")
    listed = runner.invoke(app, ["keys", "list"])
    assert "frontend" in listed.output and key not in listed.output and "active" in listed.output
    assert key.encode() not in (env / "data" / "hhvaem.db").read_bytes()
    assert runner.invoke(app, ["keys", "revoke", "1"]).exit_code == 0
    assert "revoked" in runner.invoke(app, ["keys", "list"]).output
    res = runner.invoke(app, ["keys", "revoke", "99"])
    assert res.exit_code == 2 and "no API key with id 99" in res.output
    res = runner.invoke(app, ["keys", "create", "x", "--scope", "root"])
    assert res.exit_code == 2


def test_serve_refuses_a_missing_models_directory(tmp_path):
    res = runner.invoke(app, ["serve", "--models", str(tmp_path / "none")])
    assert res.exit_code == 2 and "is not a directory" in res.output
