"""The inference engine over an exported artifact: parity with torch, units, validation, batching."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from scipy import stats

from hhvaem.app.engine import Engine, ImputeQuery, InputError, PredictQuery
from hhvaem.model.export import LogDensityGraph, example_inputs, export_log_density
from hhvaem.model.io.artifact import ArtifactError
from hhvaem.training.artifact import load_model
from tests.app.service import FEATURES, ROW, TARGET


@pytest.fixture(scope="module")
def onnx_engine(demo_artifact):
    return Engine(demo_artifact, backend="onnx", threads=1)


@pytest.fixture(scope="module")
def torch_engine(demo_artifact):
    return Engine(demo_artifact, backend="torch", threads=1)


def test_onnx_and_torch_give_the_same_samples_for_the_same_noise(onnx_engine, torch_engine):
    rows = [ROW, {}, {"ldl": 120.0, "sex": 1, "disease_progression": 200.0}]
    prep = ImputeQuery(rows, samples=40, seed=7).prepare(onnx_engine)
    for graph in ("impute", "acquire", "conditional"):
        a, b = onnx_engine.call(graph, [prep]), torch_engine.call(graph, [prep])
        assert a.keys() == b.keys() and {"features", "target", "acceptance"} <= set(a)
        for name in a:
            assert a[name].shape == b[name].shape, (graph, name)
            np.testing.assert_allclose(a[name], b[name], atol=1e-4, rtol=1e-4, err_msg=f"{graph}: {name}")
    # and the numpy summaries on top agree too
    ia, ib = onnx_engine.impute(rows, samples=40, seed=7), torch_engine.impute(rows, samples=40, seed=7)
    assert ia[0]["imputed"]["ldl"]["mean"] == pytest.approx(ib[0]["imputed"]["ldl"]["mean"], rel=1e-4)


def test_onnx_and_torch_sample_the_same_distribution_with_independent_noise(onnx_engine, torch_engine):
    a = onnx_engine.predict([ROW], samples=1000, seed=1, return_samples=True)[0]["targets"]["disease_progression"]
    b = torch_engine.predict([ROW], samples=1000, seed=2, return_samples=True)[0]["targets"]["disease_progression"]
    assert stats.ks_2samp(a["samples"], b["samples"]).pvalue > 1e-3
    same = onnx_engine.predict([ROW], samples=1000, seed=1, return_samples=True)[0]["targets"]["disease_progression"]
    assert same["samples"] == a["samples"]  # a seed reproduces a request exactly


def test_exported_gradient_matches_autograd(demo_artifact, tmp_path):
    import onnxruntime as ort

    model, _, _ = load_model(demo_artifact)
    path = tmp_path / "log_density.onnx"
    export_log_density(model, path)
    ex = example_inputs(model, rows=4, samples=5, seed=3)
    eps = torch.randn(4, 5, model.latent_size, generator=torch.Generator().manual_seed(0))
    feeds = {"eps": eps, "x": ex["x"], "mask": ex["mask"], "y": ex["y"], "y_mask": ex["y_mask"]}
    logp, grad = ort.InferenceSession(str(path)).run(None, {k: v.numpy() for k, v in feeds.items()})
    e = eps.clone().double().requires_grad_(True)
    m64 = model.double()
    ref = LogDensityGraph(m64)(e, *(feeds[k].double() for k in ("x", "mask", "y", "y_mask")))[0]
    (auto,) = torch.autograd.grad(ref.sum(), e)
    model.float()
    np.testing.assert_allclose(logp, ref.detach().numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad, auto.numpy(), rtol=1e-5, atol=1e-5 * max(1.0, float(auto.abs().max())))


def test_impute_answers_in_original_units_and_categories(onnx_engine):
    out = onnx_engine.impute([ROW], samples=200, quantiles=[0.1, 0.5, 0.9], seed=0)[0]
    assert out["values"]["age"] == 59 and out["values"]["sex"] == 2  # observed values come back as given
    assert set(out["imputed"]) == (set(FEATURES) - set(ROW)) | {TARGET}
    ldl = out["imputed"]["ldl"]
    assert 40 < ldl["mean"] < 250 and ldl["std"] > 0  # mg/dL, not the normalised scale
    q = ldl["quantiles"]
    assert q["0.1"] < q["0.5"] < q["0.9"]
    # the hole is filled with the point imputation (the predictive mean on the model's log scale), inside the interval
    assert out["values"]["ldl"] == pytest.approx(ldl["point"]) and q["0.1"] < ldl["point"] < q["0.9"]
    assert ldl["mean_se"] > 0 and set(ldl["quantiles_se"]) == set(q)
    json.dumps(out)  # everything is JSON-serialisable
    sex = onnx_engine.impute([{"age": 40}], samples=100, seed=0)[0]["imputed"]["sex"]
    assert set(sex["probabilities"]) == {"1", "2"} and sum(sex["probabilities"].values()) == pytest.approx(1.0)
    assert sex["mode"] in (1, 2)


def test_positive_columns_never_impute_below_zero(onnx_engine):
    out = onnx_engine.impute([{}], samples=300, quantiles=[0.001], seed=4, return_samples=True)[0]["imputed"]
    for name in ("age", "bmi", "hdl", "blood_sugar"):
        assert min(out[name]["samples"]) >= 0 and out[name]["quantiles"]["0.001"] >= 0


def test_every_bad_cell_is_reported_with_row_field_and_reason(onnx_engine):
    rows = [{"agee": 3}, {"age": "old", "sex": 3}, {"bmi": float("nan")}, {"bmi": -2.0}, {"age": True}]
    with pytest.raises(InputError) as e:
        onnx_engine.impute(rows)
    got = {(err.row, err.field): err.reason for err in e.value.errors}
    assert "unknown feature" in got[(0, "agee")]
    assert "expected a number" in got[(1, "age")]
    assert "unknown category" in got[(1, "sex")]
    assert "send null" in got[(2, "bmi")]
    assert "negative" in got[(3, "bmi")]
    assert "bool" in got[(4, "age")]
    with pytest.raises(InputError, match="quantile"):
        onnx_engine.impute([ROW], quantiles=[1.5])
    with pytest.raises(InputError, match="samples"):
        onnx_engine.impute([ROW], samples=1)


def test_requests_batched_into_one_call_give_what_they_give_alone(onnx_engine):
    a = PredictQuery([ROW], samples=50, seed=11).prepare(onnx_engine)
    b = ImputeQuery([{}, {"hdl": 40.0}], samples=50, seed=12).prepare(onnx_engine)
    batched = onnx_engine.run([a, b])
    # equal up to float32 rounding (the batch shape changes the matmul blocking)
    assert_close(batched[0], onnx_engine.predict([ROW], samples=50, seed=11))
    assert_close(batched[1], onnx_engine.impute([{}, {"hdl": 40.0}], samples=50, seed=12))


def assert_close(a, b, rel=1e-5):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close(a[k], b[k], rel)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_close(x, y, rel)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-6)
    else:
        assert a == b


def test_next_features_ranks_unobserved_features_by_gain_and_cost(onnx_engine):
    out = onnx_engine.next_features(ROW, samples=200, seed=0)
    names = [r["feature"] for r in out["ranking"]]
    assert sorted(names) == sorted(
        ["total_cholesterol", "ldl", "hdl", "cholesterol_ratio", "triglycerides", "blood_sugar"]
    )
    gains = [r["gain"] for r in out["ranking"]]
    assert gains == sorted(gains, reverse=True) and min(gains) >= 0
    assert out["prediction"]["std"] > 0 and out["uncertainty"] == pytest.approx(out["prediction"]["std"])
    cheap = [r["feature"] for r in out["ranking"] if r["gain"] > 0][-1]  # the weakest informative feature
    costs = {n: (0.001 if n == cheap else 10.0) for n in names}
    ranked = onnx_engine.next_features(ROW, samples=200, seed=0, costs=costs, top_k=2)["ranking"]
    assert len(ranked) == 2 and ranked[0]["feature"] == cheap and ranked[0]["gain_per_cost"] is not None
    hist = onnx_engine.next_features(ROW, samples=200, seed=0, method="histogram")
    assert hist["method"] == "histogram" and len(hist["ranking"]) == 6


def test_next_features_validates_candidates_costs_and_stops_when_nothing_is_left(onnx_engine):
    with pytest.raises(InputError) as e:
        onnx_engine.next_features(ROW, candidates=["age", "nope"], costs={"ldl": -1}, method="magic", top_k=0)
    fields = {err.field for err in e.value.errors}
    assert fields == {"candidates.age", "candidates.nope", "costs.ldl", "method", "top_k"}
    full = {c.name: v for c, v in zip(onnx_engine.schema.features, [50, 1, 25, 90, 180, 100, 50, 4, 4.5, 90])}
    out = onnx_engine.next_features(full, samples=50, seed=0)
    assert out["ranking"] == [] and out["stop"]["stop"] is True


def test_a_changed_file_or_format_is_refused(demo_artifact, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(demo_artifact, bad)
    with open(bad / "impute.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="checksum mismatch for impute.onnx"):
        Engine(bad)
    old = tmp_path / "old"
    shutil.copytree(demo_artifact, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format version 1 is not supported"):
        Engine(old)


def test_large_calls_are_split_into_whole_rows_with_the_same_answers(demo_artifact):
    """A call of more chains than `chains_per_call` runs as several graph calls (bounded memory), same numbers."""
    whole, split = Engine(demo_artifact, threads=1), Engine(demo_artifact, threads=1)
    split.chains_per_call = 50  # 2 rows of 20 samples per call
    rows = [ROW, {}, {"hdl": 40.0}, {"age": 30, "bmi": 22.0}, {"sex": 1}]
    prep = ImputeQuery(rows, samples=20, seed=3).prepare(whole)
    a, b = whole.call("impute", [prep]), split.call("impute", [prep])
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert_close(split.impute(rows, samples=20, seed=3), whole.impute(rows, samples=20, seed=3))


def test_device_cuda_without_the_cuda_provider_is_a_clear_error(demo_artifact):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ArtifactError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        Engine(demo_artifact, device="cuda")
    assert Engine(demo_artifact, device="auto").backend_name.startswith("onnxruntime:CPUExecutionProvider")


def test_device_auto_asks_onnx_runtime_for_cuda_first_when_it_has_it(demo_artifact, monkeypatch):
    """The selection logic on a CPU machine: with the CUDA provider listed, auto and cuda ask for CUDA then CPU
    (ONNX Runtime falls back per node); cpu never asks for CUDA."""
    import onnxruntime as ort

    asked: list[list[str]] = []
    real = ort.InferenceSession

    def session(path, sess_options=None, providers=None):
        asked.append(list(providers))
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    for device, first in (
        ("auto", "CUDAExecutionProvider"),
        ("cuda", "CUDAExecutionProvider"),
        ("cpu", "CPUExecutionProvider"),
    ):
        asked.clear()
        Engine(demo_artifact, device=device)
        assert asked and all(p[0] == first and p[-1] == "CPUExecutionProvider" for p in asked), (device, asked)
