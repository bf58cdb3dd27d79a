"""The CLI end to end on a small synthetic table: train -> artifact, evaluate -> JSON, errors -> exit 2."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from hhvaem.cli import app
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
    assert m["format_version"] == 3
    assert set(m["files"]) == {"model.pt", "impute.onnx", "acquire.onnx", "conditional.onnx"}
    assert {n: g["file"] for n, g in m["graphs"].items()} == {n: f"{n}.onnx" for n in m["graphs"]}
    assert [t["name"] for t in m["graphs"]["impute"]["inputs"]][:2] == ["x", "mask"]  # no targets: none observed
    momentum = next(t for t in m["graphs"]["conditional"]["inputs"] if t["name"] == "momentum")
    assert momentum["axes"] == ["steps", "rows", "samples", "latent"] and m["sampler"]["hmc_steps"] == 5  # T, once
    assert "hmc_steps" not in m["architecture"]
    assert [c["name"] for c in m["schema"]["targets"]] == ["y"]
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


def test_training_is_reproducible_with_seed(table, artifact, tmp_path):
    out = tmp_path / "again"
    res = runner.invoke(app, ["train", table, "--target", "y", "--steps", "60", "--seed", "3", "--out", str(out)])
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
        app, ["train", str(path), "--target", "price", "--target", "label", "--steps", "30"] + ["--out", str(out)]
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
