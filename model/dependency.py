"""Stage 2: the hierarchical dependency VAE over one unit per feature, and the target y.

A feature's unit is its marginal code z_d (a continuous feature: the 1-d Gaussian code of its marginal VAE) or,
for a discrete feature, the feature itself (its category, with its categorical or Bernoulli likelihood read
directly by the decoder; `ModelConfig.discrete_units`). A 1-d code squeezes a many-level category through one
Gaussian: the marginal VAE's KL term collapses rare levels and neighbouring levels overlap (docs/accuracy.md).

Generative, top-down and reparameterised (inference runs on eps ~ N(0, I)):
  h_L = eps_L,  h_l = f_mu_l(h_{l+1}) + f_sigma_l(h_{l+1}) * eps_l,
  p(u | h_1) one likelihood per unit (Gaussian for codes), p(y | x_hat, m, h_1) from the predictor, where x_hat
  holds the observed units (categories one-hot) and, in the holes, the decoder's mean code (zero for a
  category); the mask tells the predictor which is which.
Encoder, bottom-up: r_0 = (u * m, m, y * m_y, m_y), r_l = f_r_l(r_{l-1}), q(eps_l | r_l) Gaussian, independent
across layers given the data.

`log_joint_and_grad` evaluates log p*(eps) = log p(u_O | h_1) + log p(y_O | .) + log N(eps; 0, I) and its gradient
in one pass, the gradient written out by hand.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hhvaem.model.likelihoods import LOG_2PI, ColumnLikelihoods, likelihood_class, positive_scale
from hhvaem.model.nets import MLP
from hhvaem.model.schema import Column


class Observed(NamedTuple):
    """What is known about a batch of rows, broadcastable against eps [..., E]; `z` holds the units.

    `y` and `my` are None when no row observes a target (every impute, predict and next-features request):
    the predictor then has no term in log p* and is not evaluated inside the sampler at all.
    """

    z: Tensor  # [..., D] units: marginal codes or categories (0 where missing)
    m: Tensor  # [..., D] 1.0 where observed
    y: Tensor | None  # [..., P] normalised targets (0 where missing)
    my: Tensor | None  # [..., P] 1.0 where observed

    def unsqueeze(self, dim: int) -> Observed:
        return Observed(*(None if t is None else t.unsqueeze(dim) for t in self))


class Forward(NamedTuple):
    log_lik: Tensor  # [...] log p(z_O | h_1) + log p(y_O | .)
    h1: Tensor
    y_raw: Tensor | None  # [..., P, width] (None when no target is observed and none is hidden)
    hidden_log_lik: Tensor | None = None  # [...] log p(z_H | h_1) + log p(y_H | .) of the `hidden` entries


class DependencyVAE(nn.Module):
    def __init__(
        self,
        units: tuple[Column, ...],
        targets: tuple[Column, ...],
        latent_dims: tuple[int, ...],
        hidden: int,
        activation: str = "silu",
    ):
        super().__init__()
        self.units = units
        self.n_units = len(units)
        self.unit_likelihood = ColumnLikelihoods(units)
        self.register_buffer("coded", torch.tensor([not u.is_discrete for u in units], dtype=torch.float32))
        self.latent_dims = tuple(latent_dims)
        self.latent_size = sum(self.latent_dims)
        self.targets = targets
        self.target_likelihood = ColumnLikelihoods(targets)
        d1 = self.latent_dims[0]
        self.target_inputs = [(likelihood_class(c), c.n_categories) for c in targets]
        self.y_width = sum(fam.input_width or k for fam, k in self.target_inputs) + len(targets)
        self.x_width = self.n_units * self.unit_likelihood.input_width  # the units as networks read them
        enc_in = self.x_width + self.n_units + self.y_width
        self.trunks = nn.ModuleList(
            MLP([enc_in if i == 0 else hidden, hidden, hidden], activation) for i in range(len(self.latent_dims))
        )
        self.heads = nn.ModuleList(nn.Linear(hidden, 2 * d) for d in self.latent_dims)
        self.priors = nn.ModuleList(
            MLP([self.latent_dims[i + 1], hidden, 2 * self.latent_dims[i]], activation)
            for i in range(len(self.latent_dims) - 1)
        )
        self.decoder = MLP([d1, hidden, hidden, self.n_units * self.unit_likelihood.width], activation)
        width = len(targets) * self.target_likelihood.width
        self.predictor = MLP([self.x_width + self.n_units + d1, hidden, hidden, width], activation)

    # ---- encoder ------------------------------------------------------------------------
    def unit_input(self, z: Tensor, m: Tensor) -> Tensor:
        """[..., D] units and their mask -> [..., x_width]: codes as they are, categories one-hot, 0 if unseen."""
        return (self.unit_likelihood.as_input(z) * m.unsqueeze(-1)).flatten(-2)

    def target_input(self, y: Tensor, my: Tensor) -> Tensor:
        """The observed targets as the encoder reads them (each as its family enters an encoder), 0 if unseen."""
        parts = [fam.as_input(y[..., j], k) * my[..., j : j + 1] for j, (fam, k) in enumerate(self.target_inputs)]
        return torch.cat(parts, -1)

    def encode(self, obs: Observed) -> tuple[Tensor, Tensor]:
        """Mean and scale of q(eps | u_O, y_O), each [..., E]."""
        if obs.y is None:  # built from the mask, so the batch axis stays symbolic in the exported graph
            ys = (obs.m[..., :1] * 0.0).expand(*obs.m.shape[:-1], self.y_width)
        else:
            ys = torch.cat([self.target_input(obs.y, obs.my), obs.my], -1)
        r = torch.cat([self.unit_input(obs.z, obs.m), obs.m, ys], -1)
        mus, sigmas = [], []
        for trunk, head in zip(self.trunks, self.heads):
            r = trunk.activation(trunk(r))[0]
            mu, raw = head(r).chunk(2, -1)
            mus.append(mu)
            sigmas.append(positive_scale(raw, 1e-4)[0])
        return torch.cat(mus, -1), torch.cat(sigmas, -1)

    # ---- generative ---------------------------------------------------------------------
    def split(self, eps: Tensor) -> list[Tensor]:
        return list(eps.split(self.latent_dims, -1))

    def top_down(self, eps: Tensor):
        """h_1 and what the backward pass needs: per layer (slopes, raw scale, scale, eps_l)."""
        parts = self.split(eps)
        h = parts[-1]
        cache = []
        for level in range(len(self.latent_dims) - 2, -1, -1):
            out, slopes = self.priors[level].forward_cached(h)
            mu, raw = out.chunk(2, -1)
            sigma, sigma_slope = positive_scale(raw)
            cache.append((level, slopes, sigma_slope, sigma, parts[level]))
            h = mu + sigma * parts[level]
        return h, cache

    def unit_params(self, dec_out: Tensor) -> Tensor:
        """The decoder output [..., D * W] as raw unit parameters [..., D, W] (a code's (loc, raw scale) first)."""
        return dec_out.unflatten(-1, (self.n_units, self.unit_likelihood.width))

    def decode(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(h_1, raw parameters of p(u | h_1) [..., D, W])."""
        h1, _ = self.top_down(eps)
        return h1, self.unit_params(self.decoder(h1))

    def target_params(self, pred_out: Tensor) -> Tensor:
        """Predictor output -> [..., P, width] (a plain unsqueeze for the usual single target)."""
        if len(self.targets) == 1:
            return pred_out.unsqueeze(-2)
        return pred_out.unflatten(-1, (len(self.targets), self.target_likelihood.width))

    def predictor_input(self, h1: Tensor, raw: Tensor, obs: Observed) -> Tensor:
        """[x_hat, m, h_1]: the observed units, the decoder's mean code in the holes of coded units."""
        holes = (1.0 - obs.m) * self.coded
        x_hat = self.unit_input(obs.z, obs.m) + self.unit_input(raw[..., 0], holes)
        return torch.cat([x_hat, obs.m.expand_as(raw[..., 0]), h1], -1)

    def predictor_pass(self, h1: Tensor, raw: Tensor, obs: Observed) -> tuple[Tensor, list[Tensor]]:
        """p(y | x_hat, m, h_1): raw parameters [..., P, width] and the slopes the backward pass needs."""
        pred_out, pred_slopes = self.predictor.forward_cached(self.predictor_input(h1, raw, obs))
        return self.target_params(pred_out), pred_slopes

    def predict_target(self, eps: Tensor, obs: Observed) -> Tensor:
        """Raw parameters of p(y | eps, observed features) [..., P, width]."""
        h1, raw = self.decode(eps)
        return self.predictor_pass(h1, raw, obs)[0]

    def forward_pass(self, eps: Tensor, obs: Observed, caches: bool = False, hidden: Observed | None = None):
        """log p(u_O, y_O | eps) (and, given `hidden` entries' true units and targets with their masks, their
        predictive log-likelihood log p(u_H, y_H | eps, observed), from the same pass)."""
        h1, td_cache = self.top_down(eps)
        dec_out, dec_slopes = self.decoder.forward_cached(h1)
        raw = self.unit_params(dec_out)
        lp_u, u_score = self.unit_likelihood.log_prob_and_score(raw, obs.z)
        log_lik = (lp_u * obs.m).sum(-1)
        y_raw = pred_slopes = y_score = None
        if obs.y is not None or (hidden is not None and hidden.y is not None):
            y_raw, pred_slopes = self.predictor_pass(h1, raw, obs)
        if obs.y is not None:
            lp_y_each, y_score = self.target_likelihood.log_prob_and_score(y_raw, obs.y)
            log_lik = log_lik + (lp_y_each * obs.my).sum(-1)
        hidden_log_lik = None
        if hidden is not None:
            hidden_log_lik = (self.unit_likelihood.log_prob(raw, hidden.z) * hidden.m).sum(-1)
            if hidden.y is not None:
                lp_y = self.target_likelihood.log_prob(y_raw, hidden.y)
                hidden_log_lik = hidden_log_lik + (lp_y * hidden.my).sum(-1)
        fwd = Forward(log_lik, h1, y_raw, hidden_log_lik)
        if not caches:
            return fwd
        return fwd, (td_cache, u_score, dec_slopes, pred_slopes, y_score)

    def log_joint_and_grad(self, eps: Tensor, obs: Observed) -> tuple[Tensor, Tensor]:
        """log p*(eps) [...] and d log p*/d eps [..., E]."""
        fwd, (td_cache, u_score, dec_slopes, pred_slopes, y_score) = self.forward_pass(eps, obs, caches=True)
        logp = fwd.log_lik + self.log_prior(eps)
        g_raw = u_score * obs.m.unsqueeze(-1)  # d log p(u_O | h_1) / d raw unit parameters
        g_h = None
        if obs.y is not None:
            # predictor -> (x_hat, m, h1)
            g_pred = y_score * obs.my.unsqueeze(-1)
            g_pred = g_pred.squeeze(-2) if len(self.targets) == 1 else g_pred.flatten(-2)
            g_in = self.predictor.vjp(pred_slopes, g_pred)
            d, w, d1 = self.n_units, self.unit_likelihood.input_width, self.latent_dims[0]
            g_h = g_in[..., self.x_width + d : self.x_width + d + d1]
            # x_hat reads the mean code (raw[..., 0]) in the holes of coded units
            g_hole = g_in[..., : self.x_width].unflatten(-1, (d, w))[..., 0] * (1.0 - obs.m) * self.coded
            g_raw = g_raw + F.pad(g_hole.unsqueeze(-1), (0, self.unit_likelihood.width - 1))
        # decoder -> h1
        g_dec_h = self.decoder.vjp(dec_slopes, g_raw.flatten(-2))
        g_h = g_dec_h if g_h is None else g_h + g_dec_h
        # top-down hierarchy, from h_1 upwards
        grads = []
        for level, slopes, sigma_slope, sigma, eps_l in reversed(td_cache):
            grads.append(g_h * sigma)
            g_out = torch.cat([g_h, g_h * eps_l * sigma_slope], -1)
            g_h = self.priors[level].vjp(slopes, g_out)
        grads.append(g_h)
        return logp, torch.cat(grads, -1) - eps

    def log_prior(self, eps: Tensor) -> Tensor:
        return -0.5 * (eps * eps).sum(-1) - 0.5 * self.latent_size * LOG_2PI
