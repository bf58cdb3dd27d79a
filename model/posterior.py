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
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from hhvaem.model.dependency import Observed
from hhvaem.model.hmc import ChainInfo, ChainNoise, HMCState, hmc_chain, init_state
from hhvaem.model.likelihoods import Gaussian

if TYPE_CHECKING:
    from hhvaem.model.hhvaem import HHVAEM

# Which parameters the result is differentiated into: None (inference: nothing detached), "steps" (the stage-3
# sampler objective: the step sizes only) or "inflation" (SKSD: the initial proposal's inflation only).
LEARN = (None, "steps", "inflation")


class PosteriorNoise(NamedTuple):
    """Every random number the posterior of B rows x C samples needs."""

    initial: Tensor  # [B, C, E] standard normal: the encoder draw
    chain: ChainNoise | None  # HMC variants: momenta [T, B, C, E] and log-uniforms [T, B, C]
    gumbel: Tensor | None  # importance-resampling variants: standard Gumbel [B, C, C]

    @classmethod
    def draw(
        cls,
        model: HHVAEM,
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
        chain = ChainNoise.draw(model.config.hmc_steps, initial, generator) if model.config.uses_hmc else None
        gumbel = None
        if model.config.importance_samples:
            gumbel = -torch.log(-torch.log(torch.rand((rows, samples, samples), **kw)))
        return cls(initial, chain, gumbel)


class Posterior(NamedTuple):
    eps: Tensor  # [B, C, E] posterior samples
    mu: Tensor  # [B, E] the encoder's mean
    sigma: Tensor  # [B, E] and scale
    state: HMCState | None  # the chains' final state (HMC variants): eps, log p* and its gradient
    info: ChainInfo | None


def sample_posterior(
    model: HHVAEM,
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
    mu, sigma = model.dependency.encode(obs)
    if learn:
        mu, sigma = mu.detach(), sigma.detach()
    if model.config.uses_hmc and use_sampler:
        inflation = model.inflation if learn != "steps" else model.inflation.detach()
        step_sizes = model.step_sizes if learn != "inflation" else model.step_sizes.detach()
        eps0 = encoder_draw(mu, sigma * inflation, noise.initial)
        with frozen(model.generative_parameters()) if learn else nullcontext():
            run = run_flat_chain if flat else run_chain
            state, info = run(model, eps0, obs, sigma, noise.chain, step_sizes)
        return Posterior(state.position, mu, sigma, state, info)
    eps = encoder_draw(mu, sigma, noise.initial)
    if model.config.importance_samples and use_sampler:
        # Sampling-importance-resampling by the Gumbel-max trick: draw c of row b takes proposal argmax_j.
        log_w = importance_log_weights(model, eps, mu, sigma, obs)
        idx = torch.argmax(log_w.unsqueeze(-2) + noise.gumbel, dim=-1)
        eps = torch.gather(eps, -2, idx.unsqueeze(-1).expand_as(eps))
    return Posterior(eps, mu, sigma, None, None)


def encoder_draw(mu: Tensor, scale: Tensor, noise: Tensor) -> Tensor:
    """mu [B, E] + scale [B, E] * noise [B, C, E]: C reparameterised draws per row."""
    return mu.unsqueeze(-2) + scale.unsqueeze(-2) * noise


def inverse_mass(model: HHVAEM, sigma: Tensor) -> Tensor:
    """Diagonal inverse mass [B, 1, E] from the encoder scale sigma [B, E] (see ModelConfig.mass)."""
    if model.config.mass == "encoder":
        return (sigma.detach() ** 2).unsqueeze(-2)
    return torch.ones_like(sigma).unsqueeze(-2)


def run_chain(
    model: HHVAEM, eps0: Tensor, obs: Observed, sigma: Tensor, noise: ChainNoise, step_sizes: Tensor
) -> tuple[HMCState, ChainInfo]:
    """T HMC transitions on log p*(eps | observed) from eps0 [B, C, E] (compiled transitions when set up)."""
    obs_c = obs.unsqueeze(-2)
    target = model.log_joint_and_grad(obs_c)
    return hmc_chain(
        init_state(eps0, target),
        target,
        step_sizes,
        model.config.leapfrog_steps,
        inverse_mass(model, sigma),
        noise,
        transition=model.transition_for(obs_c),
    )


def run_flat_chain(
    model: HHVAEM, eps0: Tensor, obs: Observed, sigma: Tensor, noise: ChainNoise, step_sizes: Tensor
) -> tuple[HMCState, ChainInfo]:
    """`run_chain` with rows and chains folded into one axis: every tensor in the chain is [B * C, ...]."""
    b, c, e = eps0.shape
    per_chain = Observed(*(None if t is None else _repeat(t, c) for t in obs))
    target = model.log_joint_and_grad(per_chain)
    flat_noise = ChainNoise(noise.momentum.flatten(1, 2), noise.log_u.flatten(1, 2))
    state, info = hmc_chain(
        init_state(eps0.reshape(-1, e), target),
        target,
        step_sizes,
        model.config.leapfrog_steps,
        inverse_mass(model, _repeat(sigma, c)).squeeze(-2),
        flat_noise,
        transition=model.transition_for(per_chain),
    )
    return (
        HMCState(state.position.reshape(b, c, e), state.logp.reshape(b, c), state.grad.reshape(b, c, e)),
        ChainInfo(*(t.reshape(b, c) for t in info)),
    )


def _repeat(t: Tensor, c: int) -> Tensor:
    """[B, K] -> [B * C, K]: each row's values once per chain."""
    return t.unsqueeze(1).expand(-1, c, -1).reshape(-1, t.shape[-1])


def importance_log_weights(
    model: HHVAEM, eps: Tensor, mu: Tensor, sigma: Tensor, obs: Observed, hidden: Observed | None = None
):
    """log p(z_O, y_O, eps) - log q(eps | .) [B, C] for encoder draws eps [B, C, E]; with `hidden`, also
    (weights, log p(hidden | eps) [B, C])."""
    dep = model.dependency
    fwd = dep.forward_pass(eps, obs.unsqueeze(-2), hidden=None if hidden is None else hidden.unsqueeze(-2))
    log_q = Gaussian(mu.unsqueeze(-2), sigma.unsqueeze(-2)).log_prob(eps).sum(-1)
    log_w = fwd.log_lik + dep.log_prior(eps) - log_q
    return log_w if hidden is None else (log_w, fwd.hidden_log_lik)


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
