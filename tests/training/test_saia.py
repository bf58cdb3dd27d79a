"""SAIA (training/saia.py) on a tiny model: curve shapes and endpoints, orders, AUCs, the KL reward, the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from hhvaem.app.engine import Engine, PredictQuery
from hhvaem.cli import app
from hhvaem.model.schema import Column, Schema
from hhvaem.training.artifact import data_fingerprint, load_model, write_artifact
from hhvaem.training.fit import fit
from hhvaem.training.saia import (
    METHODS,
    SaiaSettings,
    auc,
    choose_rows,
    gaussian_kl,
    kl_rewards,
    saia_artifact,
    step_seed,
)

runner = CliRunner()
D = 4
SETTINGS = SaiaSettings(methods=METHODS, samples=16, kl_draws=8, max_rows=6, seed=1)


def synthetic(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = a + 0.3 * rng.normal(size=n)
    c = (rng.normal(size=n) > 0).astype(int)
    e = np.exp(0.3 * rng.normal(size=n))
    y = 2 * a + c + 0.2 * rng.normal(size=n)
    return pd.DataFrame({"a": a, "b": b, "c": c, "e": e, "y": y})


SCHEMA = Schema(
    features=(Column("a", "real"), Column("b", "real"), Column("c", "binary", (0, 1)), Column("e", "positive")),
    targets=(Column("y", "real"),),
)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    df = synthetic(100)
    # every unit a marginal code, so that feature j is the encoder's input columns j and D + j (the KL test)
    fitted = fit(df, SCHEMA, "hhvaem", 60, seed=0, overrides={"discrete_units": "marginal"})
    out = tmp_path_factory.mktemp("saia") / "tiny"
    write_artifact(out, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(df))
    torch.set_num_threads(threads)
    return str(out)


@pytest.fixture(scope="module")
def result(artifact) -> dict:
    return saia_artifact(artifact, synthetic(20, seed=5), "y", SETTINGS, split=0)


def test_curves_have_d_plus_one_points_and_agree_at_both_ends(result):
    assert result["rows"] == 6 and result["features"] == ["a", "b", "c", "e"]
    curves = [(m, v) for m, v in result["methods"].items()]
    assert [m for m, _ in curves] == list(METHODS)
    for _, v in curves:
        assert len(v["error"]) == len(v["nll_y"]) == D + 1
        assert np.all(np.isfinite(v["error"])) and np.all(np.isfinite(v["nll_y"]))
    # Same model, same seed per (row, step): nothing observed and everything observed give the same samples.
    for key in ("error", "nll_y"):
        first = curves[0][1][key]
        for _, v in curves[1:]:
            assert v[key][0] == pytest.approx(first[0], rel=1e-6)
            assert v[key][D] == pytest.approx(first[D], rel=1e-6)
        for per_order in result["methods"]["random"][f"{key}_per_order"]:
            assert per_order[0] == pytest.approx(first[0], rel=1e-6)
            assert per_order[D] == pytest.approx(first[D], rel=1e-6)


def test_every_method_acquires_each_feature_exactly_once(result):
    for m, v in result["methods"].items():
        trajectories = v["picks"] if m == "random" else [v["picks"]]
        for picks in trajectories:
            assert len(picks) == result["rows"]
            for row in picks:
                assert sorted(row) == list(range(D)), (m, row)


def test_auc_is_the_mean_of_the_curve_and_random_the_mean_over_orders(result):
    for v in result["methods"].values():
        assert v["auc_error"] == pytest.approx(np.mean(v["error"]))
        assert v["auc_nll_y"] == pytest.approx(np.mean(v["nll_y"]))
    assert auc([1.0, 2.0, 6.0]) == pytest.approx(3.0)
    rnd = result["methods"]["random"]
    assert len(rnd["picks"]) == SETTINGS.random_orders
    assert len({str(p) for p in rnd["picks"]}) == SETTINGS.random_orders  # different orders
    np.testing.assert_allclose(rnd["error"], np.mean(rnd["error_per_order"], 0))
    np.testing.assert_allclose(rnd["nll_y"], np.mean(rnd["nll_y_per_order"], 0))


def test_information_methods_pick_what_the_served_engine_ranks_first(artifact, result):
    """Step 0 of `histogram` / `mixture` is Engine.next_features on an empty row with the step's seed."""
    engine = Engine(artifact, backend="onnx", threads=1)
    rows = choose_rows(20, SETTINGS.max_rows, SETTINGS.seed, 0)
    for method in ("histogram", "mixture"):
        for i in (0, 3):
            seed = step_seed(SETTINGS.seed, 0, int(rows[i]), 0)
            ranked = engine.next_features({}, samples=SETTINGS.samples, seed=seed, target="y", method=method)
            first = ["a", "b", "c", "e"].index(ranked["ranking"][0]["feature"])
            assert result["methods"][method]["picks"][i][0] == first


def test_gaussian_kl_is_zero_for_identical_gaussians_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    mu, s = torch.randn(50, 6, generator=g), torch.rand(50, 6, generator=g) + 0.1
    assert torch.allclose(gaussian_kl(mu, s, mu, s), torch.zeros(50), atol=1e-6)
    mu2, s2 = torch.randn(50, 6, generator=g), torch.rand(50, 6, generator=g) + 0.1
    assert bool((gaussian_kl(mu2, s2, mu, s) > 0).all())
    one = torch.ones(1, 1)
    assert float(gaussian_kl(one, one, 0 * one, one)) == pytest.approx(0.5)  # KL(N(1,1) || N(0,1))
    assert float(gaussian_kl(0 * one, one, 0 * one, 2 * one)) == pytest.approx(np.log(2) + 1 / 8 - 0.5)


def test_kl_reward_is_zero_for_a_feature_the_encoder_ignores(artifact):
    model = copy.deepcopy(load_model(artifact)[0])
    j = 1
    with torch.no_grad():  # q(eps | .) no longer reads feature j's code or mask bit
        model.dependency.trunks[0].layers[0].weight[:, [j, D + j]] = 0.0
    engine = Engine(artifact, backend="onnx", threads=1)
    row = {"a": 0.3}
    prep = PredictQuery([row], samples=16, seed=0, extra_outputs=frozenset({"target_given"})).prepare(engine)
    out = engine.call(prep.graph, [prep])
    for with_target in (True, False):
        rewards = kl_rewards(
            model,
            prep.feeds["x"][0],
            prep.feeds["mask"][0],
            out["features"][0],
            out["target_given"][0],
            [1, 2, 3],
            0,
            np.random.default_rng(0),
            8,
            with_target=with_target,
        )
        assert rewards.shape == (3,)
        assert rewards[0] == pytest.approx(0.0, abs=1e-9)
        if not with_target:
            assert np.all(rewards[1:] > 0)  # a feature the encoder reads moves it


def test_settings_refuse_an_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'oracle'"):
        SaiaSettings(methods=("random", "oracle"))


def test_cli_unknown_method_exits_2_with_a_reason(tmp_path):
    path = tmp_path / "t.csv"
    synthetic(30).to_csv(path, index=False)
    res = runner.invoke(app, ["saia", str(path), "--target", "y", "--methods", "random,oracle"])
    assert res.exit_code == 2
    assert "unknown method 'oracle'" in res.output and "Traceback" not in res.output


def test_cli_saia_writes_json_and_png(tmp_path):
    """A tiny table with a categorical target: error rate curves, JSON and plot written."""
    rng = np.random.default_rng(2)
    df = synthetic(60, seed=2)[["a", "b", "c"]]
    df["label"] = np.where(df["a"] > 0.5, "hi", np.where(df["a"] < -0.5, "lo", "mid"))
    path, js, png = tmp_path / "t.csv", tmp_path / "out.json", tmp_path / "out.png"
    df.iloc[rng.permutation(len(df))].to_csv(path, index=False)
    args = ["saia", str(path), "--target", "label", "--steps", "10", "--splits", "0", "--samples", "8"]
    args += ["--kl-draws", "4", "--max-rows", "3", "--methods", "random,kl,mixture", "--json", str(js)]
    res = runner.invoke(app, [*args, "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "AUC error rate" in res.output and "mixture" in res.output
    summary = json.loads(js.read_text())
    assert summary["target"] == "label" and summary["target_error"] == "error_rate" and summary["splits"] == [0]
    assert set(summary["methods"]) == {"random", "kl", "mixture"}
    for v in summary["methods"].values():
        assert len(v["error"]) == 4 and all(0.0 <= e <= 1.0 for e in v["error"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
