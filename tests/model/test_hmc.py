"""HMC: the sampler targets the right distribution; integrator and accept/reject invariants."""

from __future__ import annotations

import math

import pytest
import torch

from hhvaem.model import hmc
from hhvaem.model.hmc import (
    ChainNoise,
    HMCState,
    StepNoise,
    build_transition,
    hmc_chain,
    init_state,
    kinetic_energy,
    leapfrog,
    metropolis,
)

DT = torch.float64

MEAN = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
COV = torch.tensor([[1.0, 0.8, 0.3], [0.8, 2.0, 0.5], [0.3, 0.5, 0.5]], dtype=DT)
PREC = torch.linalg.inv(COV)


def gaussian_target(mean: torch.Tensor, prec: torch.Tensor):
    def logp_and_grad(x):
        d = x - mean
        pd = d @ prec  # prec is symmetric
        return -0.5 * (d * pd).sum(-1), -pd

    return logp_and_grad


def quartic_target(x):
    """A non-Gaussian target: log p = -0.5 |x|^2 - 0.1 sum x^4 + 0.3 x0 x1."""
    logp = -0.5 * (x * x).sum(-1) - 0.1 * (x**4).sum(-1) + 0.3 * x[..., 0] * x[..., 1]
    grad = -x - 0.4 * x**3
    grad = grad + 0.3 * torch.stack([x[..., 1], x[..., 0]] + [torch.zeros_like(x[..., 0])] * (x.shape[-1] - 2), -1)
    return logp, grad


def test_targets_gradients_are_right():
    x = torch.randn(5, 3, dtype=DT, requires_grad=True)
    for f in (gaussian_target(MEAN, PREC), quartic_target):
        lp, g = f(x)
        (auto,) = torch.autograd.grad(lp.sum(), x)
        torch.testing.assert_close(g, auto)


# ---------------------------------------------------------------- (a) targets a correlated Gaussian


def test_chain_samples_correlated_gaussian():
    gen = torch.Generator().manual_seed(0)
    n_chains, t_steps = 2000, 30
    x0 = MEAN + 3.0 * torch.randn(n_chains, 3, generator=gen, dtype=DT)  # dispersed start
    target = gaussian_target(MEAN, PREC)
    step_sizes = torch.full((t_steps, 3), 0.15, dtype=DT)
    state, info = hmc_chain(init_state(x0, target), build_transition(target, 10), step_sizes, generator=gen)
    x = state.position
    assert x.shape == (n_chains, 3)
    assert torch.all(info.acceptance_rate > 0) and torch.all(info.acceptance_rate <= 1)
    assert 0.6 < info.acceptance_rate.mean() <= 1.0
    assert info.accepted.shape == (n_chains,) and info.accepted.max() <= t_steps
    assert info.divergences.sum() == 0
    # stored log density and gradient belong to the returned position
    lp, g = target(x)
    torch.testing.assert_close(state.logp, lp)
    torch.testing.assert_close(state.grad, g)
    se = torch.sqrt(torch.diagonal(COV) / n_chains)
    assert torch.all((x.mean(0) - MEAN).abs() < 4.5 * se), x.mean(0)
    cov = torch.cov(x.T)
    assert torch.allclose(cov, COV, atol=0.2), cov


def test_chain_with_bad_step_sizes_does_not_mix():
    """Control for the test above: tiny steps leave the dispersed start visibly wrong."""
    gen = torch.Generator().manual_seed(0)
    x0 = MEAN + 3.0 * torch.randn(2000, 3, generator=gen, dtype=DT)
    target = gaussian_target(MEAN, PREC)
    state, _ = hmc_chain(
        init_state(x0, target), build_transition(target, 3), torch.full((5, 3), 1e-3, dtype=DT), generator=gen
    )
    assert not torch.allclose(torch.cov(state.position.T), COV, atol=0.2)


# ---------------------------------------------------------------- (b) integrator


def test_leapfrog_is_reversible():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 3, generator=gen, dtype=DT)
    p0 = torch.randn(8, 3, generator=gen, dtype=DT)
    inv_mass = torch.tensor([0.5, 1.0, 2.0], dtype=DT)
    step = torch.tensor([0.1, 0.05, 0.08], dtype=DT)
    state = init_state(x0, quartic_target)
    fwd, p1 = leapfrog(state, p0, step, 25, inv_mass, quartic_target)
    assert (fwd.position - x0).abs().max() > 0.1  # it actually moved
    back, p2 = leapfrog(fwd, -p1, step, 25, inv_mass, quartic_target)
    torch.testing.assert_close(back.position, x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(-p2, p0, rtol=0, atol=1e-10)
    torch.testing.assert_close(back.logp, state.logp, rtol=0, atol=1e-10)


def energy_error(step: float, n_steps: int, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(16, 3, generator=gen, dtype=DT)
    p0 = torch.randn(16, 3, generator=gen, dtype=DT)
    inv_mass = torch.tensor([1.0, 0.7, 1.3], dtype=DT)
    state = init_state(x0, quartic_target)
    end, p1 = leapfrog(state, p0, torch.full((3,), step, dtype=DT), n_steps, inv_mass, quartic_target)
    h0 = -state.logp + kinetic_energy(p0, inv_mass)
    h1 = -end.logp + kinetic_energy(p1, inv_mass)
    return (h1 - h0).abs()


def test_leapfrog_energy_error_is_small_and_second_order():
    # the same trajectory length 1.0 with step h and h/2
    e1 = energy_error(0.01, 100)
    e2 = energy_error(0.005, 200)
    assert e1.max() < 1e-3
    ratio = e1.mean() / e2.mean()
    assert 3.5 < ratio < 4.5, ratio
    # first order would lose energy much faster
    assert energy_error(0.1, 10).mean() > 50 * e1.mean()


def test_leapfrog_one_gradient_per_step():
    calls = []

    def counted(x):
        calls.append(1)
        return quartic_target(x)

    state = init_state(torch.zeros(2, 3, dtype=DT), quartic_target)
    leapfrog(state, torch.ones(2, 3, dtype=DT), torch.full((3,), 0.1, dtype=DT), 7, torch.ones(3, dtype=DT), counted)
    assert len(calls) == 7


# ---------------------------------------------------------------- (c) metropolis


def make_state(pos, logp):
    pos = torch.as_tensor(pos, dtype=DT)
    return HMCState(pos, torch.as_tensor(logp, dtype=DT), -pos)


def test_metropolis_rejects_non_finite_proposals():
    current = make_state([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [-1.0, -2.0, -3.0])
    proposal = make_state([[float("nan"), 0.0], [0.0, 0.0], [float("inf"), 1.0]], [-0.5, float("nan"), -0.1])
    energy = torch.tensor([-1.0, float("nan"), -2.0], dtype=DT)  # row 0/2 look attractive but are non-finite
    log_u = torch.full((3,), -1e9, dtype=DT)  # would accept anything finite
    state, (prob, accepted, divergent, _) = metropolis(current, proposal, energy, log_u)
    assert not accepted.any()
    assert torch.all(prob == 0)
    torch.testing.assert_close(state.position, current.position)
    torch.testing.assert_close(state.logp, current.logp)
    torch.testing.assert_close(state.grad, current.grad)
    assert divergent.all()  # a blown-up trajectory is a divergence
    for t in state:
        assert torch.isfinite(t).all()


def test_metropolis_accept_reject_rule():
    current = make_state([[0.0], [0.0], [0.0], [0.0]], [0.0, 0.0, 0.0, 0.0])
    proposal = make_state([[1.0], [2.0], [3.0], [4.0]], [-1.0, -2.0, -3.0, -4.0])
    energy = torch.tensor([-0.5, 0.5, 0.5, 2.0], dtype=DT)
    log_u = torch.tensor([-0.01, -0.1, -1.0, -1.9], dtype=DT)
    state, (prob, accepted, divergent, _) = metropolis(current, proposal, energy, log_u)
    assert accepted.tolist() == [True, False, True, False]
    torch.testing.assert_close(prob, torch.exp(-energy).clamp(max=1.0))
    torch.testing.assert_close(state.position[:, 0], torch.tensor([1.0, 0.0, 3.0, 0.0], dtype=DT))
    torch.testing.assert_close(state.logp, torch.tensor([-1.0, 0.0, -3.0, 0.0], dtype=DT))
    torch.testing.assert_close(state.grad[:, 0], torch.tensor([-1.0, 0.0, -3.0, 0.0], dtype=DT))
    assert not divergent.any()


def test_metropolis_divergence_threshold():
    th = hmc.DIVERGENCE_THRESHOLD
    current = make_state([[0.0], [0.0]], [0.0, 0.0])
    proposal = make_state([[1.0], [1.0]], [-1.0, -1.0])
    energy = torch.tensor([th - 1.0, th + 1.0], dtype=DT)
    _, (_, accepted, divergent, _) = metropolis(current, proposal, energy, torch.zeros(2, dtype=DT) - 0.5)
    assert divergent.tolist() == [False, True]
    assert not accepted.any()


def test_chain_counts_divergences_and_survives_them():
    gen = torch.Generator().manual_seed(3)
    target = gaussian_target(torch.zeros(1, dtype=DT), torch.eye(1, dtype=DT))
    x0 = torch.randn(50, 1, generator=gen, dtype=DT)
    # step 10 on a unit harmonic oscillator is unstable: energy explodes within 10 leapfrog steps
    state, info = hmc_chain(
        init_state(x0, target), build_transition(target, 10), torch.full((4, 1), 10.0, dtype=DT), generator=gen
    )
    assert torch.all(info.divergences == 4)
    assert torch.all(info.accepted == 0)
    torch.testing.assert_close(state.position, x0)


def test_chain_rejects_proposals_where_target_is_nan():
    def walled(x):
        lp, g = quartic_target(x)
        bad = (x.abs() > 1.0).any(-1)
        return torch.where(bad, torch.full_like(lp, float("nan")), lp), torch.where(bad.unsqueeze(-1), float("nan"), g)

    gen = torch.Generator().manual_seed(4)
    x0 = 0.3 * torch.randn(200, 3, generator=gen, dtype=DT)
    state, info = hmc_chain(
        init_state(x0, walled), build_transition(walled, 5), torch.full((10, 3), 0.3, dtype=DT), generator=gen
    )
    assert torch.isfinite(state.position).all() and torch.isfinite(state.logp).all()
    assert torch.isfinite(state.grad).all()
    assert (state.position.abs() <= 1.0).all()
    assert info.accepted.sum() > 0  # still moves inside the wall
    assert info.divergences.sum() > 0


# ---------------------------------------------------------------- (d) determinism


def test_explicit_noise_makes_chain_deterministic_and_matches_generator():
    t_steps, shape = 6, (4, 5, 3)
    target = quartic_target
    x0 = torch.randn(*shape, generator=torch.Generator().manual_seed(5), dtype=DT)
    steps = torch.full((t_steps, 3), 0.2, dtype=DT)
    gen = torch.Generator().manual_seed(6)
    noise = torch.randn((t_steps, *shape), generator=gen, dtype=DT)
    log_u = torch.log(torch.rand((t_steps, *shape[:-1]), generator=gen, dtype=DT))

    torch.manual_seed(100)
    a, ia = hmc_chain(init_state(x0, target), build_transition(target, 4), steps, noise=ChainNoise(noise, log_u))
    torch.manual_seed(200)
    b, ib = hmc_chain(init_state(x0, target), build_transition(target, 4), steps, noise=ChainNoise(noise, log_u))
    for u, v in zip(a + ia, b + ib):
        assert torch.equal(u, v)
    # the same noise drawn by the chain itself from an identically seeded generator
    c, _ = hmc_chain(
        init_state(x0, target), build_transition(target, 4), steps, generator=torch.Generator().manual_seed(6)
    )
    assert torch.equal(a.position, c.position)
    # and different noise gives a different result
    d, _ = hmc_chain(init_state(x0, target), build_transition(target, 4), steps, noise=ChainNoise(-noise, log_u))
    assert not torch.allclose(a.position, d.position)


def test_step_uses_given_momentum_noise_scaled_by_mass():
    target = gaussian_target(torch.zeros(2, dtype=DT), torch.eye(2, dtype=DT))
    state = init_state(torch.tensor([[0.5, -0.5]], dtype=DT), target)
    noise = torch.tensor([[1.0, -2.0]], dtype=DT)
    inv_mass = torch.tensor([4.0, 0.25], dtype=DT)
    step = torch.tensor([0.1, 0.2], dtype=DT)
    new, (prob, acc, div, de) = build_transition(target, 3)(
        state, step, StepNoise(noise, torch.zeros(1, dtype=DT) - 50), inv_mass
    )
    momentum = noise / inv_mass.sqrt()
    ref, p_end = leapfrog(state, momentum, step, 3, inv_mass, target)
    torch.testing.assert_close(new.position, ref.position)
    expected_de = -ref.logp + kinetic_energy(p_end, inv_mass) + state.logp - kinetic_energy(momentum, inv_mass)
    torch.testing.assert_close(de, expected_de)
    assert acc.all()


# ---------------------------------------------------------------- (e) per-chain mass matrix


def test_chain_with_per_row_inverse_mass_targets_each_row():
    """Row 0: N(1, 0.1^2) with inv_mass 0.01; row 1: N(-2, 1) with inv_mass 1; one shared step size."""
    gen = torch.Generator().manual_seed(7)
    n_chains, t_steps = 2000, 20
    mean = torch.tensor([[1.0], [-2.0]], dtype=DT).unsqueeze(1)  # [B, 1, 1]
    sd = torch.tensor([[0.1], [1.0]], dtype=DT).unsqueeze(1)

    def target(x):
        u = (x - mean) / sd
        return -0.5 * (u * u).sum(-1), -u / sd

    inv_mass = sd**2  # [B, 1, E]
    x0 = mean + 3.0 * sd * torch.randn(2, n_chains, 1, generator=gen, dtype=DT)
    # varied step sizes (trajectory length 1-2.5, in units of each row's scale) avoid periodic orbits
    steps = torch.linspace(0.2, 0.5, t_steps, dtype=DT)[torch.randperm(t_steps, generator=gen)].unsqueeze(-1)
    state, info = hmc_chain(
        init_state(x0, target), build_transition(target, 5), steps, inv_mass=inv_mass, generator=gen
    )
    x = state.position[..., 0]
    assert x.shape == (2, n_chains)
    assert info.acceptance_rate.mean() > 0.7
    se = sd.flatten() / math.sqrt(n_chains)
    assert torch.all((x.mean(1) - mean.flatten()).abs() < 4.5 * se), x.mean(1)
    torch.testing.assert_close(x.std(1), sd.flatten(), rtol=0.08, atol=0)

    # without the mass matrix the same step size is unstable on the narrow row and it never mixes
    state2, info2 = hmc_chain(init_state(x0, target), build_transition(target, 5), steps, generator=gen)
    assert info2.acceptance_rate[0].mean() < 0.05
    assert state2.position[0, :, 0].std() > 2 * 0.1


@pytest.mark.parametrize("n_leapfrog", [1, 4])
def test_chain_info_shapes_over_two_batch_axes(n_leapfrog):
    target = quartic_target
    x0 = torch.zeros(3, 4, 2, dtype=DT)
    state, info = hmc_chain(
        init_state(x0, target),
        build_transition(target, n_leapfrog),
        torch.full((5, 2), 0.3, dtype=DT),
        generator=torch.Generator(),
    )
    assert state.position.shape == (3, 4, 2) and state.logp.shape == (3, 4)
    for f in info:
        assert f.shape == (3, 4)
    assert (info.accepted <= 5).all() and (info.accepted >= 0).all()
