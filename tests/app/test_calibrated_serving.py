"""Served quantiles with the artifact's conformal correction (docs/calibration.md): in the engine, over v1, OIP v2
and sessions, and raw on request.

The demo model here is calibrated on demo rows it was trained on (the test checks the plumbing, not the figures:
those are benchmarks/calibration.py's). A calibrated quantile at level q must be exactly the raw quantile at the
level the calibration names for that column and that share of observed features, from the same draws."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hhvaem.app.engine import Engine
from hhvaem.app.engine.queries import ImputeQuery, PredictQuery
from hhvaem.model.io.artifact import ArtifactError
from hhvaem.training import calibration, quality
from hhvaem.training.demo import demo_table
from tests.app.service import MODEL, TARGET, running_service

ROW = {"age": 59, "sex": 2, "bmi": 32.1, "blood_pressure": 101}  # 4 of 10 features: the middle bin
Q = (0.1, 0.9)


@pytest.fixture(scope="module")
def calibrated(demo_artifact, tmp_path_factory) -> str:
    copy = tmp_path_factory.mktemp("calibrated") / MODEL
    shutil.copytree(demo_artifact, copy)
    found, about, _, _ = calibration.measure(copy, demo_table()[0].head(120), seed=0)
    quality.amend(copy, lambda m: {"calibration": calibration.stored(found, {**about, "cross_fit": False})})
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


def test_raw_on_request_matches_the_uncalibrated_model(engine, demo_artifact):
    plain = Engine(demo_artifact, threads=1)
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
