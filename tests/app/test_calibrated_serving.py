"""Served quantiles with the artifact's conformal correction (docs/calibration.md): in the engine, over v1, OIP v2
and sessions, and raw on request.

The demo model here is calibrated on demo rows it was trained on (the test checks the plumbing, not the figures:
those are benchmarks/calibration.py's). A calibrated quantile at level q must be exactly the raw quantile at the
level the calibration names for that column and that share of observed features, from the same draws."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hhvaem.app.engine import Engine
from hhvaem.app.engine.queries import ImputeQuery, PredictQuery
from hhvaem.model.io.artifact import ArtifactError
from hhvaem.training import calibration, quality
from hhvaem.training.artifact import load_model
from hhvaem.training.demo import demo_table
from hhvaem.training.fit import FittedModel
from tests.app.service import MODEL, TARGET, running_service

ROW = {"age": 59, "sex": 2, "bmi": 32.1, "blood_pressure": 101}  # 4 of 10 features: the middle bin
Q = (0.1, 0.9)


@pytest.fixture(scope="module")
def calibrated(demo_artifact, tmp_path_factory) -> str:
    copy = tmp_path_factory.mktemp("calibrated") / MODEL
    shutil.copytree(demo_artifact, copy)
    table = demo_table()[0]
    found, about, _, _ = calibration.measure(copy, table.head(120), seed=0)
    quality.amend(
        copy, lambda m: {"calibration": calibration.stored(found, {**about, "cross_fit": False, "applied": True})}
    )
    model, pp, _ = load_model(copy)
    rows = table.iloc[300:].reset_index(drop=True)
    summary = quality.measure(copy, FittedModel(model, pp, {}), rows, True, 442, 0, 1, table.head(300), found)
    summary["interval_coverage"] = about["check"]
    quality.record(copy, "quality", summary)
    return str(copy)


@pytest.fixture(scope="module")
def engine(calibrated) -> Engine:
    return Engine(calibrated, threads=1)


def _answer(engine, query):
    prepared = query.prepare(engine)
    return prepared.finish(engine.run_graph(prepared.graph, prepared.feeds))


def test_calibrated_quantiles_are_raw_ones_read_at_the_corrected_levels(engine):
    (row,) = _answer(engine, ImputeQuery([ROW], 40, Q, seed=5))
    share = np.array([len(ROW) / len(engine.schema.features)])
    moved = 0
    for name, hole in row["imputed"].items():
        col = engine.columns[name]
        if col.is_discrete:
            assert "calibrated" not in hole  # class probabilities are not corrected
            continue
        assert hole["calibrated"] is True
        levels = engine.calibration.levels(name, share, Q)[0]
        (raw,) = _answer(engine, ImputeQuery([ROW], 40, tuple(levels), seed=5, calibrated=False))
        assert raw["imputed"][name]["calibrated"] is False
        got = list(hole["quantiles"].values())
        assert got == pytest.approx(list(raw["imputed"][name]["quantiles"].values()), rel=1e-9)
        moved += not np.allclose(levels, Q, atol=1e-3)
    assert moved >= 3  # the correction does something on most columns


def test_raw_on_request_matches_the_uncalibrated_model(engine, calibrated, tmp_path):
    bare = tmp_path / MODEL
    shutil.copytree(calibrated, bare)
    quality.amend(bare, lambda m: {"calibration": None})  # as a model trained with --no-calibrate
    plain = Engine(bare, threads=1)
    assert plain.calibration is None
    (a,) = _answer(plain, PredictQuery([ROW], 40, Q, seed=9))
    (b,) = _answer(engine, PredictQuery([ROW], 40, Q, seed=9, calibrated=False))
    (c,) = _answer(engine, PredictQuery([ROW], 40, Q, seed=9))
    assert a["targets"][TARGET]["calibrated"] is False  # a model without calibration says so
    assert a["targets"][TARGET]["quantiles"] == b["targets"][TARGET]["quantiles"]
    assert c["targets"][TARGET]["mean"] == b["targets"][TARGET]["mean"]  # only quantiles change
    assert c["targets"][TARGET]["quantiles"] != b["targets"][TARGET]["quantiles"]


def test_a_damaged_calibration_is_refused_when_the_model_loads(calibrated, tmp_path):
    bad = tmp_path / MODEL
    shutil.copytree(calibrated, bad)
    quality.amend(bad, lambda m: {"calibration": {**m["calibration"], "grid": 7}})
    with pytest.raises(ArtifactError, match="calibration"):
        Engine(bad, threads=1)


def test_over_http_v1_v2_and_sessions(calibrated, engine, tmp_path):
    with running_service(calibrated, tmp_path / "svc", database="sqlite", sessions="memory") as svc:
        c = svc.client()
        body = {"rows": [ROW], "samples": 40, "seed": 5, "quantiles": list(Q)}
        cal = c.post(f"/v1/models/{MODEL}/predict", json=body).json()["rows"][0]["targets"][TARGET]
        raw = c.post(f"/v1/models/{MODEL}/predict", json={**body, "calibrated": False}).json()
        raw = raw["rows"][0]["targets"][TARGET]
        assert cal["calibrated"] is True and raw["calibrated"] is False and cal["quantiles"] != raw["quantiles"]
        bad = c.post(f"/v1/models/{MODEL}/predict", json={**body, "calibrated": "maybe"})
        assert bad.status_code == 422 and "calibrated" in bad.text
        imputed = c.post(f"/v1/models/{MODEL}/impute", json=body).json()["rows"][0]["imputed"]
        assert imputed["ldl"]["calibrated"] is True

        features = [[{**ROW, "sex": 1}.get(n) for n in engine.feature_index]]  # v2 takes category codes (2 is code 1)
        for flag, want in ((None, cal), (False, raw)):
            params = {"operation": "predict", "samples": 40, "seed": 5, "quantiles": "0.1,0.9"}
            if flag is not None:
                params["calibrated"] = flag
            infer = {
                "inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", "data": features}],
                "parameters": params,
            }
            r = c.post(f"/v2/models/{MODEL}/infer", json=infer)
            assert r.status_code == 200, r.text
            qs = next(o for o in r.json()["outputs"] if o["name"] == "target_quantiles")["data"]
            assert qs == pytest.approx(list(want["quantiles"].values()), rel=1e-5)
        infer["parameters"]["calibrated"] = "no"
        r = c.post(f"/v2/models/{MODEL}/infer", json=infer)
        assert r.status_code == 400 and "parameters.calibrated" in r.text

        sid = c.post("/v1/sessions", json={"model": MODEL, "observations": ROW}).json()["session_id"]
        for flag in ("true", "false"):
            got = c.get(f"/v1/sessions/{sid}/prediction", params={"samples": 40, "seed": 5, "calibrated": flag})
            s = got.json()["targets"][TARGET]
            assert s["calibrated"] is (flag == "true") and s["quantiles"].keys() == {"0.05", "0.5", "0.95"}
        nxt = c.get(f"/v1/sessions/{sid}/next-features", params={"samples": 40}).json()
        assert nxt["prediction"]["calibrated"] is True

        # the model card: served as stored, over v1 and in the v2 metadata
        card = engine.manifest["metrics"]["quality"]
        assert c.get(f"/v1/models/{MODEL}").json()["metrics"]["quality"] == card
        params = c.get(f"/v2/models/{MODEL}").json()["parameters"]
        assert json.loads(params["model_card"]) == card
        assert params["quality_target_rmse"] == card["target_rmse"]
        assert params["hgb_nan_target_rmse"] == card["baselines"]["hgb_nan"]["target_rmse"]
        assert params["coverage90_target"] == card["interval_coverage"]["target"]["calibrated_cover90"]


def test_the_model_card_adds_up_and_is_printed(engine, calibrated):
    """The per-feature figures recombine to the overall ones (entry-weighted), for the model and for KNN; the
    target error is the model's predictive mean's, recomputed through the engine (another set of draws: within
    Monte Carlo noise); `hhvaem info MODEL` prints the card."""
    card = engine.manifest["metrics"]["quality"]
    per = card["per_feature"]
    numeric = [f for f in per.values() if "rmse" in f]
    pooled = np.sqrt(sum(f["rmse"] ** 2 * f["entries"] for f in numeric) / sum(f["entries"] for f in numeric))
    assert pooled == pytest.approx(card["rmse_xu"], rel=1e-3)
    knn = card["baselines"]["knn_per_feature"]
    pooled_knn = np.sqrt(
        sum(knn[n] ** 2 * f["entries"] for n, f in per.items() if "rmse" in f) / sum(f["entries"] for f in numeric)
    )
    assert pooled_knn == pytest.approx(card["baselines"]["knn"]["rmse_xu"], rel=1e-3)
    assert card["baselines"]["fitted_on_rows"] == 300 and card["rows"] == 142

    from hhvaem.training.evaluate import protocol_test_mask

    rows = demo_table()[0].iloc[300:].reset_index(drop=True)
    features = [c.name for c in engine.schema.features]
    shown = protocol_test_mask(len(rows), len(features), 0) & rows[features].notna().to_numpy()
    asks = [{n: rows.at[i, n] for j, n in enumerate(features) if shown[i, j]} for i in range(len(rows))]
    answers = _answer(engine, PredictQuery([{k: _plain(v) for k, v in a.items()} for a in asks], 50, seed=1))
    means = np.array([a["targets"][TARGET]["mean"] for a in answers])
    rmse = float(np.sqrt(np.mean((means - rows[TARGET].to_numpy()) ** 2)))
    assert rmse == pytest.approx(card["target_rmse"], rel=0.05)

    from typer.testing import CliRunner

    from hhvaem.cli import app

    res = CliRunner().invoke(app, ["info", calibrated])
    assert res.exit_code == 0, res.output
    assert f"KNN {card['baselines']['knn']['rmse_xu']:.3f}" in res.output
    assert "90 % intervals, target: cover" in res.output and "calibrated on 120 rows" in res.output
    assert "ldl: RMSE" in res.output


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def test_plausibility_over_http(calibrated, engine, tmp_path):
    """An implausible answer (LDL ten times too high) is called unusual over v1, in a session and in OIP v2; the
    audit keeps a count, never the value; a bad threshold is a 422 naming it; asking costs nothing to the answer."""
    odd = {**ROW, "ldl": 1200.0, "hdl": 50.0}
    with running_service(calibrated, tmp_path / "svc", database="sqlite", sessions="memory") as svc:
        c = svc.client()
        body = {"rows": [odd, {**odd, "ldl": 120.0}], "samples": 40, "seed": 5}
        plain = c.post(f"/v1/models/{MODEL}/predict", json=body).json()["rows"]
        checked = c.post(f"/v1/models/{MODEL}/predict", json={**body, "plausibility": True}).json()["rows"]
        assert [r["targets"] for r in checked] == [r["targets"] for r in plain]  # the answer itself is unchanged
        assert plain[0]["plausibility"] is None
        assert set(checked[0]["plausibility"]) == set(odd) and checked[0]["unusual"] == ["ldl"]
        assert checked[0]["plausibility"]["ldl"]["p"] < 0.01 and checked[1]["plausibility"]["ldl"]["p"] > 0.05
        strict = c.post(
            f"/v1/models/{MODEL}/impute", json={**body, "plausibility": True, "plausibility_threshold": 0.5}
        )
        assert strict.status_code == 200 and len(strict.json()["rows"][1]["unusual"]) >= 1  # more flagged at 0.5
        bad = c.post(f"/v1/models/{MODEL}/impute", json={**body, "plausibility": True, "plausibility_threshold": 0})
        assert bad.status_code == 422 and "plausibility_threshold" in bad.text

        audits = svc.events(kind="prediction.served")
        assert any((e.detail or {}).get("unusual") == 1 for e in audits)
        assert all("1200" not in str(e.detail) for e in audits)  # a count, never the value

        sid = c.post("/v1/sessions", json={"model": MODEL, "observations": odd}).json()["session_id"]
        s = c.get(f"/v1/sessions/{sid}/prediction", params={"samples": 40, "seed": 5, "plausibility": "true"}).json()
        assert s["unusual"] == ["ldl"] and s["plausibility"]["ldl"]["p"] == checked[0]["plausibility"]["ldl"]["p"]

        features = [[{**odd, "sex": 1}.get(n) for n in engine.feature_index]]
        infer = {
            "inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", "data": features}],
            "parameters": {"operation": "predict", "samples": 40, "seed": 5, "plausibility": True},
        }
        r = c.post(f"/v2/models/{MODEL}/infer", json=infer)
        assert r.status_code == 200, r.text
        p = next(o for o in r.json()["outputs"] if o["name"] == "plausibility")
        assert p["shape"] == [1, 10]
        names = list(engine.feature_index)
        got = dict(zip(names, p["data"]))
        assert got["ldl"] == pytest.approx(checked[0]["plausibility"]["ldl"]["p"], rel=1e-5)
        assert got["total_cholesterol"] is None or np.isnan(got["total_cholesterol"])  # not observed


def test_a_correction_that_did_not_help_is_kept_but_not_applied(calibrated, tmp_path):
    from hhvaem.training.calibration import helps

    worse = {
        "target": {
            "raw_cover50": 0.5,
            "calibrated_cover50": 0.45,
            "raw_cover90": 0.9,
            "calibrated_cover90": 0.85,
            "entries": 100,
        }
    }
    better = {"target": {**worse["target"], "raw_cover90": 0.8, "calibrated_cover90": 0.9, "raw_cover50": 0.4}}
    assert not helps(worse) and helps(better)
    kept = tmp_path / MODEL
    shutil.copytree(calibrated, kept)
    quality.amend(kept, lambda m: {"calibration": {**m["calibration"], "applied": False}})
    engine = Engine(kept, threads=1)
    assert engine.calibration is None  # served raw, and each summary says so
    (row,) = _answer(engine, PredictQuery([ROW], 40, Q, seed=5))
    assert row["targets"][TARGET]["calibrated"] is False
    from typer.testing import CliRunner

    from hhvaem.cli import app

    res = CliRunner().invoke(app, ["info", str(kept)])
    assert "did not bring coverage closer to nominal in its 2-fold check, so it is not applied" in res.output


def test_batch_scoring_serves_calibrated_quantiles_unless_raw_is_asked(calibrated, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from hhvaem.cli import app

    src = tmp_path / "in.csv"
    pd.DataFrame([ROW, {**ROW, "age": 30}]).to_csv(src, index=False)
    args = ["score", calibrated, str(src), "--samples", "40", "--operation", "predict"]
    for flags, name in (([], "cal.csv"), (["--raw-quantiles"], "raw.csv")):
        res = CliRunner().invoke(
            app, [*args, str(tmp_path / name), "--samples", "40", "--operation", "predict", *flags]
        )
        assert res.exit_code == 0, res.output
    cal, raw = pd.read_csv(tmp_path / "cal.csv"), pd.read_csv(tmp_path / "raw.csv")
    engine = Engine(calibrated, threads=1)
    (row,) = _answer(engine, PredictQuery([ROW], 40, (0.05, 0.5, 0.95), seed=0))
    assert cal.loc[0, f"{TARGET}__q95"] == pytest.approx(row["targets"][TARGET]["quantiles"]["0.95"], rel=1e-6)
    assert cal.loc[0, f"{TARGET}__mean"] == raw.loc[0, f"{TARGET}__mean"]
    assert cal.loc[0, f"{TARGET}__q95"] != raw.loc[0, f"{TARGET}__q95"]
