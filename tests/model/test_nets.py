"""The hand-written backward pass of MLP and the batched GroupedMLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hhvaem.model.nets import MLP, GroupedMLP, silu_and_slope

DT = torch.float64


def test_silu_and_slope_match_torch():
    x = torch.linspace(-8, 8, 101, dtype=DT, requires_grad=True)
    y, slope = silu_and_slope(x)
    torch.testing.assert_close(y, nn.functional.silu(x), rtol=1e-14, atol=1e-14)
    (auto,) = torch.autograd.grad(nn.functional.silu(x).sum(), x)
    torch.testing.assert_close(slope, auto, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sizes", [[4, 3], [4, 7, 3], [5, 8, 6, 2], [3, 6, 6, 6, 4]])
@pytest.mark.parametrize("lead", [(6,), (2, 3)])
def test_mlp_vjp_equals_autograd(sizes, lead):
    torch.manual_seed(0)
    mlp = MLP(sizes).to(DT)
    x = (2.0 * torch.randn(*lead, sizes[0], dtype=DT)).requires_grad_(True)
    out, slopes = mlp.forward_cached(x)
    assert len(slopes) == len(sizes) - 2
    v = torch.randn(*lead, sizes[-1], dtype=DT)
    (auto,) = torch.autograd.grad(out, x, v)
    mine = mlp.vjp(slopes, v)
    assert mine.shape == x.shape
    torch.testing.assert_close(mine, auto, rtol=1e-10, atol=1e-10)


def test_mlp_forward_is_linear_silu_stack():
    torch.manual_seed(1)
    mlp = MLP([3, 5, 4, 2]).to(DT)
    seq = nn.Sequential(mlp.layers[0], nn.SiLU(), mlp.layers[1], nn.SiLU(), mlp.layers[2])
    x = torch.randn(7, 3, dtype=DT)
    torch.testing.assert_close(mlp(x), seq(x), rtol=1e-14, atol=1e-14)


def test_mlp_vjp_is_differentiable_twice():
    """Training differentiates through the hand-written gradient: it must stay on the autograd tape."""
    torch.manual_seed(2)
    mlp = MLP([2, 5, 1]).to(DT)
    x = torch.randn(4, 2, dtype=DT, requires_grad=True)
    out, slopes = mlp.forward_cached(x)
    g = mlp.vjp(slopes, torch.ones_like(out))
    (hess_v,) = torch.autograd.grad(g.sum(), x)
    (g_auto,) = torch.autograd.grad(mlp(x).sum(), x, create_graph=True)
    (hess_auto,) = torch.autograd.grad(g_auto.sum(), x)
    torch.testing.assert_close(hess_v, hess_auto, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sizes", [[1, 6, 6, 3], [4, 5, 2], [3, 2]])
def test_grouped_mlp_equals_separate_linear_stacks(sizes):
    torch.manual_seed(3)
    groups = 4
    gm = GroupedMLP(groups, sizes).to(DT)
    stacks = []
    for g in range(groups):
        mods = []
        for i, (w, b) in enumerate(zip(gm.weights, gm.biases)):
            lin = nn.Linear(sizes[i], sizes[i + 1]).to(DT)
            with torch.no_grad():
                lin.weight.copy_(w[g].T)
                lin.bias.copy_(b[g])
            mods.append(lin)
            if i < len(gm.weights) - 1:
                mods.append(nn.SiLU())
        stacks.append(nn.Sequential(*mods))
    x = torch.randn(2, 5, groups, sizes[0], dtype=DT)
    out = gm(x)
    assert out.shape == (2, 5, groups, sizes[-1])
    for g in range(groups):
        torch.testing.assert_close(out[..., g, :], stacks[g](x[..., g, :]), rtol=1e-12, atol=1e-12)
    # the groups really are different networks
    assert not torch.allclose(gm(x[..., :1, :].expand_as(x))[..., 0, :], gm(x[..., :1, :].expand_as(x))[..., 1, :])


def test_grouped_mlp_groups_are_independent():
    torch.manual_seed(4)
    gm = GroupedMLP(3, [2, 4, 1]).to(DT)
    x = torch.randn(5, 3, 2, dtype=DT, requires_grad=True)
    out = gm(x)
    (g,) = torch.autograd.grad(out[:, 1].sum(), x)
    assert torch.all(g[:, 0] == 0) and torch.all(g[:, 2] == 0)
    assert torch.any(g[:, 1] != 0)
