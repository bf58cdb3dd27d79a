"""Likelihood families against scipy.stats, autograd and each other."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from hhvaem.model.families import FAMILIES, Stats
from hhvaem.model.likelihoods import (
    LOGIT_BOUND,
    MIN_SCALE,
    Bernoulli,
    Categorical,
    ColumnLikelihoods,
    Gaussian,
    Poisson,
    bounded_logits,
    likelihood_class,
)
from hhvaem.model.schema import Column

DT = torch.float64


def t(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=DT)


def softplus(v):
    return np.log1p(np.exp(v))


# ---------------------------------------------------------------- log_prob, moments, against scipy


def test_gaussian_log_prob_mean_variance_match_scipy():
    loc = t([0.0, -1.5, 2.0, 0.3])
    raw_scale = t([0.0, -2.0, 1.0, 3.0])
    d = Gaussian.from_raw(torch.stack([loc, raw_scale], -1))
    scale = softplus(raw_scale.numpy()) + MIN_SCALE
    np.testing.assert_allclose(d.scale.numpy(), scale, rtol=1e-12)
    for x in ([0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 5.0, -3.0], [-2.5, 0.7, 2.0, 10.0]):
        ref = stats.norm(loc=loc.numpy(), scale=scale).logpdf(np.array(x))
        np.testing.assert_allclose(d.log_prob(t(x)).numpy(), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(d.mean.numpy(), stats.norm(loc.numpy(), scale).mean())
    np.testing.assert_allclose(d.variance.numpy(), stats.norm(loc.numpy(), scale).var(), rtol=1e-12)


def test_lognormal_family_moments_match_shifted_scipy_lognorm():
    """positive columns: Gaussian on log(1 + x), so the served mean and std are the shifted log-normal's."""
    fam = FAMILIES["positive"]
    loc, scale = np.array([0.0, 1.0, -0.5, 2.0]), np.array([0.5, 0.2, 1.0, 0.8])
    mean, std = fam.user_moments(np.stack([loc, scale], -1)[:, None, :], Stats(0.0, 1.0))
    ref = stats.lognorm(s=scale, scale=np.exp(loc), loc=-1.0)
    np.testing.assert_allclose(mean, ref.mean(), rtol=1e-10)
    np.testing.assert_allclose(std, ref.std(), rtol=1e-10)


def test_lognormal_family_standardises_log1p_and_back():
    fam, st = FAMILIES["positive"], Stats(mean=1.2, std=0.4)
    x = np.array([0.0, 0.5, 3.0, 40.0])
    v = fam.normalise(x, st)
    np.testing.assert_allclose(v, (np.log1p(x) - 1.2) / 0.4, rtol=1e-12)
    np.testing.assert_allclose(fam.to_user(v, st), x, rtol=1e-12, atol=1e-12)
    assert fam.check(-0.5) == "negative value -0.5 in a positive column" and fam.check(0.0) is None


def test_poisson_log_prob_mean_mode_match_scipy():
    log_rate = t([-1.0, 0.1, 1.3, 2.5])  # no integer rate: ties in the mode
    d = Poisson.from_raw(log_rate.unsqueeze(-1))
    rate = np.exp(log_rate.numpy())
    for x in ([0, 0, 0, 0], [1, 2, 3, 4], [5, 0, 7, 30]):
        ref = stats.poisson(rate).logpmf(np.array(x))
        np.testing.assert_allclose(d.log_prob(t(x)).numpy(), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(d.mean.numpy(), stats.poisson(rate).mean(), rtol=1e-12)
    ks = np.arange(200)
    modes = [ks[np.argmax(stats.poisson(r).pmf(ks))] for r in rate]
    np.testing.assert_array_equal(d.mode.numpy(), modes)


def test_bernoulli_log_prob_mean_mode_match_scipy():
    logits = t([-3.0, -0.2, 0.0, 0.4, 5.0])
    d = Bernoulli.from_raw(logits.unsqueeze(-1))
    bounded = LOGIT_BOUND * np.tanh(logits.numpy() / LOGIT_BOUND)
    p = 1.0 / (1.0 + np.exp(-bounded))
    for x in ([0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 0, 1]):
        np.testing.assert_allclose(d.log_prob(t(x)).numpy(), stats.bernoulli(p).logpmf(np.array(x)), rtol=1e-10)
    np.testing.assert_allclose(d.mean.numpy(), stats.bernoulli(p).mean(), rtol=1e-12)
    np.testing.assert_array_equal(d.mode.numpy(), [0, 0, 0, 1, 1])


def test_categorical_log_prob_probs_mode_match_scipy():
    logits = t([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5], [-1.0, -1.0, 4.0]])
    d = Categorical.from_raw(logits)
    bounded = LOGIT_BOUND * np.tanh(logits.numpy() / LOGIT_BOUND)
    p = np.exp(bounded) / np.exp(bounded).sum(-1, keepdims=True)
    np.testing.assert_allclose(d.probs.numpy(), p, rtol=1e-12)
    for x in ([0, 0, 0], [1, 2, 0], [2, 1, 2]):
        ref = [stats.multinomial(1, p[i]).logpmf(np.eye(3)[x[i]]) for i in range(3)]
        np.testing.assert_allclose(d.log_prob(t(x)).numpy(), ref, rtol=1e-10)
    np.testing.assert_array_equal(d.mode.numpy(), [1, 0, 2])


# ---------------------------------------------------------------- sampling


N_SAMPLES = 20_000


def sample_many(d, n=N_SAMPLES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([d.sample(g) for _ in range(n)])


def test_gaussian_sampling_moments():
    loc, scale = t([-1.0, 2.0]), t([0.5, 3.0])
    s = sample_many(Gaussian(loc, scale)).numpy()
    assert np.all(np.abs(s.mean(0) - loc.numpy()) < 4 * scale.numpy() / np.sqrt(N_SAMPLES))
    np.testing.assert_allclose(s.var(0), scale.numpy() ** 2, rtol=0.05)


def test_lognormal_family_draws_have_the_log_normal_median_and_moments():
    fam = FAMILIES["positive"]
    p = np.array([[[2.0, 0.3]], [[2.5, 0.5]]])  # [B=2, K=1, 2]; log(1 + x) below 0 (clipped) is > 5 sd away
    s = fam.user_draws(p, Stats(0.0, 1.0), np.random.default_rng(0), N_SAMPLES)
    assert s.shape == (2, N_SAMPLES) and (s >= 0).all()
    mean, std = fam.user_moments(p, Stats(0.0, 1.0))
    assert np.all(np.abs(s.mean(1) - mean) < 4 * std / np.sqrt(N_SAMPLES))
    np.testing.assert_allclose(s.std(1), std, rtol=0.05)
    # log(x + 1) is N(loc, scale): its sample median sits at loc
    assert np.all(np.abs(np.log(np.median(s, 1) + 1.0) - [2.0, 2.5]) < 5 * np.array([0.3, 0.5]) / np.sqrt(N_SAMPLES))


def test_poisson_sampling_moments():
    d = Poisson(torch.log(t([0.5, 4.0, 20.0])))
    s = sample_many(d).numpy()
    assert np.all(s == np.round(s)) and (s >= 0).all()
    np.testing.assert_allclose(s.mean(0), [0.5, 4.0, 20.0], rtol=0.03)
    np.testing.assert_allclose(s.var(0), [0.5, 4.0, 20.0], rtol=0.06)


def test_bernoulli_sampling_moments():
    d = Bernoulli(t([-2.0, 0.0, 1.5]))
    s = sample_many(d).numpy()
    assert set(np.unique(s)) <= {0.0, 1.0}
    p = d.probs.numpy()
    np.testing.assert_allclose(s.mean(0), p, atol=0.015)
    np.testing.assert_allclose(s.var(0), p * (1 - p), atol=0.015)


def test_categorical_sampling_frequencies():
    logits = t([[0.0, 1.0, -1.0, 0.5], [2.0, -2.0, 0.0, 0.0]])
    d = Categorical(logits)
    g = torch.Generator().manual_seed(1)
    # one call with a batch of N rows of the same distribution
    big = Categorical(logits.expand(N_SAMPLES, 2, 4))
    s = big.sample(g).numpy()
    assert s.shape == (N_SAMPLES, 2)
    freq = np.stack([(s == k).mean(0) for k in range(4)], -1)
    np.testing.assert_allclose(freq, d.probs.numpy(), atol=0.015)


# ---------------------------------------------------------------- raw_score against autograd


@pytest.mark.parametrize(
    "family,width,make_x",
    [
        (Gaussian, 2, lambda g, n: 2.0 * torch.randn(n, generator=g, dtype=DT)),
        (Poisson, 1, lambda g, n: torch.poisson(torch.full((n,), 3.0, dtype=DT), generator=g)),
        (Bernoulli, 1, lambda g, n: torch.randint(0, 2, (n,), generator=g).to(DT)),
        (Categorical, 4, lambda g, n: torch.randint(0, 4, (n,), generator=g).to(DT)),
    ],
)
def test_raw_score_equals_autograd(family, width, make_x):
    g = torch.Generator().manual_seed(3)
    n = 50
    raw = (1.5 * torch.randn(n, width, generator=g, dtype=DT)).requires_grad_(True)
    x = make_x(g, n)
    d = family.from_raw(raw)
    (auto,) = torch.autograd.grad(d.log_prob(x).sum(), raw)
    score = family.from_raw(raw.detach()).raw_score(x)
    assert score.shape == raw.shape
    torch.testing.assert_close(score, auto, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- ColumnLikelihoods over a mixed schema


COLUMNS = (
    Column("r1", "real"),
    Column("cat3", "categorical", categories=("a", "b", "c")),
    Column("pos", "positive"),
    Column("cnt", "count"),
    Column("bin", "binary", categories=("no", "yes")),
    Column("cat5", "categorical", categories=(1, 2, 3, 4, 5)),
    Column("r2", "real"),
    Column("cat2", "categorical", categories=("x", "y")),
)
WIDTH = 5


def mixed_batch(seed=0, n=40):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, len(COLUMNS), WIDTH, generator=g, dtype=DT)
    xs = []
    for c in COLUMNS:
        if c.type in ("real", "positive"):
            xs.append(torch.randn(n, generator=g, dtype=DT))
        elif c.type == "count":
            xs.append(torch.poisson(torch.full((n,), 2.0, dtype=DT), generator=g))
        else:
            xs.append(torch.randint(0, c.n_categories, (n,), generator=g).to(DT))
    return raw, torch.stack(xs, -1)


def pad_with_large_values(raw):
    for j, c in enumerate(COLUMNS):
        raw[..., j, c.n_params :] += 20.0


def test_column_likelihoods_width_and_grouping():
    cl = ColumnLikelihoods(COLUMNS)
    assert cl.width == WIDTH
    assert cl.natural_width == 5


def test_column_log_prob_equals_per_family_on_each_column():
    cl = ColumnLikelihoods(COLUMNS)
    raw, x = mixed_batch()
    lp = cl.log_prob(raw, x)
    assert lp.shape == x.shape
    for j, c in enumerate(COLUMNS):
        ref = likelihood_class(c).from_raw(raw[:, j, : c.n_params]).log_prob(x[:, j])
        torch.testing.assert_close(lp[:, j], ref, rtol=1e-12, atol=1e-12, msg=f"column {c.name}")


def test_column_log_prob_ignores_padding_entries_of_raw():
    cl = ColumnLikelihoods(COLUMNS)
    raw, x = mixed_batch(seed=1)
    junk = raw.clone()
    pad_with_large_values(junk)  # would dominate a softmax if padding leaked
    torch.testing.assert_close(cl.log_prob(junk, x), cl.log_prob(raw, x), rtol=1e-12, atol=1e-12)


def test_column_log_prob_broadcasts_x_over_leading_axes():
    cl = ColumnLikelihoods(COLUMNS)
    raw, x = mixed_batch(seed=2, n=6)
    raw3 = torch.stack([raw, raw.flip(0), 2 * raw], 1)  # [B, 3, C, W]
    lp = cl.log_prob(raw3, x.unsqueeze(1))
    assert lp.shape == (6, 3, len(COLUMNS))
    torch.testing.assert_close(lp[:, 2], cl.log_prob(2 * raw, x))


def test_column_score_equals_autograd_and_padding_is_zero():
    cl = ColumnLikelihoods(COLUMNS)
    raw, x = mixed_batch(seed=3)
    raw.requires_grad_(True)
    lp, score = cl.log_prob_and_score(raw, x)
    torch.testing.assert_close(lp, cl.log_prob(raw, x))
    (auto,) = torch.autograd.grad(lp.sum(), raw)
    assert score.shape == raw.shape
    torch.testing.assert_close(score, auto, rtol=1e-10, atol=1e-10)
    for j, c in enumerate(COLUMNS):
        assert torch.all(score[:, j, c.n_params :] == 0), c.name
        assert torch.any(score[:, j, : c.n_params] != 0), c.name


def test_column_probs_rows_sum_to_one_and_padding_gets_no_mass():
    cl = ColumnLikelihoods(COLUMNS)
    raw, _ = mixed_batch(seed=4)
    pad_with_large_values(raw)
    p = cl.probs(raw)
    assert p.shape == (raw.shape[0], len(COLUMNS), cl.natural_width)
    for j, c in enumerate(COLUMNS):
        if c.type == "categorical":
            k = c.n_categories
            torch.testing.assert_close(p[:, j].sum(-1), torch.ones(raw.shape[0], dtype=DT))
            assert torch.all(p[:, j, k:].abs() < 1e-30)
            torch.testing.assert_close(p[:, j, :k], torch.softmax(bounded_logits(raw[:, j, :k])[0], -1))
        elif c.type == "binary":
            torch.testing.assert_close(p[:, j].sum(-1), torch.ones(raw.shape[0], dtype=DT))
            torch.testing.assert_close(p[:, j, 1], torch.sigmoid(bounded_logits(raw[:, j, 0])[0]))
            assert torch.all(p[:, j, 2:] == 0)
        else:
            assert torch.all(p[:, j] == 0)


def test_column_point_is_mean_or_mode():
    cl = ColumnLikelihoods(COLUMNS)
    raw, _ = mixed_batch(seed=5)
    pad_with_large_values(raw)  # padded categories must never win the mode
    pt = cl.point(raw)
    assert pt.shape == raw.shape[:-1]
    for j, c in enumerate(COLUMNS):
        r = raw[:, j]
        if c.type in ("real", "positive"):
            expected = r[:, 0]
        elif c.type == "count":
            expected = torch.exp(r[:, 0])
        elif c.type == "binary":
            expected = (r[:, 0] > 0).to(DT)
        else:
            expected = r[:, : c.n_categories].argmax(-1).to(DT)
        torch.testing.assert_close(pt[:, j], expected, msg=c.name)


def test_column_sample_values_are_in_each_columns_support():
    cl = ColumnLikelihoods(COLUMNS)
    raw, _ = mixed_batch(seed=6, n=500)
    pad_with_large_values(raw)
    s = cl.sample(raw, torch.Generator().manual_seed(0))
    assert s.shape == raw.shape[:-1]
    for j, c in enumerate(COLUMNS):
        v = s[:, j]
        if c.type == "count":
            assert torch.all(v >= 0) and torch.all(v == v.round())
        elif c.is_discrete:
            assert set(v.unique().tolist()) <= set(range(c.n_categories)), c.name
            assert len(v.unique()) == c.n_categories  # 500 draws hit every category


def test_robust_bounds_cap_confidence_and_density():
    """Logits are bounded (a confident miss costs at most ~LOGIT_BOUND nats) and scales floored."""
    huge = t([[200.0], [-200.0]])
    b = Bernoulli.from_raw(huge)
    assert torch.all(-b.log_prob(t([0.0, 1.0])) <= LOGIT_BOUND + 0.01)
    c = Categorical.from_raw(t([[300.0, -300.0, 0.0]]))
    assert -c.log_prob(t([1.0])).item() <= 2 * LOGIT_BOUND + math.log(3)
    g = Gaussian.from_raw(t([[0.0, -50.0]]))
    assert abs(g.scale.item() - MIN_SCALE) < 1e-12


def test_the_count_likelihood_exports_to_onnx_and_matches_lgamma(tmp_path) -> None:
    """`lgamma` has no ONNX operator: a graph scoring a count column (a count target in the acquisition graph)
    failed to export. log(x!) is built from ops ONNX has, and agrees with lgamma."""
    import onnxruntime as ort

    from hhvaem.model.likelihoods import Poisson, log_factorial

    x = torch.cat([torch.arange(0.0, 300.0), torch.tensor([1e4, 1e6])])
    assert torch.allclose(log_factorial(x.double()), torch.lgamma(x.double() + 1), rtol=1e-9, atol=1e-8)

    class CountLogLik(torch.nn.Module):
        def forward(self, log_rate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            return Poisson(log_rate).log_prob(value)

    log_rate, value = torch.linspace(-2.0, 4.0, 7), torch.tensor([0.0, 1.0, 2.0, 5.0, 9.0, 30.0, 120.0])
    path = tmp_path / "count.onnx"
    torch.onnx.export(CountLogLik(), (log_rate, value), str(path), input_names=["r", "x"], dynamo=False)
    (got,) = ort.InferenceSession(str(path)).run(None, {"r": log_rate.numpy(), "x": value.numpy()})
    expected = value * log_rate - log_rate.exp() - torch.lgamma(value + 1)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-4)
