"""HH-VAEM and its variants on a small mixed table."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hhvaem.model.dependency import DependencyVAE, Observed
from hhvaem.model.hhvaem import HHVAEM, VARIANTS, ModelConfig
from hhvaem.model.likelihoods import MIN_SCALE, bounded_logits
from hhvaem.model.schema import Column, Schema

DT = torch.float64
N_FEATURES = 5

SCHEMA = Schema(
    features=(
        Column("r", "real"),
        Column("p", "positive"),
        Column("b", "binary", categories=("no", "yes")),
        Column("c", "categorical", categories=("a", "b", "c")),
        Column("k", "count"),
    ),
    targets=(Column("t", "real"), Column("tc", "categorical", categories=("u", "v", "w"))),
)


def make_data(seed: int, n: int, p_obs: float = 0.7):
    g = torch.Generator().manual_seed(seed)
    x = torch.stack(
        [
            torch.randn(n, generator=g, dtype=DT),
            torch.randn(n, generator=g, dtype=DT),
            torch.randint(0, 2, (n,), generator=g).to(DT),
            torch.randint(0, 3, (n,), generator=g).to(DT),
            torch.poisson(torch.full((n,), 2.0, dtype=DT), generator=g),
        ],
        -1,
    )
    y = torch.stack([torch.randn(n, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g).to(DT)], -1)
    mx = (torch.rand(n, N_FEATURES, generator=g) < p_obs).to(DT)
    my = (torch.rand(n, 2, generator=g) < p_obs).to(DT)
    # always include a row with nothing observed and one with everything observed
    mx[0], my[0], mx[1], my[1] = 0.0, 0.0, 1.0, 1.0
    return x, mx, y, my


def make_model(variant: str, seed: int = 0, latent_dims=None, **kw) -> HHVAEM:
    hier = VARIANTS[variant][0]
    if latent_dims is None:
        latent_dims = (3, 2) if hier else (3,)
    cfg = ModelConfig(
        variant=variant,
        latent_dims=latent_dims,
        hidden=16,
        marginal_hidden=8,
        hmc_steps=3,
        leapfrog_steps=3,
        importance_samples=VARIANTS[variant][2],
        **kw,
    )
    torch.manual_seed(seed)
    return HHVAEM(SCHEMA, cfg).to(DT)


def observed(model: HHVAEM, seed: int = 0, n: int = 8) -> Observed:
    return model.observed(*make_data(seed, n))


# ---------------------------------------------------------------- configuration


def test_config_rejects_unknown_variant_and_mass():
    with pytest.raises(ValueError, match="hhvaem2"):
        ModelConfig(variant="hhvaem2")
    with pytest.raises(ValueError, match="mass"):
        ModelConfig(mass="full")
    for v in VARIANTS:
        assert ModelConfig(variant=v).uses_hmc == VARIANTS[v][1]


def test_model_rejects_schema_without_targets():
    with pytest.raises(ValueError, match="target"):
        HHVAEM(Schema(features=SCHEMA.features), ModelConfig())


def test_for_table_follows_the_variant():
    assert ModelConfig.for_table("hhvaem", 5, 100).latent_dims == (4, 2)
    assert ModelConfig.for_table("vaem", 5, 100).latent_dims == (4,)
    assert ModelConfig.for_table("hmcvaem", 20, 100).latent_dims == (10,)
    assert ModelConfig.for_table("miwaem", 20, 100).importance_samples == VARIANTS["miwaem"][2]
    with pytest.raises(ValueError):
        ModelConfig.for_table("nope", 5, 100)


# ---------------------------------------------------------------- log p*(eps) and its hand-written gradient


def reference_log_joint(dep: DependencyVAE, eps: torch.Tensor, obs: Observed) -> torch.Tensor:
    """log p*(eps) from torch.distributions, following the generative story in dependency.py (<= 2 layers)."""
    d0 = dep.latent_dims[0]
    if len(dep.latent_dims) == 1:
        h1 = eps
    else:
        out = dep.priors[0](eps[..., d0:])
        mu, raw = out.chunk(2, -1)
        h1 = mu + (F.softplus(raw) + MIN_SCALE) * eps[..., :d0]
    # The documented layout: codes [loc (n) | raw scale (n)], then the discrete units (binary ones as 2-category
    # categoricals) as one block [n x 3 logits], the binary unit's third category switched off; the units
    # (obs.z, obs.m) in that block order.
    groups: dict[str, list] = {}
    for u in dep.units:
        groups.setdefault("discrete" if u.is_discrete else "code", []).append(u)
    out = dep.decoder(h1)
    lp, x_hat, pos, unit = 0.0, [], 0, 0
    for kind, units in groups.items():
        n = len(units)
        z, m = obs.z[..., unit : unit + n], obs.m[..., unit : unit + n]
        if kind == "code":  # Gaussian; x_hat holds the mean code in a hole
            loc, raw_scale = out[..., pos : pos + n], out[..., pos + n : pos + 2 * n]
            cap = dep.blocks.scale_max  # the codes' scale: softplus + floor, or floor + (cap - floor) * sigmoid
            scale = (
                F.softplus(raw_scale) + MIN_SCALE
                if cap is None
                else MIN_SCALE + (cap - MIN_SCALE) * torch.sigmoid(raw_scale)
            )
            lp = lp + (torch.distributions.Normal(loc, scale).log_prob(z) * m).sum(-1)
            x_hat.append(torch.where(m > 0, z, loc))
            pos += 2 * n
        else:
            logits = bounded_logits(out[..., pos : pos + 3 * n].unflatten(-1, (n, 3)))[0]
            real = torch.tensor([[1.0] * u.n_categories + [0.0] * (3 - u.n_categories) for u in units], dtype=DT)
            logits = torch.where(real > 0, logits, torch.tensor(-1e30, dtype=DT))
            lp = lp + (torch.distributions.Categorical(logits=logits).log_prob(z.long()) * m).sum(-1)
            x_hat.append((F.one_hot(z.long(), 3).to(z.dtype) * m.unsqueeze(-1)).flatten(-2).expand(*out.shape[:-1], -1))
            pos += 3 * n
        unit += n
    assert pos == out.shape[-1]
    x_hat = torch.cat(x_hat, -1)
    pred = dep.predictor(torch.cat([x_hat, obs.m.expand(*out.shape[:-1], -1), h1], -1)).unflatten(-1, (2, -1))
    lp_t = torch.distributions.Normal(pred[..., 0, 0], F.softplus(pred[..., 0, 1]) + MIN_SCALE).log_prob(obs.y[..., 0])
    lp_c = torch.distributions.Categorical(logits=bounded_logits(pred[..., 1, :3])[0]).log_prob(obs.y[..., 1].long())
    lp = lp + lp_t * obs.my[..., 0] + lp_c * obs.my[..., 1]
    return lp + torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum(-1)


@pytest.mark.parametrize("cap", [0.5, None])
@pytest.mark.parametrize("units", ["marginal", "direct"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_log_joint_and_grad_match_reference_and_autograd(variant, units, cap):
    model = make_model(variant, discrete_units=units, code_scale_max=cap)
    obs = observed(model, seed=1, n=6).unsqueeze(-2)
    e = model.latent_size
    eps = (1.5 * torch.randn(6, 4, e, generator=torch.Generator().manual_seed(2), dtype=DT)).requires_grad_(True)
    logp, grad = model.dependency.log_joint_and_grad(eps, obs)
    assert logp.shape == (6, 4) and grad.shape == (6, 4, e)
    torch.testing.assert_close(logp, reference_log_joint(model.dependency, eps, obs), rtol=1e-10, atol=1e-10)
    (auto,) = torch.autograd.grad(logp.sum(), eps)
    torch.testing.assert_close(grad, auto, rtol=1e-8, atol=1e-8)
    # the same function through the model's closure
    lp2, g2 = model.log_joint_and_grad(obs)(eps)
    torch.testing.assert_close(lp2, logp)
    torch.testing.assert_close(g2, grad)


def test_units_are_grouped_per_family_and_back():
    model = make_model("hhvaem", discrete_units="direct")
    x, mx, y, my = make_data(11, 6)
    obs = model.observed(x, mx, y, my)
    # feature order r, p, b, c, k -> block order: codes (r, p, k), then the discrete units (b, c)
    order = [0, 1, 4, 2, 3]
    torch.testing.assert_close(obs.m, mx[:, order])
    torch.testing.assert_close(obs.z[:, 3:], (x * mx)[:, [2, 3]])  # discrete units are the features themselves
    mu, _ = model.marginal.encode(x)
    torch.testing.assert_close(obs.z[:, :3], (mu * mx)[:, [0, 1, 4]])
    torch.testing.assert_close(model.ungrouped(obs.m), mx)
    assert not model.dependency.blocks.identity
    assert make_model("hhvaem", discrete_units="marginal").dependency.blocks.identity


def test_log_joint_with_nothing_observed_is_the_prior():
    model = make_model("hhvaem")
    x, mx, y, my = make_data(3, 4)
    obs = model.observed(x, torch.zeros_like(mx), y, torch.zeros_like(my)).unsqueeze(-2)
    eps = torch.randn(4, 3, model.latent_size, dtype=DT)
    logp, grad = model.dependency.log_joint_and_grad(eps, obs)
    torch.testing.assert_close(logp, model.dependency.log_prior(eps))
    torch.testing.assert_close(grad, -eps)


def test_unobserved_values_do_not_matter():
    model = make_model("hhvaem")
    x, mx, y, my = make_data(4, 6)
    eps = torch.randn(6, 2, model.latent_size, dtype=DT)
    a = model.dependency.log_joint_and_grad(eps, model.observed(x, mx, y, my).unsqueeze(-2))
    x2 = torch.where(mx > 0, x, x + 7.0)
    y2 = torch.where(my > 0, y, (y + 1) % 3)
    b = model.dependency.log_joint_and_grad(eps, model.observed(x2, mx, y2, my).unsqueeze(-2))
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize("latent_dims", [(3, 2, 2), (2, 2, 2)])
def test_log_joint_grad_three_layers(latent_dims):
    model = make_model("hhvaem", latent_dims=latent_dims)
    obs = observed(model, seed=5, n=4).unsqueeze(-2)
    eps = torch.randn(4, 3, model.latent_size, dtype=DT, requires_grad=True)
    logp, grad = model.dependency.log_joint_and_grad(eps, obs)
    (auto,) = torch.autograd.grad(logp.sum(), eps)
    torch.testing.assert_close(grad, auto, rtol=1e-8, atol=1e-8)


# ---------------------------------------------------------------- elbo, posterior


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_elbo_is_finite_per_row_and_trainable(variant):
    model = make_model(variant)
    obs = observed(model, seed=6, n=8)
    elbo = model.elbo(obs, torch.Generator().manual_seed(0))
    assert elbo.shape == (8,)
    assert torch.isfinite(elbo).all()
    (-elbo.mean()).backward()
    grads = [p.grad for p in model.encoder_parameters() + model.generative_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("units", ["marginal", "direct"])
def test_posterior_shapes(variant, units):
    model = make_model(variant, discrete_units=units)
    obs = observed(model, seed=7, n=5)
    eps, info = model.posterior(obs, 6, torch.Generator().manual_seed(0))
    assert eps.shape == (5, 6, model.latent_size)
    assert torch.isfinite(eps).all()
    if model.config.uses_hmc:
        assert info is not None
        assert info.acceptance_rate.shape == (5, 6)
        assert ((info.acceptance_rate >= 0) & (info.acceptance_rate <= 1)).all()
    else:
        assert info is None
    # predictive heads take the posterior samples
    raw_y = model.target_params(eps, obs.unsqueeze(-2))
    assert raw_y.shape == (5, 6, 2, model.dependency.target_likelihood.width)
    _, dists = model.dependency.decode(eps)
    noise = torch.randn(5, 6, N_FEATURES, generator=torch.Generator().manual_seed(1), dtype=DT)
    natural = model.feature_natural(dists, model.unit_draws(dists, noise))
    assert natural.shape[:3] == (5, 6, N_FEATURES) and torch.isfinite(natural).all()
    probs = natural[..., 2:4, :]  # the binary and categorical features' probabilities, feature order
    torch.testing.assert_close(probs[..., 0, :2].sum(-1), torch.ones(5, 6, dtype=DT))
    torch.testing.assert_close(probs[..., 1, :3].sum(-1), torch.ones(5, 6, dtype=DT))


# ---------------------------------------------------------------- exact checks with a 1-d latent (quadrature)


GRID = torch.linspace(-9.0, 9.0, 6001, dtype=DT)


def sharp_model(variant: str) -> HHVAEM:
    """A 1-d latent model whose codes depend strongly on eps, so the posterior is far from the prior and q."""
    model = make_model(variant, seed=3, latent_dims=(1,), discrete_units="marginal")  # every unit a code
    with torch.no_grad():
        last = model.dependency.decoder.layers[-1]
        last.weight.mul_(5.0)
        last.bias[N_FEATURES:] = -1.5  # code scale about 0.2 (all units are codes: [loc (D) | raw scale (D)])
    return model


def observed_rows(model: HHVAEM) -> Observed:
    """Three rows with observations (make_data's row 0 has none: its posterior is the prior)."""
    return Observed(*(t[1:] for t in observed(model, seed=9, n=4)))


def quadrature(model: HHVAEM, obs: Observed):
    """log p(obs), posterior mean and sd per row by quadrature over the 1-d eps."""
    with torch.no_grad():
        eps = GRID.view(1, -1, 1).expand(obs.z.shape[0], -1, 1)
        log_lik = model.dependency.forward_pass(eps, obs.unsqueeze(-2)).log_lik  # [B, G]
    log_joint = log_lik + torch.distributions.Normal(0.0, 1.0).log_prob(GRID)
    dx = GRID[1] - GRID[0]
    log_evidence = torch.logsumexp(log_joint, -1) + torch.log(dx)
    w = torch.softmax(log_joint, -1)
    mean = (w * GRID).sum(-1)
    sd = torch.sqrt((w * (GRID - mean.unsqueeze(-1)) ** 2).sum(-1))
    return log_lik, log_evidence, mean, sd


def test_elbo_and_iwae_bound_against_quadrature():
    model = sharp_model("vaem")
    obs = observed(model, seed=8, n=4)
    log_lik, log_evidence, _, _ = quadrature(model, obs)
    with torch.no_grad():
        mu, sigma = (t[:, 0] for t in model.dependency.encode(obs))
    assert (sigma > 0.05).all()  # the grid resolves q
    q = torch.distributions.Normal(mu.unsqueeze(-1), sigma.unsqueeze(-1)).log_prob(GRID).exp()
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 1.0))
    exact_elbo = (q * log_lik).sum(-1) * (GRID[1] - GRID[0]) - kl
    assert torch.all(exact_elbo < log_evidence)

    reps = 3000
    big = Observed(*(t.repeat(reps, 1) for t in obs))
    with torch.no_grad():
        elbo = model.elbo(big, torch.Generator().manual_seed(0)).view(reps, 4)
    se = elbo.std(0) / math.sqrt(reps)
    assert torch.all((elbo.mean(0) - exact_elbo).abs() < 5 * se + 1e-6), (elbo.mean(0), exact_elbo)

    # the importance-weighted bound: between the ELBO and log p for few samples, tight for many
    model.config.importance_samples = 10
    with torch.no_grad():
        iwae10 = model.elbo(Observed(*(t.repeat(500, 1) for t in obs)), torch.Generator().manual_seed(1))
    iwae10 = iwae10.view(500, 4).mean(0)
    assert torch.all(iwae10 > exact_elbo) and torch.all(iwae10 < log_evidence), (exact_elbo, iwae10, log_evidence)
    model.config.importance_samples = 20000
    with torch.no_grad():
        iwae = model.elbo(obs, torch.Generator().manual_seed(2))
    torch.testing.assert_close(iwae, log_evidence, rtol=0, atol=0.03)


def test_vaem_posterior_is_the_encoder():
    model = sharp_model("vaem")
    obs = observed_rows(model)
    eps, _ = model.posterior(obs, 4000, torch.Generator().manual_seed(0))
    with torch.no_grad():
        mu, sigma = model.dependency.encode(obs)
    assert torch.all((eps.mean(1) - mu).abs() < 5 * sigma / math.sqrt(4000))
    torch.testing.assert_close(eps.std(1), sigma, rtol=0.05, atol=0)


def test_miwaem_posterior_approaches_the_exact_posterior():
    model = sharp_model("miwaem")
    model.config.importance_samples = 1  # posterior() resamples n_samples proposals whenever this is nonzero
    obs = observed_rows(model)
    _, _, mean, sd = quadrature(model, obs)
    with torch.no_grad():
        mu, sigma = model.dependency.encode(obs)
    assert torch.all(sd < 0.7 * sigma[:, 0])  # the posterior really differs from the proposal
    eps, _ = model.posterior(obs, 4000, torch.Generator().manual_seed(0))
    assert torch.all((eps[..., 0].mean(1) - mean).abs() < 0.1 * sd + 6 * sd / math.sqrt(4000)), (eps.mean(1), mean)
    torch.testing.assert_close(eps[..., 0].std(1), sd, rtol=0.1, atol=0)


def test_hmc_posterior_approaches_the_exact_posterior():
    """HMC through the model (encoder start, encoder mass matrix) samples the quadrature posterior.

    The encoder is made much narrower than the posterior, so the step sizes (relative to the encoder
    scale) only fit when the mass matrix is the encoder's, and the chains have to spread out."""
    model = sharp_model("hmcvaem")
    with torch.no_grad():
        model.dependency.heads[0].bias[1] = -3.5  # encoder scale about 0.03
    t_steps = 25
    model.config.hmc_steps, model.config.leapfrog_steps = t_steps, 8
    obs = observed_rows(model)
    _, _, mean, sd = quadrature(model, obs)
    with torch.no_grad():
        mu, sigma = model.dependency.encode(obs)
        assert torch.all(sigma[:, 0] < 0.25 * sd) and torch.all((mu[:, 0] - mean).abs() > 0.05)
        # step sizes in units of the encoder scale (the mass matrix): 0.15-0.35 posterior sds on the narrowest row
        rel = (sd / sigma[:, 0]).min()
        gen = torch.Generator().manual_seed(1)
        steps = rel * (0.15 + 0.2 * torch.rand(t_steps, 1, generator=gen, dtype=DT))
        model.log_step_sizes = torch.nn.Parameter(torch.log(steps))
        model.log_inflation.fill_(math.log(2.0))
    eps, info = model.posterior(obs, 2000, torch.Generator().manual_seed(0))
    assert info.acceptance_rate.mean() > 0.8
    e = eps[..., 0]
    assert torch.all((e.mean(1) - mean).abs() < 6 * sd / math.sqrt(2000)), (e.mean(1), mean)
    torch.testing.assert_close(e.std(1), sd, rtol=0.08, atol=0)


def test_inverse_mass_follows_config():
    sigma = torch.tensor([[0.5, 2.0], [1.0, 0.1]], dtype=DT, requires_grad=True)
    enc = make_model("hhvaem").inverse_mass(sigma)
    assert enc.shape == (2, 1, 2) and not enc.requires_grad
    torch.testing.assert_close(enc[:, 0], sigma.detach() ** 2)
    ident = make_model("hhvaem", mass="identity").inverse_mass(sigma)
    torch.testing.assert_close(ident, torch.ones(2, 1, 2, dtype=DT))


# ---------------------------------------------------------------- learning the sampler's step sizes


def test_learning_step_sizes_raises_the_hmc_objective():
    model = make_model("hhvaem", seed=0)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        model.log_step_sizes.fill_(math.log(1e-3))
        # a dispersed start (inflated encoder) leaves room for the sampler to climb
        model.log_inflation.fill_(math.log(4.0))
    model.log_step_sizes.requires_grad_(True)
    eval_obs = [model.observed(*make_data(100 + s, 64)) for s in range(4)]

    def objective() -> float:
        with torch.no_grad():
            vals = [model.hmc_objective(o, torch.Generator().manual_seed(i))[0].mean() for i, o in enumerate(eval_obs)]
        return float(torch.stack(vals).mean())

    before = objective()
    opt = torch.optim.Adam([model.log_step_sizes], lr=0.3)
    for i in range(30):
        obs = model.observed(*make_data(1000 + i, 64))
        out = model.hmc_objective(obs, torch.Generator().manual_seed(500 + i))
        value, info = out[0], out[-1]  # (sampler objective, [model objective,] info)
        assert value.shape == (64,) and info.acceptance_rate.shape == (64, 1)
        opt.zero_grad()
        (-value.mean()).backward()
        assert torch.isfinite(model.log_step_sizes.grad).all()
        assert all(p.grad is None for n, p in model.named_parameters() if n != "log_step_sizes")
        opt.step()
    after = objective()
    assert model.step_sizes.mean() > 1e-2
    assert after > before + 2.0, (before, after)


def hmc_objective_grads(seed: int = 1):
    model = make_model("hhvaem", seed=seed)
    obs = observed(model, seed=11, n=6)
    sampler_obj, model_obj, info = model.hmc_objective(obs, torch.Generator().manual_seed(0))
    params = [model.log_step_sizes] + model.generative_parameters()
    g_sampler = torch.autograd.grad(sampler_obj.sum(), params, allow_unused=True, retain_graph=True)
    g_model = torch.autograd.grad(model_obj.sum(), params, allow_unused=True)
    return model, sampler_obj, model_obj, info, g_sampler, g_model


def is_zero(g) -> bool:
    return g is None or bool(torch.all(g == 0))


def test_hmc_objective_returns_sampler_and_model_objectives():
    """Sampler objective: log p*(eps_T) through the trajectory, reaching the step sizes.
    Model objective: log p* at the detached eps_T, reaching the generative networks only."""
    model, sampler_obj, model_obj, info, g_sampler, g_model = hmc_objective_grads()
    assert sampler_obj.shape == model_obj.shape == (6,)
    torch.testing.assert_close(sampler_obj, model_obj)  # the same number, differentiated differently
    assert not is_zero(g_sampler[0])
    assert is_zero(g_model[0])
    assert any(not is_zero(g) for g in g_model[1:])
    assert all(p.requires_grad for p in model.generative_parameters())  # unfrozen again afterwards
    assert info.acceptance_rate.shape == (6, 1)


def test_hmc_sampler_objective_does_not_reach_generative_parameters():
    _, _, _, info, g_sampler, _ = hmc_objective_grads()
    assert all(is_zero(g) for g in g_sampler[1:])


def test_config_builds_the_named_variant_however_it_is_constructed():
    """ModelConfig(variant=...) alone gives the variant's sampler settings (not only ModelConfig.for_table)."""
    assert ModelConfig(variant="miwaem").importance_samples == VARIANTS["miwaem"][2] > 0
    assert ModelConfig(variant="hhvaem").importance_samples == 0 and ModelConfig(variant="hhvaem").uses_hmc
    assert ModelConfig(variant="vaem", latent_dims=(10, 5)).latent_dims == (10,)  # one layer without hierarchy
    assert ModelConfig(variant="miwaem", importance_samples=3).importance_samples == 3  # an explicit value wins


def test_a_bounded_code_scale_never_passes_its_ceiling_and_keeps_the_gradient_exact():
    model = make_model("hhvaem", code_scale_max=0.3)
    obs = observed(model, seed=1, n=6).unsqueeze(-2)
    eps = (
        3.0 * torch.randn(6, 4, model.latent_size, generator=torch.Generator().manual_seed(2), dtype=DT)
    ).requires_grad_(True)
    _, dists = model.dependency.decode(eps)
    scales = torch.cat([d.scale.detach().flatten() for d in dists if hasattr(d, "scale")])
    assert scales.numel() > 0 and float(scales.max()) <= 0.3 and float(scales.min()) >= MIN_SCALE
    logp, grad = model.dependency.log_joint_and_grad(eps, obs)
    (auto,) = torch.autograd.grad(logp.sum(), eps)
    torch.testing.assert_close(grad, auto, rtol=1e-8, atol=1e-8)


def test_the_kl_weight_scales_the_analytic_kl_of_the_elbo():
    model = make_model("hvaem")
    obs = observed(model, seed=3, n=8)
    full = model.elbo(obs, torch.Generator().manual_seed(0))
    half = model.elbo(obs, torch.Generator().manual_seed(0), kl_weight=0.5)
    none = model.elbo(obs, torch.Generator().manual_seed(0), kl_weight=0.0)
    mu, sigma = model.dependency.encode(obs)
    kl = (0.5 * (mu * mu + sigma * sigma - 1.0) - torch.log(sigma)).sum(-1)
    torch.testing.assert_close(none - full, kl)
    torch.testing.assert_close(half, full + 0.5 * kl)


def test_the_code_scale_is_bounded_by_default_and_old_checkpoints_stay_unbounded():
    assert ModelConfig().code_scale_max == 0.5
    with pytest.raises(ValueError, match="code_scale_max"):
        ModelConfig(code_scale_max=0.01)
    model = make_model("hhvaem", code_scale_max=None)
    config = model.config.to_dict()
    del config["code_scale_max"]  # a checkpoint written before the bound existed
    again = HHVAEM.from_checkpoint({"config": config, "schema": SCHEMA.to_dict(), "state_dict": model.state_dict()})
    assert again.config.code_scale_max is None and again.dependency.blocks.scale_max is None
