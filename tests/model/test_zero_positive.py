"""The zero-inflated positive family (zero_positive): a point mass at 0 plus the positive family's log-normal."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from hhvaem.model.families import FAMILIES, Stats
from hhvaem.model.likelihoods import ZeroLogNormal
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Column, Schema

DT = torch.float64
FAMILY = FAMILIES["zero_positive"]


def normal_logpdf(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)


def test_log_prob_is_a_mass_at_zero_and_a_density_elsewhere_numpy_and_torch():
    p = np.array([[0.5, 0.3, 0.2], [1.0, 0.5, 0.6]])
    x = np.array([0.0, 0.7, 2.0])
    expected = np.array(
        [
            [math.log(0.2), math.log(0.6)],
            [math.log(0.8) + normal_logpdf(0.7, 0.5, 0.3), math.log(0.4) + normal_logpdf(0.7, 1.0, 0.5)],
            [math.log(0.8) + normal_logpdf(2.0, 0.5, 0.3), math.log(0.4) + normal_logpdf(2.0, 1.0, 0.5)],
        ]
    )
    np.testing.assert_allclose(FAMILY.log_prob(p, x), expected, rtol=1e-12)
    # torch: raw (loc, raw scale, raw logit) -> the same natural parameters and log p
    raw = torch.tensor([[0.2, -0.4, 1.1]], dtype=DT)
    d = ZeroLogNormal.from_raw(raw)
    loc, scale, pi = d.natural()[0].tolist()
    assert scale == pytest.approx(math.log1p(math.exp(-0.4)) + 0.05)
    assert pi == pytest.approx(1 / (1 + math.exp(-6 * math.tanh(1.1 / 6))))
    got = d.log_prob(torch.tensor([0.0, 0.7], dtype=DT).unsqueeze(-1)).squeeze(-1).numpy()
    np.testing.assert_allclose(got, FAMILY.log_prob(np.array([[loc, scale, pi]]), np.array([0.0, 0.7]))[:, 0])


def test_raw_score_equals_autograd():
    g = torch.Generator().manual_seed(3)
    raw = (1.5 * torch.randn(60, 3, generator=g, dtype=DT)).requires_grad_(True)
    x = torch.where(torch.rand(60, generator=g) < 0.4, 0.0, torch.randn(60, generator=g, dtype=DT).abs() + 0.1)
    (auto,) = torch.autograd.grad(ZeroLogNormal.from_raw(raw).log_prob(x).sum(), raw)
    torch.testing.assert_close(ZeroLogNormal.from_raw(raw.detach()).raw_score(x), auto, rtol=1e-10, atol=1e-10)


def test_sampling_frequencies_of_zero_and_the_moments():
    rng = np.random.default_rng(0)
    p = np.array([[[0.8, 0.2, 0.3], [1.2, 0.1, 0.5]]])  # [B=1, K=2, 3]
    n = 200_000
    stats = Stats(mean=1.0, std=0.9)
    draws = FAMILY.user_draws(p, stats, rng, n)
    assert np.mean(draws == 0) == pytest.approx(0.4, abs=0.005)
    assert FAMILY.summary_extras(p)["probability_zero"][0] == pytest.approx(0.4)
    mean, std = FAMILY.user_moments(p, stats)
    assert mean[0] == pytest.approx(draws.mean(), rel=5e-3)
    assert std[0] == pytest.approx(draws.std(), rel=1e-2)
    model = FAMILY.sample(np.repeat(p[0], n, 0), rng)
    assert np.mean(model == 0) == pytest.approx(0.4, abs=0.005)
    m1, m2 = FAMILY.moments(p[0])
    np.testing.assert_allclose(m1, [0.7 * 0.8, 0.5 * 1.2])
    torch_draws = ZeroLogNormal.from_raw(torch.tensor([[0.8, 0.0, 2.0]]).expand(n, 3)).sample(
        torch.Generator().manual_seed(0)
    )
    pi = 1 / (1 + math.exp(-6 * math.tanh(2.0 / 6)))
    assert float((torch_draws == 0).double().mean()) == pytest.approx(pi, abs=0.005)


def test_encoding_puts_zeros_at_exactly_zero_and_round_trips():
    x = np.array([0.0, 0.0, 3.0, 10.0, 0.0, 120.0, 7.5, 0.0, 1.0, 2.0])
    schema = Schema((Column("slag", "zero_positive"), Column("r", "real")))
    pp = Preprocessor.fit(schema, {"slag": x.tolist(), "r": list(range(10))})
    stats = pp.stats["slag"]
    assert stats.warp is None
    assert stats.mean == pytest.approx(np.log1p(x).mean()) and stats.std == pytest.approx(np.log1p(x).std())
    col = schema.column("slag")
    v, _ = pp.encode_column(col, x.tolist())
    assert np.all((v == 0) == (x == 0))
    np.testing.assert_allclose(pp.to_original(col, v), x, rtol=1e-12)
    # the protocol scale is the positive family's: log(1 + x) standardised
    np.testing.assert_allclose(pp.to_protocol(col, v), (np.log1p(x) - stats.mean) / stats.std, atol=1e-12)
    assert pp.encode_value(col, 0.0) == 0.0
    with pytest.raises(ValueError, match="negative"):
        pp.encode_value(col, -1.0)


def test_inference_picks_zero_positive_for_many_exact_zeros_and_a_schema_overrides_it():
    from hhvaem.training.tabular import infer_schema

    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame(
        {
            "slag": np.where(rng.random(n) < 0.3, 0.0, rng.gamma(2.0, 50.0, n).round(1) + 0.1),
            "few_zeros": np.where(np.arange(n) < 10, 0.0, rng.gamma(2.0, 5.0, n) + 0.05),  # 5 %
            "signed": rng.standard_normal(n),
            "y": rng.standard_normal(n),
        }
    )
    schema = infer_schema(df, targets=["y"])
    types = {c.name: c.type for c in schema.columns}
    assert types == {"slag": "zero_positive", "few_zeros": "positive", "signed": "real", "y": "real"}
    overridden = infer_schema(df, targets=["y"], overrides={"slag": {"type": "positive"}})
    assert overridden.column("slag").type == "positive"
    forced = infer_schema(df, targets=["y"], overrides={"few_zeros": {"type": "zero_positive"}})
    assert forced.column("few_zeros").type == "zero_positive"


def test_a_model_with_zero_positive_columns_exports_to_onnx_and_matches_torch(tmp_path):
    """A feature and the target zero_positive: the exported graphs run in ONNX Runtime, give what the torch model
    gives for the same noise, and the answers carry the probability of zero."""
    from hhvaem.app.engine import Engine, ImputeQuery
    from hhvaem.training.artifact import data_fingerprint, write_artifact
    from hhvaem.training.fit import fit

    rng = np.random.default_rng(0)
    n = 120
    a = rng.standard_normal(n)
    df = pd.DataFrame(
        {
            "a": a,
            "slag": np.where(a + rng.standard_normal(n) < 0, 0.0, np.exp(rng.standard_normal(n) + 2)),
            "b": a + 0.5 * rng.standard_normal(n),
            "y": np.where(rng.random(n) < 0.3, 0.0, np.exp(a + 1)),
        }
    )
    schema = Schema(
        (Column("a", "real"), Column("slag", "zero_positive"), Column("b", "real")), (Column("y", "zero_positive"),)
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fitted = fit(df, schema, "hhvaem", 60, seed=0)
        art = tmp_path / "model"
        write_artifact(art, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(df))
    finally:
        torch.set_num_threads(threads)
    onnx, torch_engine = Engine(art, backend="onnx", threads=1), Engine(art, backend="torch", threads=1)
    rows = [{"a": 0.3}, {"a": -1.0, "b": -1.2}, {"slag": 0.0}]
    prep = ImputeQuery(rows, samples=30, seed=3).prepare(onnx)
    for graph in ("impute", "acquire", "conditional"):
        got, expected = onnx.call(graph, [prep]), torch_engine.call(graph, [prep])
        for name in got:
            np.testing.assert_allclose(got[name], expected[name], atol=1e-4, rtol=1e-4, err_msg=f"{graph}: {name}")
    answer = onnx.impute(rows, samples=30, seed=3)
    summary = answer[0]["imputed"]["slag"]
    assert 0.0 <= summary["probability_zero"] <= 1.0 and summary["mean"] >= 0.0
    assert "probability_zero" not in answer[0]["imputed"]["b"]
    # Open Inference Protocol v2: the probability of zero as its own tensor (certain where the row gave the value)
    from hhvaem.app.api.tensors import ModelTensors

    tensors = ModelTensors(onnx.schema)
    listed = {t["name"]: t for t in tensors.metadata()[1]}
    assert listed["imputed_probability_zero"]["shape"] == [-1, 1]
    out = {o.name: o for o in tensors.imputed(answer, (0.5,))}
    p_zero = out["imputed_probability_zero"].data[:, 0]
    assert p_zero[0] == pytest.approx(summary["probability_zero"], abs=1e-6) and p_zero[2] == 1.0
    predicted = onnx.predict(rows[:1], samples=30, seed=3)[0]["targets"]["y"]
    assert 0.0 <= predicted["probability_zero"] <= 1.0
    # a scored table adds the probability of zero beside the standard deviation
    from hhvaem.app.engine.scoring import score_frame

    table = df.head(6).drop(columns="y").copy()
    table.loc[:2, "slag"] = np.nan
    scored, errors = score_frame(onnx, table, "both", 30, 128, 0)
    assert not errors
    assert scored["slag__p_zero"].iloc[:3].between(0, 1).all() and scored["slag__p_zero"].iloc[3:].isna().all()
    assert scored["y__p_zero"].between(0, 1).all()
    assert list(scored.columns).index("slag__p_zero") == list(scored.columns).index("slag__std") + 1
    # the acquisition estimators take a zero_positive feature and target (a mass and a density in one mixture)
    for method in ("mixture", "histogram"):
        ranking = onnx.next_features({"a": 0.3}, samples=60, seed=0, method=method)["ranking"]
        assert sorted(r["feature"] for r in ranking) == ["b", "slag"]
        assert all(np.isfinite(r["gain"]) and r["gain"] >= 0 for r in ranking)


def test_the_marginal_vae_keeps_zeros_apart_from_the_positive_part():
    """Stage 1 alone on a zero-inflated column (40 % zeros): the decoder at the encoder's mean says zero for the
    zeros and not for the rest, so the reconstruction on the protocol scale stays within 0.1 sd (the column's KL
    weight, `code_kl_weight`; at full weight the code blurs the zero bit)."""
    from hhvaem.model.marginal import MarginalVAEs

    rng = np.random.default_rng(0)
    n = 600
    x = np.where(rng.random(n) < 0.4, 0.0, np.exp(rng.normal(3.0, 0.8, n)))
    schema = Schema((Column("slag", "zero_positive"),))
    pp = Preprocessor.fit(schema, {"slag": x.tolist()})
    col = schema.column("slag")
    v, _ = pp.encode_column(col, x.tolist())
    torch.manual_seed(0)
    vae = MarginalVAEs((col,), hidden=32)
    assert vae.likelihood.kl_weights.tolist() == [pytest.approx(ZeroLogNormal.code_kl_weight)]
    xt = torch.tensor(v, dtype=torch.float32)[:, None]
    mt = torch.ones_like(xt, dtype=torch.bool)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(1000):
        idx = torch.randint(0, n, (100,), generator=gen)
        loss = vae.loss(xt[idx], mt[idx], gen, kl_weight=min(1.0, step / 500))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        natural = vae.likelihood.natural(vae.decode(vae.encode(xt)[0])).numpy()
    p = FAMILY.component_params(natural[:, 0][:, None, :], 0)
    assert np.median(p[x == 0, 0, 2]) > 0.95 and np.median(p[x > 0, 0, 2]) < 0.05
    mean = FAMILY.protocol_moments(p, pp.stats["slag"])[0][:, 0]
    assert float(np.sqrt(np.mean((mean - pp.to_protocol(col, v)) ** 2))) < 0.1
