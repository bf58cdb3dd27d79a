"""Per-column warps (families.Warp): chosen at fit time for strongly skewed columns, stored with the Stats, applied
identically on the way in and out, and measured on the protocol's scale (docs/protocol.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hhvaem.model.families import FAMILIES, Stats, Warp
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Column, Schema
from hhvaem.training.evaluate import feature_metrics, protocol_log_jacobian


def left_skewed(n: int = 400, seed: int = 0) -> np.ndarray:
    """Bounded above at 400 with a quarter of the rows there and a long left tail (like boston's B)."""
    rng = np.random.default_rng(seed)
    x = 400.0 - rng.exponential(8.0, n) ** 1.6
    x[rng.random(n) < 0.25] = 400.0
    return np.maximum(x, 0.5)


def fitted(x: np.ndarray, warps: bool = True, kind: str = "positive") -> tuple[Preprocessor, Column]:
    schema = Schema((Column("b", kind), Column("other", "real")))
    cols = {"b": x.tolist(), "other": np.linspace(0, 1, len(x)).tolist()}
    pp = Preprocessor.fit(schema, cols, warps=warps)
    return pp, schema.column("b")


@pytest.mark.parametrize("kind", ["real", "positive"])
def test_a_strongly_skewed_column_is_warped_and_round_trips_exactly(kind):
    x = left_skewed()
    pp, col = fitted(x, kind=kind)
    stats = pp.stats["b"]
    assert stats.warp is not None and stats.warp.sign == -1.0  # the long tail is on the left
    assert pp.stats["other"].warp is None  # a uniform column is left alone
    v, mask = pp.encode_column(col, x.tolist())
    assert mask.all()
    assert abs(v.mean()) < 1e-9 and abs(v.std() - 1.0) < 1e-9  # the model's scale is standardised
    assert abs(float(np.mean((v - v.mean()) ** 3))) < 1.0  # and no longer far out on one side
    np.testing.assert_allclose(pp.to_original(col, v), x, rtol=1e-10, atol=1e-9)
    # encode_value (the API's path) agrees with encode_column
    assert pp.encode_value(col, float(x[3])) == pytest.approx(v[3], abs=1e-12)


def test_values_beyond_the_training_range_stay_valid_and_invertible():
    pp, col = fitted(left_skewed())
    for value in (450.0, 1e-3, 0.0):
        v = pp.encode_value(col, value)
        assert math.isfinite(v)
        assert pp.to_original(col, np.array([v]))[0] == pytest.approx(value, abs=1e-9)
    w = pp.stats["b"].warp
    u = np.linspace(-20, 20, 401)
    assert np.all(np.diff(w.forward(u)) > 0)
    np.testing.assert_allclose(w.inverse(w.forward(u)), u, atol=1e-9)


def test_log_derivative_matches_finite_differences():
    w = fitted(left_skewed())[0].stats["b"].warp
    u = np.linspace(-8, 1.5, 50)
    h = 1e-6
    numeric = (w.forward(u + h) - w.forward(u - h)) / (2 * h)
    np.testing.assert_allclose(np.exp(w.log_derivative(w.forward(u))), numeric, rtol=1e-5)


def test_mildly_skewed_or_mostly_constant_columns_are_not_warped():
    rng = np.random.default_rng(1)
    assert Warp.fit(rng.standard_normal(500)) is None
    zeros = np.where(rng.random(500) < 0.7, 0.0, rng.exponential(1.0, 500))
    assert Warp.fit((zeros - zeros.mean()) / zeros.std()) is None  # a point mass, not a tail
    assert fitted(left_skewed(), warps=False)[0].stats["b"].warp is None


def test_stats_dicts_round_trip_and_old_ones_load_unwarped():
    pp, col = fitted(left_skewed())
    again = Preprocessor.from_dict(pp.schema, pp.to_dict())
    assert again.stats == pp.stats
    old = {"b": {"mean": 5.0, "std": 0.5}, "other": {"mean": 0.5, "std": 0.3}}  # an artifact from before warps
    loaded = Preprocessor.from_dict(pp.schema, old)
    assert loaded.stats["b"] == Stats(5.0, 0.5) and loaded.stats["b"].warp is None
    v = loaded.encode_value(col, 100.0)
    assert v == pytest.approx((math.log1p(100.0) - 5.0) / 0.5)
    assert loaded.to_dict() == old


@pytest.mark.parametrize("name", ["real", "positive"])
def test_user_moments_and_point_through_a_warp_match_monte_carlo(name):
    family = FAMILIES[name]
    x = left_skewed() / 100.0
    pp, col = fitted(x, kind=name)
    stats = pp.stats["b"]
    p = np.array([[[-1.0, 0.3], [0.5, 0.2], [1.2, 0.05]], [[0.0, 0.3], [0.3, 0.3], [-0.5, 0.2]]])
    mean, std = family.user_moments(p, stats)
    draws = family.user_draws(p, stats, np.random.default_rng(0), 200_000)
    np.testing.assert_allclose(mean, draws.mean(1), rtol=2e-3)
    np.testing.assert_allclose(std, draws.std(1), rtol=2e-2)
    # protocol moments: the mean of model-scale draws mapped to the protocol scale
    rng = np.random.default_rng(1)
    v = np.repeat(p[..., 0], 200_000, -1) + np.repeat(p[..., 1], 200_000, -1) * rng.standard_normal((2, 600_000))
    m1 = family.protocol_moments(p, stats)[0].mean(-1)
    np.testing.assert_allclose(m1, stats.to_protocol(v).mean(1), atol=5e-3)
    point = family.point(p, stats)  # the protocol mean, in user units
    np.testing.assert_allclose(family.normalise(point, Stats(stats.mean, stats.std)), m1, atol=1e-9)


def test_a_wide_component_through_a_warp_has_the_exact_mean():
    """A wide component's heavy tail defeats Monte Carlo; against the closed form (piecewise: linear below the
    training range, log-normal on it, linear above it), the quadrature is exact to 1e-4."""
    from scipy.stats import norm

    x = left_skewed() / 100.0
    pp, _ = fitted(x, kind="real")
    stats = pp.stats["b"]
    w = stats.warp
    assert w.sign == -1.0 and math.isfinite(w.high)
    loc_v, scale_v = 0.0, 1.0
    mu, s = w.loc + w.sign * loc_v * w.scale, scale_v * w.scale  # r ~ N(mu, s)
    span = w.high - w.low
    lo, hi = math.log(w.offset), math.log(span + w.offset)
    a, b = (lo - mu) / s, (hi - mu) / s
    below = w.offset * ((mu - lo) * norm.cdf(a) - s * norm.pdf(a))
    middle = math.exp(mu + s * s / 2) * (norm.cdf(b - s) - norm.cdf(a - s)) - w.offset * (norm.cdf(b) - norm.cdf(a))
    above = span * norm.sf(b) + math.exp(hi) * ((mu - hi) * norm.sf(b) + s * norm.pdf(b))
    u_mean = w.sign * (below + middle + above + w.low)
    mean, _ = FAMILIES["real"].user_moments(np.array([[[loc_v, scale_v]]]), stats)
    assert mean[0] == pytest.approx(u_mean * stats.std + stats.mean, rel=1e-4)


def test_the_inverse_warp_grows_linearly_past_the_training_range():
    """A model-scale value far past the data maps to a protocol value a linear step away, not exp() of it."""
    x = left_skewed()
    pp, _ = fitted(x)
    w = pp.stats["b"].warp
    v = np.array([-50.0, -5.0, 0.0, 5.0, 50.0])
    u = w.inverse(v)
    np.testing.assert_allclose(w.forward(u), v, rtol=1e-9, atol=1e-9)  # still an exact inverse
    assert np.all(np.abs(u) < 1e4)
    steps = np.diff(w.inverse(np.array([40.0, 45.0, 50.0])))
    assert steps[0] == pytest.approx(steps[1])  # linear out there


def test_evaluation_measures_a_warped_column_on_the_protocol_scale():
    """RMSE_xu and the NLL's Jacobian of a warped column equal those of the same predictive written unwarped."""
    x = left_skewed()
    pp, col = fitted(x)
    plain, _ = fitted(x, warps=False)
    v, _ = pp.encode_column(col, x.tolist())
    u, _ = plain.encode_column(col, x.tolist())
    np.testing.assert_allclose(pp.to_protocol(col, v), u, atol=1e-9)
    # a predictive that is a narrow Gaussian on the model scale at each row's value, off by 0.1
    n = len(x)
    natural = np.zeros((n, 1, 2, 2))
    natural[:, 0, 0] = np.stack([v + 0.1, np.full(n, 1e-4)], -1)
    natural[:, 0, 1] = [0.0, 1.0]
    hidden = np.zeros((n, 2), bool)
    hidden[:, 0] = True
    xs = np.stack([v, np.zeros(n)], -1)
    got = feature_metrics(pp.schema, pp, natural, xs, hidden, np.random.default_rng(0))["rmse_xu"]
    expected = math.sqrt(np.mean((pp.to_protocol(col, v + 0.1) - u) ** 2))
    assert got == pytest.approx(expected, rel=1e-3)
    # densities: log p(u) = log p(v) + log dv/du; a standard normal on the model scale integrates to 1 on u
    grid = np.linspace(-60, 5, 400_001)
    vg = pp.stats["b"].warp.forward(grid)
    jac = protocol_log_jacobian((col,), pp, vg[:, None])[:, 0]
    density = np.exp(-0.5 * vg**2 - 0.5 * math.log(2 * math.pi) + jac)
    assert float(np.sum(density) * (grid[1] - grid[0])) == pytest.approx(1.0, abs=1e-3)


def test_the_marginal_vae_reconstructs_a_warped_column_better():
    """Stage 1 alone on a left-skewed bounded column: the decoder's mean at the encoder's mean, on the protocol
    scale, in training standard deviations, is closer with the warp."""
    from hhvaem.model.marginal import MarginalVAEs

    x = left_skewed(600)

    def error(warps: bool) -> float:
        torch.manual_seed(0)
        pp, col = fitted(x, warps=warps)
        v, m = pp.encode_column(col, x.tolist())
        xt = torch.tensor(v, dtype=torch.float32)[:, None]
        mt = torch.ones_like(xt, dtype=torch.bool)
        vae = MarginalVAEs((col,), hidden=32)
        opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        for step in range(600):
            idx = torch.randint(0, len(x), (100,), generator=gen)
            loss = vae.loss(xt[idx], mt[idx], gen, kl_weight=min(1.0, step / 300))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            natural = vae.likelihood.natural(vae.decode(vae.encode(xt)[0])).numpy()
        p = col.family.component_params(natural[:, 0][:, None, :], 0)
        mean = col.family.protocol_moments(p, pp.stats["b"])[0][:, 0]
        return float(np.sqrt(np.mean((mean - pp.to_protocol(col, v)) ** 2)))

    plain, warped = error(False), error(True)
    assert warped < plain
    assert warped < 0.1


def test_training_can_switch_warps_off_and_names_a_bad_value():
    import pandas as pd

    from hhvaem.training.fit import fit

    x = left_skewed(n=120)
    df = pd.DataFrame({"b": x, "other": np.linspace(0, 1, len(x)), "y": np.linspace(-1, 1, len(x))})
    schema = Schema((Column("b", "positive"), Column("other", "real")), (Column("y", "real"),))
    assert fit(df, schema, "vaem", 10).preprocessor.stats["b"].warp is not None
    assert fit(df, schema, "vaem", 10, overrides={"warps": False}).preprocessor.stats["b"].warp is None
    with pytest.raises(ValueError, match="'warps' must be true or false"):
        fit(df, schema, "vaem", 10, overrides={"warps": "no"})
