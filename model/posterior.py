"""The approximate posterior over eps: one deterministic function of the data and the noise, for every caller.

  encoder q(eps | z_O, y_O) -> initial draw eps_0 = mu + s * sigma * noise (s: the SKSD-tuned inflation,
  HMC variants only) -> T HMC transitions with the learned step sizes (HMC variants), or
  sampling-importance-resampling of the encoder's draws by the Gumbel-max trick (MIWAEM) -> eps.

Training (the stage-3 objective and SKSD), early stopping, evaluation and the exported sampler graph all call
`sample_posterior`; they differ only in where the noise comes from (`PosteriorNoise.draw` from a torch generator,
or graph inputs) and in which parameters learn from the result (`learn`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn

from hhvaem.model.dependency import Observed
from hhvaem.model.hmc import ChainInfo, ChainNoise, HMCState, LogDensityAndGrad, Transition, hmc_chain, init_state

# Which parameters the result is differentiated into: None (inference: nothing detached), "steps" (the stage-3
# sampler objective: the step sizes only) or "inflation" (SKSD: the initial proposal's inflation only).
LEARN = (None, "steps", "inflation")


class SamplerTarget(Protocol):
    """What the posterior needs of a model (`HHVAEM` is one): its encoder, log p* with its gradient, the tuned
    sampler (step sizes, inflation, mass, the transition) and, for MIWAEM, importance weights."""

    latent_size: int  # E
    uses_hmc: bool
    hmc_steps: int  # T
    importance_samples: int  # 0: no importance resampling
    step_sizes: Tensor  # [T, E]
    inflation: Tensor  # scalar: the SKSD-tuned inflation of the initial draw

    def encode(self, obs: Observed) -> tuple[Tensor, Tensor]: ...  # mu, sigma [B, E]

    def log_joint_and_grad(self, obs: Observed) -> LogDensityAndGrad: ...

    def inverse_mass(self, sigma: Tensor) -> Tensor: ...  # [B, 1, E]

    def transition(self, obs: Observed) -> Transition: ...

    def log_importance_weights(self, eps: Tensor, mu: Tensor, sigma: Tensor, obs: Observed) -> Tensor: ...

    def generative_parameters(self) -> list[nn.Parameter]: ...


class PosteriorNoise(NamedTuple):
    """Every random number the posterior of B rows x C samples needs."""

    initial: Tensor  # [B, C, E] standard normal: the encoder draw
    chain: ChainNoise | None  # HMC variants: momenta [T, B, C, E] and log-uniforms [T, B, C]
    gumbel: Tensor | None  # importance-resampling variants: standard Gumbel [B, C, C]

    @classmethod
    def draw(
        cls,
        model: SamplerTarget,
        rows: int,
        samples: int,
        generator: torch.Generator | None = None,
        like: Tensor | None = None,
    ) -> PosteriorNoise:
        """Fresh noise for `rows` x `samples` from `generator`, with the dtype and device of `like`."""
        kw = {"generator": generator}
        if like is not None:
            kw.update(dtype=like.dtype, device=like.device)
        initial = torch.randn((rows, samples, model.latent_size), **kw)
        chain = ChainNoise.draw(model.hmc_steps, initial, generator) if model.uses_hmc else None
        gumbel = None
        if model.importance_samples:
            gumbel = -torch.log(-torch.log(torch.rand((rows, samples, samples), **kw)))
        return cls(initial, chain, gumbel)


class Posterior(NamedTuple):
    eps: Tensor  # [B, C, E] posterior samples
    mu: Tensor  # [B, E] the encoder's mean
    sigma: Tensor  # [B, E] and scale
    state: HMCState | None  # the chains' final state (HMC variants): eps, log p* and its gradient
    info: ChainInfo | None


def sample_posterior(
    model: SamplerTarget,
    obs: Observed,
    noise: PosteriorNoise,
    learn: str | None = None,
    use_sampler: bool = True,
    flat: bool = False,
) -> Posterior:
    """Samples eps [B, C, E] from the variant's approximate posterior (`use_sampler=False`: the plain encoder's).

    With `learn` set the encoder's output is detached and the generative networks are frozen inside the chain, so
    that gradients reach only the sampler parameter being learnt (see LEARN). `flat` runs the chains as one
    [B * C, ...] batch (same numbers): in the exported graph every matrix product is then 2-D, which ONNX Runtime
    fuses with its bias into one Gemm.
    """
    if learn not in LEARN:
        raise ValueError(f"learn must be one of {LEARN}, got {learn!r}")
    mu, sigma = model.encode(obs)
    if learn:
        mu, sigma = mu.detach(), sigma.detach()
    if model.uses_hmc and use_sampler:
        inflation = model.inflation if learn != "steps" else model.inflation.detach()
        step_sizes = model.step_sizes if learn != "inflation" else model.step_sizes.detach()
        eps0 = encoder_draw(mu, sigma * inflation, noise.initial)
        with frozen(model.generative_parameters()) if learn else nullcontext():
            run = run_flat_chain if flat else run_chain
            state, info = run(model, eps0, obs, sigma, noise.chain, step_sizes)
        return Posterior(state.position, mu, sigma, state, info)
    eps = encoder_draw(mu, sigma, noise.initial)
    if model.importance_samples and use_sampler:
        # Sampling-importance-resampling by the Gumbel-max trick: draw c of row b takes proposal argmax_j.
        log_w = model.log_importance_weights(eps, mu, sigma, obs)
        idx = torch.argmax(log_w.unsqueeze(-2) + noise.gumbel, dim=-1)
        eps = torch.gather(eps, -2, idx.unsqueeze(-1).expand_as(eps))
    return Posterior(eps, mu, sigma, None, None)


def encoder_draw(mu: Tensor, scale: Tensor, noise: Tensor) -> Tensor:
    """mu [B, E] + scale [B, E] * noise [B, C, E]: C reparameterised draws per row."""
    return mu.unsqueeze(-2) + scale.unsqueeze(-2) * noise


def run_chain(
    model: SamplerTarget, eps0: Tensor, obs: Observed, sigma: Tensor, noise: ChainNoise, step_sizes: Tensor
) -> tuple[HMCState, ChainInfo]:
    """T HMC transitions on log p*(eps | observed) from eps0 [B, C, E] (compiled transitions when set up)."""
    obs_c = obs.unsqueeze(-2)
    state = init_state(eps0, model.log_joint_and_grad(obs_c))
    return hmc_chain(state, model.transition(obs_c), step_sizes, model.inverse_mass(sigma), noise)


def run_flat_chain(
    model: SamplerTarget, eps0: Tensor, obs: Observed, sigma: Tensor, noise: ChainNoise, step_sizes: Tensor
) -> tuple[HMCState, ChainInfo]:
    """`run_chain` with rows and chains folded into one axis: every tensor in the chain is [B * C, ...]."""
    b, c, e = eps0.shape
    per_chain = Observed(*(None if t is None else _repeat(t, c) for t in obs))
    flat_noise = ChainNoise(noise.momentum.flatten(1, 2), noise.log_u.flatten(1, 2))
    state = init_state(eps0.reshape(-1, e), model.log_joint_and_grad(per_chain))
    inv_mass = model.inverse_mass(_repeat(sigma, c)).squeeze(-2)
    state, info = hmc_chain(state, model.transition(per_chain), step_sizes, inv_mass, flat_noise)
    return (
        HMCState(state.position.reshape(b, c, e), state.logp.reshape(b, c), state.grad.reshape(b, c, e)),
        ChainInfo(*(t.reshape(b, c) for t in info)),
    )


def _repeat(t: Tensor, c: int) -> Tensor:
    """[B, K] -> [B * C, K]: each row's values once per chain."""
    return t.unsqueeze(1).expand(-1, c, -1).reshape(-1, t.shape[-1])


@contextmanager
def frozen(params: list[nn.Parameter]) -> Iterator[None]:
    """Temporarily exclude parameters from autograd (they still take part in the computation)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
