"""HH-VAEM and its variants (VAEM, H-VAEM, HMC-VAEM, MIWAEM) from one code path.

A variant is a configuration: one or several latent layers, Gaussian encoder or
encoder + tuned HMC, optional importance weighting. The sampler's parameters
(step sizes per HMC step and dimension, the encoder-scale inflation) live here so
that one state dict holds everything training tuned.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from hhvaem.model.dependency import DependencyVAE, Observed
from hhvaem.model.hmc import (
    MASSES,
    ChainInfo,
    HMCInfo,
    HMCState,
    LogDensityAndGrad,
    StepNoise,
    Transition,
    build_transition,
    inverse_mass,
)
from hhvaem.model.likelihoods import MIN_SCALE, Gaussian
from hhvaem.model.marginal import MarginalVAEs
from hhvaem.model.posterior import PosteriorNoise, encoder_draw, sample_posterior
from hhvaem.model.schema import Column, Schema
from hhvaem.model.sksd import sksd

log = logging.getLogger(__name__)

VARIANTS = {
    # name: (hierarchical, hmc, importance samples)
    "vaem": (False, False, 0),
    "hvaem": (True, False, 0),
    "hmcvaem": (False, True, 0),
    "hhvaem": (True, True, 0),
    "miwaem": (False, False, 10),
}


@dataclass
class ModelConfig:
    variant: str = "hhvaem"
    latent_dims: tuple[int, ...] = (10, 5)
    hidden: int = 64
    # Width of the dependency VAE's encoder (None: `hidden`). The encoder runs once per request, outside the
    # sampler's loop, so its width costs serving little; the decoder and predictor run at every gradient evaluation.
    encoder_hidden: int | None = None
    marginal_hidden: int = 32
    hmc_steps: int = 10  # T
    leapfrog_steps: int = 5  # L
    # Initial step sizes, uniform per step and dimension. The paper's [0.02, 0.05] is for an identity
    # mass on eps; with the encoder mass (steps relative to sigma_q) the same moves are ~5x larger.
    step_size_range: tuple[float, float] = (0.1, 0.25)
    importance_samples: int | None = None  # None: the variant's (VARIANTS)
    # Weight of the predictive log-likelihood of the entries the training mask hides (0: the ELBO alone).
    predictive_weight: float = 0.0
    sksd_chains: int = 30
    # The HMC mass (model.hmc.MASSES): "encoder", M = 1 / sigma_q^2 per row, is robust when the posterior is much
    # narrower than the prior; "identity" is the paper's.
    mass: str = "encoder"
    default_chains: int = 100
    activation: str = "silu"  # of the dependency VAE's networks (model.nets.ACTIVATIONS)
    # A discrete feature's unit in the dependency VAE: "direct" (its own likelihood, read by the decoder) or
    # "marginal" (its marginal VAE's 1-d Gaussian code, as the paper does for every type). Direct is the
    # default: better categorical imputation and target error on the open tables (docs/accuracy.md).
    discrete_units: str = "direct"
    # Ceiling of the dependency decoder's scale for a marginal code (None: unbounded). Codes are ~N(0, 1) by the
    # marginal VAEs' prior, so 0.5 lets noise explain at most a quarter of a code's variance. Unbounded, the decoder
    # explains the columns whose variation the others do not share as noise, even the ones a row shows it (the
    # ELBO is indifferent between that and encoding them, and noise is reached first), and the latent carries
    # too little to impute from: docs/accuracy.md, "The latent that carries what it is shown".
    code_scale_max: float | None = 0.5

    def __post_init__(self) -> None:
        if self.mass not in MASSES:
            raise ValueError(f"unknown mass {self.mass!r} (expected one of {', '.join(MASSES)})")
        if self.discrete_units not in ("direct", "marginal"):
            raise ValueError(f"unknown discrete_units {self.discrete_units!r} (expected direct or marginal)")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r} (expected one of {', '.join(VARIANTS)})")
        self.latent_dims = tuple(int(d) for d in self.latent_dims)
        if self.importance_samples is None:
            self.importance_samples = VARIANTS[self.variant][2]
        if not VARIANTS[self.variant][0]:
            self.latent_dims = self.latent_dims[:1]  # one latent layer for the non-hierarchical variants
        self.step_size_range = tuple(float(s) for s in self.step_size_range)
        if self.code_scale_max is not None and not self.code_scale_max > MIN_SCALE:
            raise ValueError(
                f"code_scale_max must be above the scale floor {MIN_SCALE} (or null), not {self.code_scale_max}"
            )

    @property
    def uses_hmc(self) -> bool:
        return VARIANTS[self.variant][1]

    @classmethod
    def for_table(cls, variant: str, n_features: int, n_rows: int) -> ModelConfig:
        """Paper defaults, scaled with the table: [10, 5] latents ([4, 2] below 10 features), T=10 (5 small)."""
        small = n_features < 10
        hidden = 64 if n_rows * n_features < 200_000 else 128
        return cls(
            variant=variant, latent_dims=(4, 2) if small else (10, 5), hidden=hidden, hmc_steps=5 if small else 10
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latent_dims"] = list(self.latent_dims)
        d["step_size_range"] = list(self.step_size_range)
        return d


def dependency_units(schema: Schema, config: ModelConfig) -> tuple[Column, ...]:
    """One unit per feature for the dependency VAE: a 1-d Gaussian code, or the (discrete) feature itself."""
    direct = config.discrete_units == "direct"
    return tuple(c if (c.is_discrete and direct) else Column(f"{c.name} (code)", "real") for c in schema.features)


class HHVAEM(nn.Module):
    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__()
        if not schema.targets:
            raise ValueError("the model needs at least one target column")
        self.schema, self.config = schema, config
        self.marginal = MarginalVAEs(schema.features, config.marginal_hidden)
        self.dependency = DependencyVAE(
            dependency_units(schema, config),
            schema.targets,
            config.latent_dims,
            config.hidden,
            config.activation,
            encoder_hidden=config.encoder_hidden,
            code_scale_max=config.code_scale_max,
        )
        e = self.dependency.latent_size
        lo, hi = config.step_size_range
        steps = torch.empty(config.hmc_steps, e).uniform_(lo, hi)
        self.log_step_sizes = nn.Parameter(torch.log(steps))
        self.log_inflation = nn.Parameter(torch.zeros(()))
        # [D] feature order: True where a feature's unit is its marginal code (derived from schema and config)
        coded = torch.tensor([not u.is_discrete for u in self.dependency.units])
        self.register_buffer("coded_features", coded, persistent=False)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> HHVAEM:
        """The model from a loaded checkpoint dict ({"config", "schema", "state_dict"}), in eval mode."""
        config = dict(ckpt["config"])
        config.setdefault("code_scale_max", None)  # checkpoints from before the bound had unbounded code scales
        model = cls(Schema.from_dict(ckpt["schema"]), ModelConfig(**config))
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()

    @property
    def latent_size(self) -> int:
        return self.dependency.latent_size

    @property
    def step_sizes(self) -> Tensor:
        return torch.exp(self.log_step_sizes)

    @property
    def inflation(self) -> Tensor:
        return torch.exp(self.log_inflation)

    def sampler_parameters(self) -> list[nn.Parameter]:
        return [self.log_step_sizes]

    def generative_parameters(self) -> list[nn.Parameter]:
        dep = self.dependency
        return [p for m in (dep.priors, dep.decoder, dep.predictor) for p in m.parameters()]

    def encoder_parameters(self) -> list[nn.Parameter]:
        dep = self.dependency
        return [p for m in (dep.trunks, dep.heads) for p in m.parameters()]

    # ---- observed data --------------------------------------------------------------------
    # The dependency VAE keeps its units in block order (model.dependency.UnitBlocks); these convert.
    def grouped(self, t: Tensor, axis: int = -1) -> Tensor:
        """Feature order -> the dependency VAE's unit order along `axis`."""
        return self.dependency.blocks.grouped(t, axis)

    def ungrouped(self, t: Tensor, axis: int = -1) -> Tensor:
        """The dependency VAE's unit order -> feature order along `axis`."""
        return self.dependency.blocks.ungrouped(t, axis)

    def units(self, x: Tensor, mask: Tensor) -> Tensor:
        """Units of the observed entries in unit order, 0 in the holes: marginal codes (encoder means) for coded
        features, the category itself for the others."""
        mu, _ = self.marginal.encode(x)
        unit = torch.where(self.coded_features, mu, x) if not bool(self.coded_features.all()) else mu
        return self.grouped(unit * mask.to(mu.dtype))

    def observed(self, x: Tensor, mx: Tensor, y: Tensor | None = None, my: Tensor | None = None) -> Observed:
        """What the dependency VAE conditions on (units and mask in unit order); no `y` (None): no row observes a
        target."""
        m = self.grouped(mx.to(x.dtype))
        return Observed(self.units(x, mx), m, y, None if my is None else my.to(y.dtype))

    def compile_sampler(self, enabled: bool = True) -> None:
        """torch.compile one HMC transition (L leapfrog steps + accept/reject) for training speed.

        The compiled function takes tensors and named tuples of tensors only (state, step size, noise,
        inverse mass, observations), so it is traced once per input shape; it fuses the ~600 small ops of a
        transition. Where compilation fails (no compiler, an unsupported op) the transition runs eagerly,
        with the same results.
        """
        self._compiled_transition = torch.compile(self._observed_transition, dynamic=False) if enabled else None

    @property
    def sampler_compiled(self) -> bool:
        """Whether `transition` hands out the compiled transition (training) rather than an eager one."""
        return getattr(self, "_compiled_transition", None) is not None

    def _observed_transition(
        self, state: HMCState, step_size: Tensor, noise: StepNoise, inv_mass: Tensor, obs: Observed
    ) -> tuple[HMCState, HMCInfo]:
        """The transition with the observations as an input rather than a closure (what compilation traces)."""
        return build_transition(self.log_joint_and_grad(obs), self.config.leapfrog_steps)(
            state, step_size, noise, inv_mass
        )

    # ---- the sampler's target: what model.posterior needs of a model (posterior.SamplerTarget) -----------------
    @property
    def uses_hmc(self) -> bool:
        return self.config.uses_hmc

    @property
    def hmc_steps(self) -> int:
        return self.config.hmc_steps

    @property
    def importance_samples(self) -> int:
        return self.config.importance_samples

    def encode(self, obs: Observed) -> tuple[Tensor, Tensor]:
        return self.dependency.encode(obs)

    def log_joint_and_grad(self, obs: Observed) -> LogDensityAndGrad:
        """log p*(eps | observed) and its gradient (the hand-written backward pass) as a function of eps."""
        return lambda eps: self.dependency.log_joint_and_grad(eps, obs)

    def inverse_mass(self, sigma: Tensor) -> Tensor:
        """Diagonal inverse mass [B, 1, E] from the encoder scale sigma [B, E] (ModelConfig.mass)."""
        return inverse_mass(self.config.mass, sigma)

    def transition(self, obs: Observed) -> Transition:
        """The HMC transition on log p*(eps | obs), obs broadcast against eps [..., C, E]: the compiled one when
        `compile_sampler` was called (outside `eager_sampler`), else built eagerly."""
        fn = getattr(self, "_compiled_transition", None)
        if fn is None:
            return build_transition(self.log_joint_and_grad(obs), self.config.leapfrog_steps)

        def transition(state: HMCState, step_size: Tensor, noise: StepNoise, inv_mass: Tensor):
            # Scoped, not global: a compilation failure falls back to eager execution for this call only.
            with torch._dynamo.config.patch(suppress_errors=True):
                return fn(state, step_size, noise, inv_mass, obs)

        return transition

    def log_importance_weights(
        self, eps: Tensor, mu: Tensor, sigma: Tensor, obs: Observed, hidden: Observed | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """log p(z_O, y_O, eps) - log q(eps | .) [B, C] for encoder draws eps [B, C, E]; with `hidden`, also
        (weights, log p(hidden | eps) [B, C])."""
        dep = self.dependency
        fwd = dep.forward_pass(eps, obs.unsqueeze(-2), hidden=None if hidden is None else hidden.unsqueeze(-2))
        log_q = Gaussian(mu.unsqueeze(-2), sigma.unsqueeze(-2)).log_prob(eps).sum(-1)
        log_w = fwd.log_lik + dep.log_prior(eps) - log_q
        return log_w if hidden is None else (log_w, fwd.hidden_log_lik)

    # ---- posterior over eps ---------------------------------------------------------------
    @torch.no_grad()
    def posterior(
        self, obs: Observed, n_samples: int, generator: torch.Generator | None = None, use_sampler: bool = True
    ) -> tuple[Tensor, ChainInfo | None]:
        """eps [B, n, E] from the variant's approximate posterior (`use_sampler=False`: the encoder's), fresh noise."""
        noise = PosteriorNoise.draw(self, obs.z.shape[0], n_samples, generator, like=obs.z)
        post = sample_posterior(self, obs, noise, use_sampler=use_sampler)
        return post.eps, post.info

    @torch.no_grad()
    def held_out_log_lik(
        self,
        obs: Observed,
        hidden: Observed,
        n_samples: int,
        generator: torch.Generator | None = None,
        use_sampler: bool = True,
    ) -> Tensor:
        """log p(z_H, y_H | z_O, y_O) per row [B] of the `hidden` entries (their true codes / targets and masks).

        Estimated from n posterior samples: what early stopping watches, since it is the
        quantity imputation and prediction live on, and it exposes an over-fitted decoder.
        """
        eps, _ = self.posterior(obs, n_samples, generator, use_sampler)
        lp = self.dependency.forward_pass(eps, obs.unsqueeze(-2), hidden=hidden.unsqueeze(-2)).hidden_log_lik
        return torch.logsumexp(lp, -1) - torch.log(torch.tensor(float(n_samples)))

    @contextmanager
    def eager_sampler(self):
        """Run the sampler uncompiled inside the block (other shapes than training's)."""
        compiled = getattr(self, "_compiled_transition", None)
        self._compiled_transition = None
        try:
            yield
        finally:
            self._compiled_transition = compiled

    # ---- losses ----------------------------------------------------------------------------
    def elbo(
        self,
        obs: Observed,
        generator: torch.Generator | None = None,
        hidden: Observed | None = None,
        kl_weight: float = 1.0,
    ) -> Tensor:
        """Per-row ELBO (or the importance-weighted bound for MIWAEM), analytic KL for the Gaussian case.

        With `hidden` (the entries the training mask hid, their true codes and targets), plus
        `config.predictive_weight` times their predictive log-likelihood under the same posterior draw(s):
        what imputation and prediction need, trained in the regime they run in (the target unseen by the encoder).
        """
        k = max(self.config.importance_samples, 1)
        mu, sigma = self.dependency.encode(obs)
        noise = torch.randn((*mu.shape[:-1], k, mu.shape[-1]), generator=generator, dtype=mu.dtype, device=mu.device)
        eps = encoder_draw(mu, sigma, noise)
        weight = self.config.predictive_weight if hidden is not None else 0.0
        if self.config.importance_samples:
            if not weight:
                log_w = self.log_importance_weights(eps, mu, sigma, obs)
                return torch.logsumexp(log_w, -1) - torch.log(torch.tensor(float(k)))
            log_w, hidden_lp = self.log_importance_weights(eps, mu, sigma, obs, hidden)
            bound = torch.logsumexp(log_w, -1) - torch.log(torch.tensor(float(k)))
            # self-normalised importance estimate of log p(hidden | observed)
            return bound + weight * (torch.logsumexp(log_w + hidden_lp, -1) - torch.logsumexp(log_w, -1))
        fwd = self.dependency.forward_pass(eps, obs.unsqueeze(-2), hidden=hidden.unsqueeze(-2) if weight else None)
        kl = (0.5 * (mu * mu + sigma * sigma - 1.0) - torch.log(sigma)).sum(-1)
        out = fwd.log_lik.squeeze(-1) - kl_weight * kl
        return out + weight * fwd.hidden_log_lik.squeeze(-1) if weight else out

    def hmc_objective(
        self, obs: Observed, generator: torch.Generator | None = None, hidden: Observed | None = None
    ) -> tuple[Tensor, Tensor, ChainInfo]:
        """The stage-3 objectives per row, from one chain started at the (inflated) encoder.

        Returns (sampler objective, model objective, info). The sampler objective is
        log p*(eps_T) differentiated through the trajectory: it reaches the step sizes.
        The model objective is log p*_theta at the detached final samples: the Monte Carlo
        EM gradient for decoder, predictor and hierarchy. Letting theta follow the path
        derivative instead rewards sharpening the density wherever the sampler lands,
        which collapsed imputations in our runs.
        """
        noise = PosteriorNoise.draw(self, obs.z.shape[0], 1, generator, like=obs.z)
        post = sample_posterior(self, obs, noise, learn="steps")
        eps_t = post.eps.detach()
        weight = self.config.predictive_weight if hidden is not None else 0.0
        fwd = self.dependency.forward_pass(eps_t, obs.unsqueeze(-2), hidden=hidden.unsqueeze(-2) if weight else None)
        model_logp = fwd.log_lik + self.dependency.log_prior(eps_t)
        if weight:
            model_logp = model_logp + weight * fwd.hidden_log_lik
        return post.state.logp.squeeze(-1), model_logp.squeeze(-1), post.info

    def sksd_objective(self, obs: Observed, generator: torch.Generator | None = None) -> Tensor:
        """SKSD between the sampler's output and the posterior, per row; differentiable in the inflation."""
        noise = PosteriorNoise.draw(self, obs.z.shape[0], self.config.sksd_chains, generator, like=obs.z)
        post = sample_posterior(self, obs, noise, learn="inflation")
        return sksd(post.state.position, post.state.grad)

    # ---- predictive distributions given eps -------------------------------------------------
    def unit_draws(self, dists: list, noise: Tensor) -> Tensor:
        """A draw of every unit [..., D] (unit order) from p(u | h_1), given standard normal noise [..., D]."""
        return self.dependency.blocks.draw(dists, noise)

    def feature_natural(self, dists: list, draws: Tensor) -> Tensor:
        """Natural parameters of every feature [..., D, W] (feature order) given the units' distributions and a
        draw of each unit: coded features decoded from their drawn code, the others from their unit's own."""
        decoded = self.marginal.likelihood.natural(self.marginal.decode(self.ungrouped(draws)))
        if bool(self.dependency.coded.all()):
            return decoded
        direct = self.ungrouped(self.dependency.blocks.natural(dists, decoded.shape[-1]), -2)
        return torch.where(self.coded_features.unsqueeze(-1), decoded, direct)

    def feature_log_prob(
        self, eps: Tensor, x: Tensor, n_codes: int = 32, generator: torch.Generator | None = None
    ) -> Tensor:
        """log p(x_d | eps) [B, K, D] (feature order) for eps [B, K, E] and values x [B, D].

        Coded features: p(x_d | eps) = integral p(x_d | z_d) p(z_d | h_1) dz_d, by importance sampling with the
        marginal encoder q(z_d | x_d) as proposal (n_codes draws per row, shared across the K samples since the
        proposal does not depend on eps). One sampled z per eps would do for point predictions but gives a
        needlessly noisy density when decoders are sharp. Other features: their unit's likelihood directly.
        """
        mu, sigma = self.marginal.encode(x)  # [B, D]
        noise = torch.randn((*mu.shape[:-1], n_codes, mu.shape[-1]), generator=generator, dtype=mu.dtype)
        z = mu.unsqueeze(-2) + sigma.unsqueeze(-2) * noise  # [B, S, D]
        log_px = self.marginal.likelihood.log_prob(self.marginal.decode(z), x.unsqueeze(-2))  # [B, S, D]
        log_q = Gaussian(mu.unsqueeze(-2), sigma.unsqueeze(-2)).log_prob(z)
        _, dists = self.dependency.decode(eps.unsqueeze(-2))  # [B, K, 1, ...] per block
        # every unit's value: codes drawn from the proposal; a discrete unit's own value (the same for all S)
        units = torch.where(self.coded_features, z, x.unsqueeze(-2))  # [B, S, D]
        log_pu = self.ungrouped(self.dependency.blocks.log_prob(dists, self.grouped(units).unsqueeze(1)))
        w = log_pu + (log_px - log_q).unsqueeze(1)  # [B, K, S, D]
        through_code = torch.logsumexp(w, dim=-2) - torch.log(torch.tensor(float(n_codes)))
        return torch.where(self.coded_features, through_code, log_pu[..., 0, :])

    def target_params(self, eps: Tensor, obs: Observed) -> Tensor:
        """Raw likelihood parameters of the targets [..., P, width] (targets taken as unobserved)."""
        return self.dependency.predict_target(eps, obs)
