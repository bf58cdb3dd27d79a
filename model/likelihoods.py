"""Likelihoods, one class each, in the style of torch.distributions.

Each class is built from the raw network output (`from_raw`) and can report the
gradient of `log_prob` with respect to that raw output (`raw_score`). The HMC
target needs that gradient as a plain forward computation (no autograd inside),
so that it can be differentiated once more during training and exported to ONNX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hhvaem.model.schema import Column
from torch import Tensor

# Robust likelihoods. Columns with point masses (boston's ZN: 73 % zeros) and rare classes (CHAS:
# 7 % ones) let a free Gaussian scale or logit grow without bound: the density on the spike soars,
# and one confident miss on a test row then costs tens of nats (measured: 21 nats mean for CHAS).
# A scale floor of 0.05 standard deviations and logits bounded to +-6 (probabilities >= 0.25 %)
# cap that penalty without moving point predictions.
MIN_SCALE = 0.05
LOGIT_BOUND = 6.0
LOG_2PI = math.log(2 * math.pi)
# Additive logit for categories a padded categorical head does not have.
NO_CATEGORY = -1e4


class Gaussian:
    def __init__(self, loc: Tensor, scale: Tensor, raw_scale: Tensor | None = None):
        self.loc, self.scale, self._raw_scale = loc, scale, raw_scale

    @classmethod
    def from_raw(cls, raw: Tensor) -> Gaussian:
        """raw[..., 0] is the location, softplus(raw[..., 1]) + MIN_SCALE the scale."""
        return cls(raw[..., 0], F.softplus(raw[..., 1]) + MIN_SCALE, raw[..., 1])

    def log_prob(self, x: Tensor) -> Tensor:
        u = (x - self.loc) / self.scale
        return -0.5 * u * u - torch.log(self.scale) - 0.5 * LOG_2PI

    def raw_scores(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """d log p / d loc and d log p / d raw scale."""
        u = (x - self.loc) / self.scale
        d_scale = (u * u - 1.0) / self.scale
        return u / self.scale, d_scale * torch.sigmoid(self._raw_scale)

    def raw_score(self, x: Tensor) -> Tensor:
        return torch.stack(self.raw_scores(x), dim=-1)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return self.scale**2

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.loc.shape, generator=generator, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * noise


class LogNormal:
    """x = exp(v) - shift with v ~ N(loc, scale): positive columns in the user's units."""

    def __init__(self, loc: Tensor, scale: Tensor, shift: float = 1.0):
        self.loc, self.scale, self.shift = loc, scale, shift

    def log_prob(self, x: Tensor) -> Tensor:
        v = torch.log(x + self.shift)
        return Gaussian(self.loc, self.scale).log_prob(v) - v

    @property
    def mean(self) -> Tensor:
        return torch.exp(self.loc + 0.5 * self.scale**2) - self.shift

    @property
    def variance(self) -> Tensor:
        s2 = self.scale**2
        return torch.expm1(s2) * torch.exp(2 * self.loc + s2)

    def quantile(self, q: float) -> Tensor:
        z = math.sqrt(2.0) * torch.erfinv(torch.tensor(2 * q - 1, dtype=self.loc.dtype))
        return torch.exp(self.loc + self.scale * z) - self.shift

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return torch.exp(Gaussian(self.loc, self.scale).sample(generator)) - self.shift


class Poisson:
    def __init__(self, log_rate: Tensor):
        self.raw = log_rate
        self.log_rate = log_rate.clamp(-15.0, 15.0)

    @classmethod
    def from_raw(cls, raw: Tensor) -> Poisson:
        return cls(raw[..., 0])

    @property
    def rate(self) -> Tensor:
        return torch.exp(self.log_rate)

    def log_prob(self, x: Tensor) -> Tensor:
        return x * self.log_rate - self.rate - torch.lgamma(x + 1.0)

    def raw_score(self, x: Tensor) -> Tensor:
        inside = (self.raw > -15.0) & (self.raw < 15.0)  # the clamp passes no gradient outside
        return ((x - self.rate) * inside.to(x.dtype)).unsqueeze(-1)

    @property
    def mean(self) -> Tensor:
        return self.rate

    @property
    def mode(self) -> Tensor:
        return torch.floor(self.rate)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return torch.poisson(self.rate, generator=generator)


def one_hot(index: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """One-hot [..., k] of float or integer indices by comparison (F.one_hot fixes traced shapes in export)."""
    return (index.unsqueeze(-1) == torch.arange(k, device=index.device, dtype=index.dtype)).to(dtype)


def bounded_logits(raw: Tensor) -> tuple[Tensor, Tensor]:
    """LOGIT_BOUND * tanh(raw / LOGIT_BOUND) and its derivative with respect to raw."""
    t = torch.tanh(raw / LOGIT_BOUND)
    return LOGIT_BOUND * t, 1.0 - t * t


class Bernoulli:
    def __init__(self, logits: Tensor, slope: Tensor | None = None):
        self.logits, self._slope = logits, slope

    @classmethod
    def from_raw(cls, raw: Tensor) -> Bernoulli:
        return cls(*bounded_logits(raw[..., 0]))

    @property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def log_prob(self, x: Tensor) -> Tensor:
        return x * self.logits - F.softplus(self.logits)

    def raw_score(self, x: Tensor) -> Tensor:
        return ((x - self.probs) * self._slope).unsqueeze(-1)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def mode(self) -> Tensor:
        return (self.logits > 0).to(self.logits.dtype)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(self.probs, generator=generator)


class Categorical:
    def __init__(self, logits: Tensor, slope: Tensor | None = None):
        self.logits, self._slope = logits, slope

    @classmethod
    def from_raw(cls, raw: Tensor) -> Categorical:
        """Bounded logits; padding categories (raw ~ NO_CATEGORY) stay far below every real one."""
        logits, slope = bounded_logits(raw)
        pad = raw <= NO_CATEGORY / 2
        # masked_fill, not where(pad, zeros_like(slope), ...): the exporter folds that zeros_like to a
        # constant of the traced shape, which breaks the dynamic batch axis.
        return cls(torch.where(pad, raw, logits), slope.masked_fill(pad, 0.0))

    @property
    def probs(self) -> Tensor:
        return torch.softmax(self.logits, dim=-1)

    def log_prob(self, x: Tensor) -> Tensor:
        logp = torch.log_softmax(self.logits, dim=-1)
        return logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)

    def raw_score(self, x: Tensor) -> Tensor:
        onehot = one_hot(x.long(), self.logits.shape[-1], self.logits.dtype)
        return (onehot - self.probs) * self._slope

    @property
    def mode(self) -> Tensor:
        return self.logits.argmax(-1).to(self.logits.dtype)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        flat = self.probs.reshape(-1, self.logits.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(self.logits.shape[:-1]).to(self.logits.dtype)


_FAMILY = {"real": Gaussian, "positive": Gaussian, "count": Poisson, "binary": Bernoulli, "categorical": Categorical}


class ColumnLikelihoods:
    """The likelihoods of several typed columns over one padded raw tensor [..., C, P].

    Columns of one family are evaluated together (no Python loop over columns);
    results are reassembled in column order.
    """

    def __init__(self, columns: tuple[Column, ...]):
        self.columns = columns
        self.width = max([2] + [c.n_params for c in columns])
        groups: dict[type, list[int]] = {}
        for j, c in enumerate(columns):
            groups.setdefault(_FAMILY[c.type], []).append(j)
        self.groups = [(fam, torch.tensor(idx)) for fam, idx in groups.items()]
        order = torch.cat([idx for _, idx in self.groups]) if self.groups else torch.zeros(0, dtype=torch.long)
        self.inverse = torch.argsort(order)
        k = max([2] + [c.n_categories for c in columns])
        pad = torch.zeros(len(columns), self.width)
        for j, c in enumerate(columns):
            if c.type == "categorical":
                pad[j, c.n_categories :] = NO_CATEGORY
        self.category_pad = pad
        self.max_categories = k
        # One family in column order (the usual single target): no gathers and no reassembly, which keeps
        # the exported sampler free of the shape nodes those cost on every gradient evaluation.
        self.single = len(self.groups) == 1
        self._score_width = {Gaussian: 2, Poisson: 1, Bernoulli: 1, Categorical: self.width}

    def dists(self, raw: Tensor):
        """(family instance, column index) pairs for `raw` [..., C, width]."""
        out = []
        for fam, idx in self.groups:
            r = raw if self.single else raw.index_select(-2, idx)
            if fam is Categorical:
                r = r + self.category_pad.index_select(0, idx).to(r)
            out.append((fam.from_raw(r), idx))
        return out

    def _assemble(self, parts: list[Tensor]) -> Tensor:
        if self.single:
            return parts[0]
        return torch.cat(parts, dim=-1).index_select(-1, self.inverse.to(parts[0].device))

    def log_prob(self, raw: Tensor, x: Tensor) -> Tensor:
        """Per-column log-likelihood [..., C] of normalised values x [..., C]."""
        x = x.expand_as(raw[..., 0])  # expand_as stays symbolic when traced for export
        return self._assemble([d.log_prob(x.index_select(-1, idx)) for d, idx in self.dists(raw)])

    def log_prob_and_score(self, raw: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Log-likelihood [..., C] and its gradient with respect to raw [..., C, width]."""
        if not self.single or self.groups[0][0] is Categorical:  # gather needs x at full size
            x = x.expand_as(raw[..., 0])  # expand_as stays symbolic when traced for export
        lps, scores = [], []
        for d, idx in self.dists(raw):
            xi = x if self.single else x.index_select(-1, idx)
            lps.append(d.log_prob(xi))
            s = d.raw_score(xi)
            pad = self.width - self._score_width[type(d)]  # a Python int: constant pads in the graph
            scores.append(F.pad(s, (0, pad)) if pad else s)
        lp = self._assemble(lps)
        if self.single:
            return lp, scores[0]
        score = torch.cat(scores, dim=-2).index_select(-2, self.inverse.to(raw.device))
        return lp, score

    def point(self, raw: Tensor) -> Tensor:
        """Point imputation [..., C]: mean for numeric columns, mode for discrete ones."""
        return self._assemble(
            [d.mode if isinstance(d, (Bernoulli, Categorical)) else d.mean for d, _ in self.dists(raw)]
        )

    def natural(self, raw: Tensor) -> Tensor:
        """Natural parameters [..., C, max_categories], what serving reads from the exported graph.

        Gaussian: (loc, scale); Poisson: (rate, 0); Bernoulli: (1 - p, p); categorical: the
        probabilities (padding categories get 0). Zero-padded to a common width.
        """
        parts = []
        k = self.max_categories
        for d, _ in self.dists(raw):
            if isinstance(d, Gaussian):
                p = torch.stack([d.loc, d.scale], -1)
            elif isinstance(d, Poisson):
                p = d.rate.unsqueeze(-1)
            elif isinstance(d, Bernoulli):
                q = d.probs.unsqueeze(-1)
                p = torch.cat([1 - q, q], -1)
            else:
                p = d.probs[..., :k]
            parts.append(F.pad(p, (0, k - p.shape[-1])))
        return torch.cat(parts, dim=-2).index_select(-2, self.inverse.to(raw.device))

    def probs(self, raw: Tensor) -> Tensor:
        """Category probabilities [..., C, max_categories] (zeros for numeric columns)."""
        discrete = torch.tensor([c.is_discrete for c in self.columns], dtype=raw.dtype, device=raw.device)
        return self.natural(raw) * discrete.unsqueeze(-1)

    def sample(self, raw: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self._assemble([d.sample(generator) for d, _ in self.dists(raw)])
