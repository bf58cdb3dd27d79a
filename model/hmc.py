"""Hamiltonian Monte Carlo, batched over any leading axes (rows, chains).

Style after BlackJAX: the state carries position, log density and its gradient so
nothing is recomputed; the integrator, the proposal and the accept/reject step are
small pure functions; diagnostics come back in an info tuple. Every random input
(momenta, uniforms) can be passed in, which keeps the sampler a deterministic
function of its inputs (needed for export and for parity tests).

The target is any `logp_and_grad(position) -> (logp [...], grad [..., E])`.
Step sizes have shape [E] (one per dimension) for one HMC step, and [T, E] for a
T-step chain (learned per step and per dimension, as in the paper).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

LogDensityAndGrad = Callable[[Tensor], tuple[Tensor, Tensor]]

# An energy error above this counts as a divergence (the trajectory blew up).
DIVERGENCE_THRESHOLD = 1000.0


class HMCState(NamedTuple):
    position: Tensor  # [..., E]
    logp: Tensor  # [...]
    grad: Tensor  # [..., E]


class HMCInfo(NamedTuple):
    acceptance_rate: Tensor  # [...] mean over the T steps of the Metropolis acceptance probability
    accepted: Tensor  # [...] number of accepted proposals
    divergences: Tensor  # [...] number of divergent proposals
    energy_error: Tensor  # [...] energy change of the last proposal


def init_state(position: Tensor, logp_and_grad: LogDensityAndGrad) -> HMCState:
    logp, grad = logp_and_grad(position)
    return HMCState(position, logp, grad)


def kinetic_energy(momentum: Tensor, inv_mass: Tensor) -> Tensor:
    return 0.5 * (momentum * momentum * inv_mass).sum(-1)


def leapfrog(
    state: HMCState,
    momentum: Tensor,
    step_size: Tensor,
    n_steps: int,
    inv_mass: Tensor,
    logp_and_grad: LogDensityAndGrad,
) -> tuple[HMCState, Tensor]:
    """`n_steps` velocity-Verlet steps; one gradient evaluation per step."""
    position, logp, grad = state
    p = momentum + 0.5 * step_size * grad
    for i in range(n_steps):
        position = position + step_size * inv_mass * p
        logp, grad = logp_and_grad(position)
        p = p + (step_size if i < n_steps - 1 else 0.5 * step_size) * grad
    return HMCState(position, logp, grad), p


def metropolis(
    current: HMCState, proposal: HMCState, energy_change: Tensor, log_uniform: Tensor
) -> tuple[HMCState, Tensor, Tensor, Tensor]:
    """Accept/reject by masks. Returns (state, acceptance probability, accepted, divergent).

    Non-finite proposals are rejected; `torch.where` keeps gradients of the chosen branch.
    """
    finite = torch.isfinite(energy_change) & torch.isfinite(proposal.position).all(-1)
    energy_change = energy_change.masked_fill(~finite, float("inf"))
    accept_prob = torch.exp(torch.clamp(-energy_change, max=0.0))
    accepted = log_uniform < -energy_change
    divergent = energy_change > DIVERGENCE_THRESHOLD
    keep = accepted.unsqueeze(-1)
    safe_pos = torch.where(finite.unsqueeze(-1), proposal.position, current.position)
    safe_grad = torch.where(finite.unsqueeze(-1), proposal.grad, current.grad)
    safe_logp = torch.where(finite, proposal.logp, current.logp)
    state = HMCState(
        torch.where(keep, safe_pos, current.position),
        torch.where(accepted, safe_logp, current.logp),
        torch.where(keep, safe_grad, current.grad),
    )
    return state, accept_prob, accepted, divergent


def hmc_step(
    state: HMCState,
    logp_and_grad: LogDensityAndGrad,
    step_size: Tensor,
    n_leapfrog: int,
    momentum_noise: Tensor,
    log_uniform: Tensor,
    inv_mass: Tensor,
) -> tuple[HMCState, Tensor, Tensor, Tensor, Tensor]:
    """One HMC transition given standard-normal noise for the momentum and log U(0,1)."""
    momentum = momentum_noise / torch.sqrt(inv_mass)
    proposal, p_end = leapfrog(state, momentum, step_size, n_leapfrog, inv_mass, logp_and_grad)
    energy_change = (-proposal.logp + kinetic_energy(p_end, inv_mass)) - (
        -state.logp + kinetic_energy(momentum, inv_mass)
    )
    new_state, prob, accepted, divergent = metropolis(state, proposal, energy_change, log_uniform)
    return new_state, prob, accepted, divergent, energy_change


def hmc_chain(
    state: HMCState,
    logp_and_grad: LogDensityAndGrad,
    step_sizes: Tensor,
    n_leapfrog: int,
    inv_mass: Tensor | None = None,
    momentum_noise: Tensor | None = None,
    log_uniforms: Tensor | None = None,
    generator: torch.Generator | None = None,
    transition: Callable | None = None,
) -> tuple[HMCState, HMCInfo]:
    """T = len(step_sizes) HMC transitions. Noise shapes: [T, ..., E] and [T, ...].

    `transition(state, step_size, momentum_noise, log_uniform, inv_mass)` replaces
    `hmc_step` bound to `logp_and_grad` when given (e.g. a compiled version of it).
    """
    n_steps, dim = step_sizes.shape
    batch = state.logp.shape
    if inv_mass is None:
        inv_mass = torch.ones(dim, dtype=state.position.dtype, device=state.position.device)
    if momentum_noise is None:
        momentum_noise = torch.randn(
            (n_steps, *state.position.shape),
            generator=generator,
            dtype=state.position.dtype,
            device=state.position.device,
        )
    if log_uniforms is None:
        u = torch.rand((n_steps, *batch), generator=generator, dtype=state.position.dtype, device=state.position.device)
        log_uniforms = torch.log(u)
    # *_like keeps the batch shape symbolic when the sampler is traced for export.
    prob_sum = torch.zeros_like(state.logp)
    n_acc = torch.zeros_like(state.logp, dtype=torch.long)
    n_div = torch.zeros_like(n_acc)
    energy = torch.zeros_like(prob_sum)
    if transition is None:

        def transition(state, step_size, noise, log_u, inv_mass):
            return hmc_step(state, logp_and_grad, step_size, n_leapfrog, noise, log_u, inv_mass)

    for t in range(n_steps):
        state, prob, acc, div, energy = transition(state, step_sizes[t], momentum_noise[t], log_uniforms[t], inv_mass)
        prob_sum = prob_sum + prob.detach()
        n_acc = n_acc + acc.long()
        n_div = n_div + div.long()
    return state, HMCInfo(prob_sum / max(n_steps, 1), n_acc, n_div, energy.detach())
