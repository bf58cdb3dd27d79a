"""Stage 2: the hierarchical dependency VAE over one unit per feature, and the target y.

A feature's unit is its marginal code z_d (a continuous feature: the 1-d Gaussian code of its marginal VAE) or,
for a discrete feature, the feature itself (its category, with a categorical likelihood read directly by the
decoder, binary features as 2-category ones; `ModelConfig.discrete_units`). A 1-d code squeezes a many-level
category through one Gaussian: the marginal VAE's KL term collapses rare levels and neighbouring levels overlap
(docs/accuracy.md).

Generative, top-down and reparameterised (inference runs on eps ~ N(0, I)):
  h_L = eps_L,  h_l = f_mu_l(h_{l+1}) + f_sigma_l(h_{l+1}) * eps_l,
  p(u | h_1) one likelihood per unit (Gaussian for codes), p(y | x_hat, m, h_1) from the predictor, where x_hat
  holds the observed units (categories one-hot) and, in the holes, the decoder's mean code (zero for a
  category); the mask tells the predictor which is which.
Encoder, bottom-up: r_0 = (u * m, m, y * m_y, m_y), r_l = f_r_l(r_{l-1}), q(eps_l | r_l) Gaussian, independent
across layers given the data.

`log_joint_and_grad` evaluates log p*(eps) = log p(u_O | h_1) + log p(y_O | .) + log N(eps; 0, I) and its gradient
in one pass, the gradient written out by hand.

The units are laid out as one contiguous block per likelihood family (`UnitBlocks`: codes and discrete units, in
order of first appearance): the networks read and write them in that block order, so that a gradient evaluation
slices its blocks and gathers nothing. Everything this module takes and gives per unit ([..., D]) is in block
order: `HHVAEM.units` puts features into it, and `UnitBlocks.ungrouped` brings results back to feature order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hhvaem.model.likelihoods import (
    LOG_2PI,
    NO_CATEGORY,
    ColumnLikelihoods,
    likelihood_class,
    positive_scale,
    unit_likelihood_class,
)
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
    log_lik: Tensor  # [...] log p(u_O | h_1) + log p(y_O | .)
    h1: Tensor
    y_raw: Tensor | None  # [..., P, width] (None when no target is observed and none is hidden)
    hidden_log_lik: Tensor | None = None  # [...] log p(u_H | h_1) + log p(y_H | .) of the `hidden` entries


class Block(NamedTuple):
    family: type  # the torch likelihood class (model.likelihoods)
    n: int  # units in the block
    k: int  # categories per unit (the widest column's; 1 for numbers)
    pad: Tensor | None  # raw offsets that switch off a narrower column's missing categories
    last: Tensor  # [n] each unit's last category (0 for numbers)
    out: slice  # the block's slice of a network output
    inp: slice  # and of a network input


class UnitBlocks(nn.Module):
    """Units laid out as contiguous blocks, one per likelihood family, in network outputs and inputs.

    Per-unit tensors [..., D] are in block order (`grouped` / `ungrouped` convert); a block's distribution
    comes from its slice of the decoder output, so no evaluation gathers or pads across units.
    """

    def __init__(self, units: tuple[Column, ...], scale_max: float | None = None):
        super().__init__()
        # the codes' decoder scale cannot exceed this (None: unbounded), so a unit cannot be explained as noise
        self.scale_max = scale_max
        groups: dict[type, list[int]] = {}
        for j, u in enumerate(units):
            groups.setdefault(unit_likelihood_class(u), []).append(j)
        self.blocks: list[Block] = []
        out = inp = 0
        for family, idx in groups.items():
            cols = [units[j] for j in idx]
            n, k = len(idx), max([1] + [c.n_categories for c in cols])
            pad = None
            if family.pads_categories and any(c.n_categories < k for c in cols):
                pad = torch.zeros(n, k)
                for i, c in enumerate(cols):
                    pad[i, c.n_categories :] = NO_CATEGORY
            last = torch.tensor([max(c.n_categories - 1, 0) for c in cols], dtype=torch.float32)
            ow, iw = family.block_width(n, k), family.block_input_width(n, k)
            self.blocks.append(Block(family, n, k, pad, last, slice(out, out + ow), slice(inp, inp + iw)))
            out, inp = out + ow, inp + iw
        self.out_width, self.in_width = out, inp
        order = [j for idx in groups.values() for j in idx]
        self.identity = order == list(range(len(units)))
        # not in the state dict: derived from the schema
        self.register_buffer("order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.register_buffer("inverse", torch.argsort(self.order), persistent=False)

    def grouped(self, t: Tensor, axis: int = -1) -> Tensor:
        """Feature order -> block order along `axis`."""
        return t if self.identity else t.index_select(axis, self.order)

    def ungrouped(self, t: Tensor, axis: int = -1) -> Tensor:
        """Block order -> feature order along `axis`."""
        return t if self.identity else t.index_select(axis, self.inverse)

    def dists(self, out: Tensor) -> list:
        """Each block's distribution from a network output [..., out_width]."""
        return [b.family.from_block(out[..., b.out], b.n, b.k, b.pad, self.scale_max) for b in self.blocks]

    def split(self, t: Tensor) -> list[Tensor]:
        """[..., D] per-unit values -> one [..., n] slice per block.

        Slices, not one Split: ONNX Runtime merges the repeats of a single-output node on the same input, so the
        work on the observations (a category's one-hot) runs once per graph, not once per gradient evaluation.
        """
        if len(self.blocks) == 1:
            return [t]
        starts = [0]
        for b in self.blocks:
            starts.append(starts[-1] + b.n)
        return [t[..., a:e] for a, e in zip(starts[:-1], starts[1:])]

    @staticmethod
    def _joined(parts: list[Tensor], axis: int = -1) -> Tensor:
        """Concatenated along `axis` (negative), the other axes broadcast where the parts differ."""
        if len(parts) == 1:
            return parts[0]
        lead = [p.shape[:axis] for p in parts]
        if any(s != lead[0] for s in lead):
            batch = torch.broadcast_shapes(*lead)
            parts = [p.expand(*batch, *p.shape[len(p.shape) + axis :]) for p in parts]
        return torch.cat(parts, axis)

    def log_prob_and_score(self, dists: list, z: Tensor, m: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
        """sum over observed units of log p(u_O) [...], and per block the pieces of its gradient with respect to
        the block's network output (`output_gradient` joins them)."""
        total, pieces = 0.0, []
        for d, zi, mi in zip(dists, self.split(z), self.split(m)):
            lp, score = d.block_score(zi, mi)
            total = total + (lp * mi).sum(-1)
            pieces.append(score)
        return total, pieces

    def output_gradient(self, pieces: list[list[Tensor]], m: Tensor, g_input: Tensor | None = None) -> Tensor:
        """The gradient on the network output [..., out_width]: the scores' pieces, plus (given the gradient on a
        network input that read the filled holes, [..., in_width]) what the holes pass back."""
        parts = []
        for b, block_pieces, mi in zip(self.blocks, pieces, self.split(m)):
            if g_input is not None and b.family.fills_holes:
                block_pieces = b.family.add_fill_gradient(block_pieces, g_input[..., b.inp], mi)
            parts.extend(block_pieces)
        return self._joined(parts)

    def log_prob(self, dists: list, z: Tensor) -> Tensor:
        """log p per unit [..., D]."""
        return self._joined([d.log_prob(zi) for d, zi in zip(dists, self.split(z))])

    def inputs(self, z: Tensor, m: Tensor, dists: list | None = None) -> Tensor:
        """The units as networks read them [..., in_width]: observed values (categories one-hot), 0 in the holes
        or, given the decoder's `dists`, what those fill in (a code's loc)."""
        parts = []
        for i, (b, zi, mi) in enumerate(zip(self.blocks, self.split(z), self.split(m))):
            part = b.family.block_input(zi, mi, b.k)
            if dists is not None and b.family.fills_holes:
                part = part + dists[i].hole_fill(mi)
            parts.append(part)
        return self._joined(parts)

    def natural(self, dists: list, width: int) -> Tensor:
        """Natural parameters [..., D, width] per unit, zero-padded."""
        parts = []
        for d in dists:
            p = d.natural()
            parts.append(F.pad(p, (0, width - p.shape[-1])) if p.shape[-1] < width else p)
        return self._joined(parts, -2)

    def draw(self, dists: list, noise: Tensor) -> Tensor:
        """A value of every unit [..., D] from standard normal noise [..., D]: codes reparameterised,
        categories by their inverse CDF."""
        return self._joined([d.draw(ni, b.last) for d, b, ni in zip(dists, self.blocks, self.split(noise))])


class DependencyVAE(nn.Module):
    def __init__(
        self,
        units: tuple[Column, ...],
        targets: tuple[Column, ...],
        latent_dims: tuple[int, ...],
        hidden: int,
        activation: str = "silu",
        encoder_hidden: int | None = None,
        code_scale_max: float | None = None,
    ):
        super().__init__()
        self.units = units
        self.n_units = len(units)
        self.blocks = UnitBlocks(units, code_scale_max)
        # [D] block order: 1.0 where a unit is a marginal code (not in the state dict: derived from the schema)
        coded = torch.tensor([not u.is_discrete for u in units], dtype=torch.float32)
        self.register_buffer("coded", self.blocks.grouped(coded), persistent=False)
        self.latent_dims = tuple(latent_dims)
        self.latent_size = sum(self.latent_dims)
        self.targets = targets
        self.target_likelihood = ColumnLikelihoods(targets)
        d1 = self.latent_dims[0]
        self.target_inputs = [(likelihood_class(c), c.n_categories) for c in targets]
        self.y_width = sum(fam.input_width or k for fam, k in self.target_inputs) + len(targets)
        self.x_width = self.blocks.in_width  # the units as networks read them
        enc_in, enc = self.x_width + self.n_units + self.y_width, encoder_hidden or hidden
        self.trunks = nn.ModuleList(
            MLP([enc_in if i == 0 else enc, enc, enc], activation) for i in range(len(self.latent_dims))
        )
        self.heads = nn.ModuleList(nn.Linear(enc, 2 * d) for d in self.latent_dims)
        self.priors = nn.ModuleList(
            MLP([self.latent_dims[i + 1], hidden, 2 * self.latent_dims[i]], activation)
            for i in range(len(self.latent_dims) - 1)
        )
        self.decoder = MLP([d1, hidden, hidden, self.blocks.out_width], activation)
        width = len(targets) * self.target_likelihood.width
        self.predictor = MLP([self.x_width + self.n_units + d1, hidden, hidden, width], activation)

    # ---- encoder ------------------------------------------------------------------------
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
        r = torch.cat([self.blocks.inputs(obs.z, obs.m), obs.m, ys], -1)
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

    def decode(self, eps: Tensor) -> tuple[Tensor, list]:
        """(h_1, the units' distributions p(u | h_1), one per block)."""
        h1, _ = self.top_down(eps)
        return h1, self.blocks.dists(self.decoder(h1))

    def target_params(self, pred_out: Tensor) -> Tensor:
        """Predictor output -> [..., P, width] (a plain unsqueeze for the usual single target)."""
        if len(self.targets) == 1:
            return pred_out.unsqueeze(-2)
        return pred_out.unflatten(-1, (len(self.targets), self.target_likelihood.width))

    def predictor_input(self, h1: Tensor, dists: list, obs: Observed) -> Tensor:
        """[x_hat, m, h_1]: the observed units, the decoder's mean code in the holes of coded units."""
        x_hat = self.blocks.inputs(obs.z, obs.m, dists)
        batch = h1.shape[:-1]
        if x_hat.shape[:-1] != batch:
            x_hat = x_hat.expand(*batch, x_hat.shape[-1])
        m = obs.m if obs.m.shape[:-1] == batch else obs.m.expand(*batch, obs.m.shape[-1])
        return torch.cat([x_hat, m, h1], -1)

    def predictor_pass(self, h1: Tensor, dists: list, obs: Observed) -> tuple[Tensor, list[Tensor]]:
        """p(y | x_hat, m, h_1): raw parameters [..., P, width] and the slopes the backward pass needs."""
        pred_out, pred_slopes = self.predictor.forward_cached(self.predictor_input(h1, dists, obs))
        return self.target_params(pred_out), pred_slopes

    def predict_target(self, eps: Tensor, obs: Observed) -> Tensor:
        """Raw parameters of p(y | eps, observed features) [..., P, width]."""
        h1, dists = self.decode(eps)
        return self.predictor_pass(h1, dists, obs)[0]

    def forward_pass(self, eps: Tensor, obs: Observed, caches: bool = False, hidden: Observed | None = None):
        """log p(u_O, y_O | eps) (and, given `hidden` entries' true units and targets with their masks, their
        predictive log-likelihood log p(u_H, y_H | eps, observed), from the same pass)."""
        h1, td_cache = self.top_down(eps)
        dec_out, dec_slopes = self.decoder.forward_cached(h1)
        dists = self.blocks.dists(dec_out)
        log_lik, u_pieces = self.blocks.log_prob_and_score(dists, obs.z, obs.m)
        y_raw = pred_slopes = y_score = None
        if obs.y is not None or (hidden is not None and hidden.y is not None):
            y_raw, pred_slopes = self.predictor_pass(h1, dists, obs)
        if obs.y is not None:
            lp_y_each, y_score = self.target_likelihood.log_prob_and_score(y_raw, obs.y)
            log_lik = log_lik + (lp_y_each * obs.my).sum(-1)
        hidden_log_lik = None
        if hidden is not None:
            hidden_log_lik = (self.blocks.log_prob(dists, hidden.z) * hidden.m).sum(-1)
            if hidden.y is not None:
                lp_y = self.target_likelihood.log_prob(y_raw, hidden.y)
                hidden_log_lik = hidden_log_lik + (lp_y * hidden.my).sum(-1)
        fwd = Forward(log_lik, h1, y_raw, hidden_log_lik)
        if not caches:
            return fwd
        return fwd, (td_cache, u_pieces, dec_slopes, pred_slopes, y_score)

    def log_joint_and_grad(self, eps: Tensor, obs: Observed) -> tuple[Tensor, Tensor]:
        """log p*(eps) [...] and d log p*/d eps [..., E]."""
        fwd, (td_cache, u_pieces, dec_slopes, pred_slopes, y_score) = self.forward_pass(eps, obs, caches=True)
        logp = fwd.log_lik + self.log_prior(eps)
        g_h = g_x = None
        if obs.y is not None:
            # predictor -> (x_hat, m, h1)
            g_pred = y_score * obs.my.unsqueeze(-1)
            g_pred = g_pred.squeeze(-2) if len(self.targets) == 1 else g_pred.flatten(-2)
            g_in = self.predictor.vjp(pred_slopes, g_pred)
            start = self.x_width + self.n_units
            g_h = g_in[..., start : start + self.latent_dims[0]]
            g_x = g_in[..., : self.x_width]  # x_hat reads the mean code in the holes of coded units
        # decoder -> h1
        g_dec_h = self.decoder.vjp(dec_slopes, self.blocks.output_gradient(u_pieces, obs.m, g_x))
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
