"""Hamiltonian Monte Carlo, batched over any leading axes (rows, chains).

Style after BlackJAX: the state carries position, log density and its gradient so nothing is
recomputed; the integrator, the proposal and the accept/reject step are small pure functions;
every transition returns `(state, info)`; the transition is built once per target (`build_transition`) and a
chain only runs it. All randomness comes in as a named noise bundle
(`ChainNoise`: momenta and log-uniforms for every step), which keeps the sampler a deterministic
function of its inputs (needed for export and for parity tests).

The target is any `logp_and_grad(position) -> (logp [...], grad [..., E])`. Step sizes have shape
[E] (one per dimension) for one transition, and [T, E] for a T-step chain (learned per step and
per dimension, as in the paper).
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
    """What one transition did, per chain."""

    acceptance_prob: Tensor  # [...] Metropolis acceptance probability of the proposal
    accepted: Tensor  # [...] bool
    divergent: Tensor  # [...] bool: energy error above DIVERGENCE_THRESHOLD
    energy_error: Tensor  # [...] energy change of the proposal


class ChainInfo(NamedTuple):
    """A T-step chain's diagnostics, per chain."""

    acceptance_rate: Tensor  # [...] mean acceptance probability over the T transitions
    accepted: Tensor  # [...] number of accepted proposals
    divergences: Tensor  # [...] number of divergent proposals
    energy_error: Tensor  # [...] energy change of the last proposal


class StepNoise(NamedTuple):
    """The random input of one transition: standard-normal momentum noise and log U(0, 1)."""

    momentum: Tensor  # [..., E]
    log_u: Tensor  # [...]


class ChainNoise(NamedTuple):
    """The random input of a T-step chain: one StepNoise per step, stacked on a leading axis."""

    momentum: Tensor  # [T, ..., E]
    log_u: Tensor  # [T, ...]

    def step(self, t: int) -> StepNoise:
        return StepNoise(self.momentum[t], self.log_u[t])

    @classmethod
    def draw(cls, n_transitions: int, position: Tensor, generator: torch.Generator | None = None) -> ChainNoise:
        """Fresh noise for `n_transitions` (T) transitions of chains shaped like `position` [..., E]."""
        kw = {"generator": generator, "dtype": position.dtype, "device": position.device}
        momentum = torch.randn((n_transitions, *position.shape), **kw)
        return cls(momentum, torch.log(torch.rand((n_transitions, *position.shape[:-1]), **kw)))


# (state, step size [E], noise, inverse mass) -> (state, info): one transition, the unit `torch.compile` fuses.
Transition = Callable[[HMCState, Tensor, StepNoise, Tensor], tuple[HMCState, HMCInfo]]

# How the diagonal mass is chosen: "encoder": M = 1 / sigma_q^2 per row, so step sizes are relative to the
# encoder's scale (a sharp posterior then needs no tiny absolute steps); "identity": M = I, the paper's.
MASSES = ("encoder", "identity")


def inverse_mass(kind: str, scale: Tensor) -> Tensor:
    """Diagonal inverse mass [..., 1, E] for chains of rows whose encoder scale is `scale` [..., E] (see MASSES)."""
    if kind == "encoder":
        return (scale.detach() ** 2).unsqueeze(-2)
    if kind == "identity":
        return torch.ones_like(scale).unsqueeze(-2)
    raise ValueError(f"unknown mass {kind!r} (expected one of {MASSES})")


def kinetic_energy(momentum: Tensor, inv_mass: Tensor) -> Tensor:
    return 0.5 * (momentum * momentum * inv_mass).sum(-1)


def init_state(position: Tensor, logp_and_grad: LogDensityAndGrad) -> HMCState:
    logp, grad = logp_and_grad(position)
    return HMCState(position, logp, grad)


def leapfrog(
    state: HMCState,
    momentum: Tensor,
    step_size: Tensor,
    n_leapfrog: int,
    inv_mass: Tensor,
    logp_and_grad: LogDensityAndGrad,
) -> tuple[HMCState, Tensor]:
    """`n_leapfrog` (L) velocity-Verlet steps; one gradient evaluation per step."""
    position, logp, grad = state
    p = momentum + 0.5 * step_size * grad
    move = step_size * inv_mass  # once per trajectory, not per step
    for i in range(n_leapfrog):
        position = position + move * p
        logp, grad = logp_and_grad(position)
        p = p + (step_size if i < n_leapfrog - 1 else 0.5 * step_size) * grad
    return HMCState(position, logp, grad), p


def metropolis(current: HMCState, proposal: HMCState, energy_change: Tensor, log_u: Tensor) -> tuple[HMCState, HMCInfo]:
    """Accept/reject by masks. Non-finite proposals are rejected; `torch.where` keeps gradients of the chosen branch."""
    finite = torch.isfinite(energy_change) & torch.isfinite(proposal.position).all(-1)
    energy_change = energy_change.masked_fill(~finite, float("inf"))
    accept_prob = torch.exp(torch.clamp(-energy_change, max=0.0))
    accepted = log_u < -energy_change
    keep = accepted.unsqueeze(-1)
    safe_pos = torch.where(finite.unsqueeze(-1), proposal.position, current.position)
    safe_grad = torch.where(finite.unsqueeze(-1), proposal.grad, current.grad)
    safe_logp = torch.where(finite, proposal.logp, current.logp)
    state = HMCState(
        torch.where(keep, safe_pos, current.position),
        torch.where(accepted, safe_logp, current.logp),
        torch.where(keep, safe_grad, current.grad),
    )
    return state, HMCInfo(accept_prob, accepted, energy_change > DIVERGENCE_THRESHOLD, energy_change)


def build_transition(logp_and_grad: LogDensityAndGrad, n_leapfrog: int) -> Transition:
    """The HMC transition on one target, built once: momentum from the noise, L leapfrog steps, Metropolis."""

    def transition(state: HMCState, step_size: Tensor, noise: StepNoise, inv_mass: Tensor) -> tuple[HMCState, HMCInfo]:
        momentum = noise.momentum / torch.sqrt(inv_mass)
        proposal, p_end = leapfrog(state, momentum, step_size, n_leapfrog, inv_mass, logp_and_grad)
        energy_change = (-proposal.logp + kinetic_energy(p_end, inv_mass)) - (
            -state.logp + kinetic_energy(momentum, inv_mass)
        )
        return metropolis(state, proposal, energy_change, noise.log_u)

    return transition


def hmc_chain(
    state: HMCState,
    transition: Transition,
    step_sizes: Tensor,
    inv_mass: Tensor | None = None,
    noise: ChainNoise | None = None,
    generator: torch.Generator | None = None,
) -> tuple[HMCState, ChainInfo]:
    """T = len(step_sizes) transitions; `noise` (drawn from `generator` when absent) shaped [T, ..., E] / [T, ...]."""
    n_transitions, dim = step_sizes.shape
    if inv_mass is None:
        inv_mass = torch.ones(dim, dtype=state.position.dtype, device=state.position.device)
    if noise is None:
        noise = ChainNoise.draw(n_transitions, state.position, generator)
    # *_like keeps the batch shape symbolic when the sampler is traced for export.
    prob_sum = torch.zeros_like(state.logp)
    n_acc = torch.zeros_like(state.logp, dtype=torch.long)
    n_div = torch.zeros_like(n_acc)
    energy = torch.zeros_like(prob_sum)
    for t in range(n_transitions):
        state, info = transition(state, step_sizes[t], noise.step(t), inv_mass)
        prob_sum = prob_sum + info.acceptance_prob.detach()
        n_acc = n_acc + info.accepted.long()
        n_div = n_div + info.divergent.long()
        energy = info.energy_error
    return state, ChainInfo(prob_sum / max(n_transitions, 1), n_acc, n_div, energy.detach())
