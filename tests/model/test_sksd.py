"""Sliced kernelized Stein discrepancy: near zero for matched samples, large otherwise."""

from __future__ import annotations

import math

import pytest
import torch

from hhvaem.model.sksd import sksd

DT = torch.float64
B, C, E = 20, 200, 3


def draws(seed: int, loc: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return loc + scale * torch.randn(B, C, E, generator=g, dtype=DT)


def test_matched_samples_give_near_zero():
    x = draws(0)
    v = sksd(x, -x)  # N(0, I) samples with their exact score
    assert v.shape == (B,)
    assert torch.isfinite(v).all()
    assert abs(v.mean()) < 0.05
    # a U-statistic: individual rows can be negative, and are small
    assert v.abs().max() < 0.25


@pytest.mark.parametrize("loc,scale", [(1.5, 1.0), (0.0, 2.0), (0.0, 0.4)])
def test_mismatched_samples_give_clearly_positive_values(loc, scale):
    matched = sksd(draws(1), -draws(1)).mean()
    x = draws(2, loc, scale)
    v = sksd(x, -x)  # scored against N(0, I)
    assert v.shape == (B,)
    assert torch.all(v > 0.1), v
    assert v.mean() > 0.4
    assert v.mean() > 10 * abs(matched)


def test_score_of_the_right_target_fixes_a_shift():
    x = draws(3, loc=1.5)
    assert abs(sksd(x, -(x - 1.5)).mean()) < 0.05  # scored against N(1.5, I): matched again


def test_grows_with_the_mismatch():
    values = [sksd(x, -x).mean() for x in (draws(4, loc=s) for s in (0.0, 0.5, 1.0, 2.0))]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_rows_are_independent():
    x = draws(5)[:, :60].contiguous()
    x[3] = 1.0 + 2.0 * x[3]  # one bad row
    v = sksd(x, -x)
    alone = torch.stack([sksd(x[i : i + 1], -x[i : i + 1])[0] for i in range(B)])
    torch.testing.assert_close(v, alone, rtol=1e-10, atol=1e-12)
    assert v.argmax() == 3
    # and it takes extra leading axes
    v2 = sksd(x.reshape(4, 5, 60, E), -x.reshape(4, 5, 60, E))
    torch.testing.assert_close(v2.flatten(), v)


def reference_sksd(x: torch.Tensor, s: torch.Tensor) -> float:
    """Plain double loop over slices and pairs: the U-statistic of the RBF Stein kernel per coordinate."""
    c, e = x.shape
    total = 0.0
    for d in range(e):
        sq = [(x[i, d] - x[j, d]) ** 2 for i in range(c) for j in range(c) if i != j]
        h2 = max(float(torch.stack(sq).median()) / (2 * math.log(c + 1)), 1e-6)
        acc = 0.0
        for i in range(c):
            for j in range(c):
                if i == j:
                    continue
                a, b = float(x[i, d]), float(x[j, d])
                k = math.exp(-((a - b) ** 2) / (2 * h2))
                dk_da, dk_db = -(a - b) / h2 * k, (a - b) / h2 * k
                d2k = (1 / h2 - (a - b) ** 2 / h2**2) * k
                si, sj = float(s[i, d]), float(s[j, d])
                acc += si * sj * k + si * dk_db + sj * dk_da + d2k
        total += acc / (c * (c - 1))
    return total


def test_matches_a_plain_loop_implementation():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 7, 2, generator=g, dtype=DT)
    s = torch.randn(2, 7, 2, generator=g, dtype=DT)  # any scores, not just a Gaussian's
    v = sksd(x, s)
    for b in range(2):
        assert v[b].item() == pytest.approx(reference_sksd(x[b], s[b]), rel=1e-6)  # bandwidth constant is float32


def test_stein_kernel_second_derivative_is_the_kernels():
    """The kernel terms in the reference above equal autograd derivatives of the RBF kernel."""
    a = torch.tensor(0.3, dtype=DT, requires_grad=True)
    b = torch.tensor(-0.4, dtype=DT, requires_grad=True)
    h2 = 0.7
    k = torch.exp(-((a - b) ** 2) / (2 * h2))
    (dk_da,) = torch.autograd.grad(k, a, create_graph=True)
    (d2k,) = torch.autograd.grad(dk_da, b)
    d = 0.7
    assert d2k.item() == pytest.approx((1 / h2 - d**2 / h2**2) * math.exp(-(d**2) / (2 * h2)), rel=1e-12)
    assert dk_da.item() == pytest.approx(-d / h2 * math.exp(-(d**2) / (2 * h2)), rel=1e-12)


def test_is_differentiable_in_the_samples():
    """Training moves the encoder inflation through the samples: gradients must flow and be finite."""
    log_scale = torch.tensor(math.log(2.0), dtype=DT, requires_grad=True)
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(4, 50, 3, generator=g, dtype=DT)
    x = torch.exp(log_scale) * noise
    v = sksd(x, -x).mean()
    (grad,) = torch.autograd.grad(v, log_scale)
    assert torch.isfinite(grad)
    assert grad > 0  # shrinking the too-wide sampler towards N(0, I) lowers the discrepancy
