"""The torch side of the likelihood families (`model.families`), one class each, in the style of torch.distributions.

Each class is built from the raw network output (`from_raw`) and can report the gradient of `log_prob`
with respect to that raw output (`raw_score`). The HMC target needs that gradient as a plain forward
computation (no autograd inside), so that it can be differentiated once more during training and
exported to ONNX. `natural` writes the natural parameters the numpy family reads on the serving side;
`point` is the point imputation; `as_input` is how a value enters an encoder. `LIKELIHOODS` maps a
family's `likelihood` name to its class. The `block_*` methods of the families a dependency-VAE unit can have
(Gaussian codes, categorical features) evaluate n units laid out as one contiguous block of a network
output (`model.dependency.UnitBlocks`); binary units are categorical ones there (`unit_likelihood_class`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hhvaem.model.schema import Column

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


def softplus_and_sigmoid(raw: Tensor) -> tuple[Tensor, Tensor]:
    """softplus(raw) and its derivative sigmoid(raw), both from one sigmoid: log(1 + e^x) = -log(sigmoid(-x)).

    Exact (up to float rounding) and what every scale in the model uses: ONNX Runtime's Softplus kernel is
    scalar, about 10x slower per element than its vectorised Sigmoid and Log, and the sampler evaluates two
    scales per gradient evaluation, ~100 times per call.
    """
    q = torch.sigmoid(-raw)
    return -torch.log(q), 1.0 - q


def positive_scale(raw: Tensor, floor: float = MIN_SCALE) -> tuple[Tensor, Tensor]:
    """softplus(raw) + floor and its derivative with respect to raw."""
    sp, slope = softplus_and_sigmoid(raw)
    return sp + floor, slope


def bounded_scale(raw: Tensor, ceiling: float, floor: float = MIN_SCALE) -> tuple[Tensor, Tensor]:
    """floor + (ceiling - floor) * sigmoid(raw) and its derivative with respect to raw: a scale that cannot grow
    past `ceiling`."""
    s = torch.sigmoid(raw)
    width = ceiling - floor
    return floor + width * s, width * s * (1.0 - s)


class Gaussian:
    pads_categories = False
    family = "gaussian"
    input_width = 1

    def __init__(self, loc: Tensor, scale: Tensor, scale_slope: Tensor | None = None):
        # scale_slope: d scale / d raw scale (from_raw), what raw_scores needs
        self.loc, self.scale, self._scale_slope = loc, scale, scale_slope

    @classmethod
    def from_raw(cls, raw: Tensor) -> Gaussian:
        """raw[..., 0] is the location, softplus(raw[..., 1]) + MIN_SCALE the scale."""
        return cls(raw[..., 0], *positive_scale(raw[..., 1]))

    def log_prob(self, x: Tensor) -> Tensor:
        u = (x - self.loc) / self.scale
        return -0.5 * u * u - torch.log(self.scale) - 0.5 * LOG_2PI

    def log_prob_and_scores(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log p, d log p / d loc and d log p / d raw scale, sharing the standardised residual."""
        inv = 1.0 / self.scale
        u = (x - self.loc) * inv
        u2 = u * u
        lp = -0.5 * u2 - torch.log(self.scale) - 0.5 * LOG_2PI
        return lp, u * inv, (u2 - 1.0) * inv * self._scale_slope

    def raw_scores(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """d log p / d loc and d log p / d raw scale."""
        return self.log_prob_and_scores(x)[1:]

    def raw_score(self, x: Tensor) -> Tensor:
        return torch.stack(self.raw_scores(x), dim=-1)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return self.scale**2

    def point(self) -> Tensor:
        return self.loc

    def natural(self) -> Tensor:
        return torch.stack([self.loc, self.scale], -1)

    # ---- as n units in one contiguous block [loc (n) | raw scale (n)] of a network output (model.dependency) ----
    fills_holes = True  # a network reads the loc in a unit's hole

    @staticmethod
    def block_width(n: int, k: int) -> int:
        return 2 * n

    @staticmethod
    def block_input_width(n: int, k: int) -> int:
        return n

    @classmethod
    def from_block(
        cls, out: Tensor, n: int, k: int, pad: Tensor | None = None, scale_max: float | None = None
    ) -> Gaussian:
        raw = out[..., n : 2 * n]
        return cls(out[..., :n], *(positive_scale(raw) if scale_max is None else bounded_scale(raw, scale_max)))

    def block_score(self, x: Tensor, m: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(log p per unit, the pieces of d sum(m log p) / d block), sharing the standardised residual."""
        lp, d_loc, d_scale = self.log_prob_and_scores(x)
        return lp, [d_loc * m, d_scale * m]

    @staticmethod
    def block_input(x: Tensor, m: Tensor, k: int) -> Tensor:
        """The units as a network reads them: the values where observed, 0 in the holes."""
        return m * x

    def hole_fill(self, m: Tensor) -> Tensor:
        """What a network reads in the holes on top of `block_input`: the loc."""
        return (1.0 - m) * self.loc

    @staticmethod
    def add_fill_gradient(pieces: list[Tensor], g_input: Tensor, m: Tensor) -> list[Tensor]:
        """`block_score`'s pieces plus the gradient the filled holes pass to the loc."""
        return [pieces[0] + (1.0 - m) * g_input, pieces[1]]

    def draw(self, noise: Tensor, last: Tensor | None = None) -> Tensor:
        """A value per unit from standard normal noise (the reparameterised draw)."""
        return self.loc + self.scale * noise

    @staticmethod
    def as_input(x: Tensor, width: int) -> Tensor:
        return x.unsqueeze(-1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.loc.shape, generator=generator, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * noise


def log_factorial(x: Tensor) -> Tensor:
    """log(x!) for x >= 0 from ops every ONNX opset has (`lgamma` has none, so a graph with a count likelihood
    could not be exported): Stirling's series at x + 7, brought back by the recurrence; error below 1e-10."""
    z = x.clamp(min=0.0) + 1.0
    shift = sum(torch.log(z + k) for k in range(6))  # logs, not the product: no overflow for large counts
    w = z + 6.0
    inv = 1.0 / w
    series = inv * (1.0 / 12.0 - inv * inv * (1.0 / 360.0 - inv * inv * (1.0 / 1260.0 - inv * inv / 1680.0)))
    return (w - 0.5) * torch.log(w) - w + 0.5 * math.log(2.0 * math.pi) + series - shift


class Poisson:
    pads_categories = False
    family = "poisson"
    input_width = 1

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
        return x * self.log_rate - self.rate - log_factorial(x)

    def raw_score(self, x: Tensor) -> Tensor:
        inside = (self.raw > -15.0) & (self.raw < 15.0)  # the clamp passes no gradient outside
        return ((x - self.rate) * inside.to(x.dtype)).unsqueeze(-1)

    @property
    def mean(self) -> Tensor:
        return self.rate

    @property
    def mode(self) -> Tensor:
        return torch.floor(self.rate)

    def point(self) -> Tensor:
        return self.rate

    def natural(self) -> Tensor:
        return self.rate.unsqueeze(-1)

    @staticmethod
    def as_input(x: Tensor, width: int) -> Tensor:
        return torch.log1p(x.clamp_min(0)).unsqueeze(-1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return torch.poisson(self.rate, generator=generator)


def standard_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))


def one_hot(index: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """One-hot [..., k] of float or integer indices by comparison (F.one_hot fixes traced shapes in export).

    int(k): a category count is never a batch axis, so the exported graph gets a constant, not a shape lookup.
    """
    return (index.unsqueeze(-1) == torch.arange(int(k), device=index.device, dtype=index.dtype)).to(dtype)


def bounded_logits(raw: Tensor) -> tuple[Tensor, Tensor]:
    """LOGIT_BOUND * tanh(raw / LOGIT_BOUND) and its derivative with respect to raw."""
    t = torch.tanh(raw * (1.0 / LOGIT_BOUND))
    return LOGIT_BOUND * t, 1.0 - t * t


class Bernoulli:
    pads_categories = False
    family = "bernoulli"
    input_width = 1

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

    def point(self) -> Tensor:
        return self.mode

    def natural(self) -> Tensor:
        q = self.probs.unsqueeze(-1)
        return torch.cat([1 - q, q], -1)

    @staticmethod
    def as_input(x: Tensor, width: int) -> Tensor:
        return x.unsqueeze(-1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(self.probs, generator=generator)


class Categorical:
    pads_categories = True  # a narrower column's missing categories get NO_CATEGORY raw logits
    family = "categorical"
    input_width = None  # one-hot: as wide as the column has categories

    def __init__(self, logits: Tensor, slope: Tensor | None = None):
        self.logits, self._slope = logits, slope

    @classmethod
    def from_raw(cls, raw: Tensor, pad: Tensor | None = None) -> Categorical:
        """Bounded logits; `pad` (NO_CATEGORY where a narrower column has no category, else 0) keeps padding
        categories far below every real one, with no gradient."""
        logits, slope = bounded_logits(raw)
        if pad is None:
            return cls(logits, slope)
        pad = pad.to(raw)
        return cls(logits + pad, slope * (pad == 0).to(raw))

    @property
    def probs(self) -> Tensor:
        return torch.softmax(self.logits, dim=-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) for class indices x broadcastable against the batch shape (a one-hot sum, not a gather)."""
        logp = torch.log_softmax(self.logits, dim=-1)
        return (one_hot(x.long(), self.logits.shape[-1], logp.dtype) * logp).sum(-1)

    def raw_score(self, x: Tensor) -> Tensor:
        onehot = one_hot(x.long(), self.logits.shape[-1], self.logits.dtype)
        return (onehot - self.probs) * self._slope

    @property
    def mode(self) -> Tensor:
        return self.logits.argmax(-1).to(self.logits.dtype)

    def point(self) -> Tensor:
        return self.mode

    def natural(self) -> Tensor:
        return self.probs

    # ---- as n units in one contiguous block [logits (n x k)] of a network output (model.dependency) ----
    fills_holes = False

    @staticmethod
    def block_width(n: int, k: int) -> int:
        return n * k

    @staticmethod
    def block_input_width(n: int, k: int) -> int:
        return n * k

    @classmethod
    def from_block(
        cls, out: Tensor, n: int, k: int, pad: Tensor | None = None, scale_max: float | None = None
    ) -> Categorical:
        return cls.from_raw(_unflatten(out[..., : n * k], n, k), pad)

    def block_score(self, x: Tensor, m: Tensor) -> tuple[Tensor, list[Tensor]]:
        # Bounded logits (|l| <= LOGIT_BOUND, padding ~ NO_CATEGORY) need no max-subtraction: exp, its sum and
        # one division give the probabilities and log p = l_x - log sum exp l, cheaper than LogSoftmax then Exp.
        e = torch.exp(self.logits)
        total = e.sum(-1, keepdim=True)
        onehot = one_hot(x, self.logits.shape[-1], e.dtype)
        score = (onehot - e / total) * self._slope * m.unsqueeze(-1)
        return (onehot * self.logits).sum(-1) - torch.log(total.squeeze(-1)), [_flatten(score)]

    @staticmethod
    def block_input(x: Tensor, m: Tensor, k: int) -> Tensor:
        return _flatten(one_hot(x.long().clamp(0, k - 1), k, x.dtype) * m.unsqueeze(-1))

    def draw(self, noise: Tensor, last: Tensor | None = None) -> Tensor:
        """A category per unit: the inverse CDF at the uniform Phi(noise), at most `last` (rounding)."""
        u = standard_normal_cdf(noise)
        index = (torch.cumsum(self.probs, -1) < u.unsqueeze(-1)).to(noise.dtype).sum(-1)
        return index if last is None else torch.minimum(index, last.to(index))

    @staticmethod
    def as_input(x: Tensor, width: int) -> Tensor:
        return one_hot(x.long().clamp(0, width - 1), width, x.dtype)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        flat = self.probs.reshape(-1, self.logits.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(self.logits.shape[:-1]).to(self.logits.dtype)


class ZeroLogNormal:
    """zero_positive (`families.ZeroLogNormal`): a point mass at v = 0 with probability pi = sigmoid(logit), and a
    Gaussian on v for the positive part (the positive family's log-normal on log(1 + x)). raw = (loc, raw scale,
    raw zero logit); the logit is bounded like a Bernoulli's, which keeps pi in [0.25 %, 99.75 %]."""

    pads_categories = False
    family = "zero_lognormal"
    input_width = 1
    # The weight of this column's KL term in the marginal VAE's loss (1 elsewhere, `ColumnLikelihoods.kl_weights`).
    # Whether a value is zero is one bit; at full weight the 1-d code blurs it (the zero rows' posterior widens over
    # the smallest positives' codes and the decoder hedges, pi ~ 0.7 on both sides: reconstruction 0.3 to 0.5 sd on
    # concrete's slag and boston's ZN); at 0.2 it keeps it (<= 0.09 sd; benchmarks/marginal_fit.py).
    code_kl_weight = 0.2

    def __init__(self, loc: Tensor, scale: Tensor, scale_slope: Tensor, logit: Tensor, logit_slope: Tensor):
        self.positive = Gaussian(loc, scale, scale_slope)
        self.logit, self._logit_slope = logit, logit_slope

    @classmethod
    def from_raw(cls, raw: Tensor) -> ZeroLogNormal:
        return cls(raw[..., 0], *positive_scale(raw[..., 1]), *bounded_logits(raw[..., 2]))

    @property
    def pi(self) -> Tensor:
        return torch.sigmoid(self.logit)

    def log_prob(self, x: Tensor) -> Tensor:
        zero = (x == 0).to(self.logit.dtype)
        pi = self.pi
        return zero * torch.log(pi) + (1.0 - zero) * (torch.log(1.0 - pi) + self.positive.log_prob(x))

    def raw_score(self, x: Tensor) -> Tensor:
        zero = (x == 0).to(self.logit.dtype)
        d_loc, d_scale = self.positive.raw_scores(x)
        keep = 1.0 - zero
        return torch.stack([d_loc * keep, d_scale * keep, (zero - self.pi) * self._logit_slope], dim=-1)

    @property
    def mean(self) -> Tensor:
        return (1.0 - self.pi) * self.positive.loc

    def point(self) -> Tensor:
        return self.mean

    def natural(self) -> Tensor:
        return torch.stack([self.positive.loc, self.positive.scale, self.pi], -1)

    @staticmethod
    def as_input(x: Tensor, width: int) -> Tensor:
        return x.unsqueeze(-1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        v = self.positive.sample(generator)
        u = torch.rand(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        return torch.where(u < self.pi, torch.zeros_like(v), v)


def _unflatten(t: Tensor, n: int, k: int) -> Tensor:
    """[..., n * k] -> [..., n, k]; a constant shape for 2-D tensors (no shape nodes in the exported graph)."""
    return t.reshape(-1, n, k) if t.dim() == 2 else t.unflatten(-1, (n, k))


def _flatten(t: Tensor) -> Tensor:
    """[..., n, k] -> [..., n * k]; a constant shape for 3-D tensors (n and k are never batch axes)."""
    return t.reshape(-1, int(t.shape[-2]) * int(t.shape[-1])) if t.dim() == 3 else t.flatten(-2)


LIKELIHOODS = {cls.family: cls for cls in (Gaussian, Poisson, Bernoulli, Categorical, ZeroLogNormal)}


def likelihood_class(column: Column):
    """The torch likelihood class of a column (through its family)."""
    return LIKELIHOODS[column.family.likelihood]


def unit_likelihood_class(column: Column):
    """The likelihood class of a dependency-VAE unit: a binary unit is a 2-category categorical, so that a table's
    discrete units share one block (one softmax per gradient evaluation, not one pass per family)."""
    cls = likelihood_class(column)
    return Categorical if cls is Bernoulli else cls


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
            groups.setdefault(likelihood_class(c), []).append(j)
        self.groups = [(fam, torch.tensor(idx)) for fam, idx in groups.items()]
        order = torch.cat([idx for _, idx in self.groups]) if self.groups else torch.zeros(0, dtype=torch.long)
        self.inverse = torch.argsort(order)
        # Additive raw offsets that switch off the padding categories of narrower categorical columns.
        pad = torch.zeros(len(columns), self.width)
        for j, c in enumerate(columns):
            if likelihood_class(c).pads_categories:
                pad[j, c.n_params :] = NO_CATEGORY
        self.pads = [pad.index_select(0, idx) if pad.index_select(0, idx).any() else None for _, idx in self.groups]
        self.input_width = max([1] + [likelihood_class(c).input_width or c.n_categories for c in columns])
        # The width of the natural parameters the exported graph reports (families.Family.natural_width).
        self.natural_width = max([2] + [c.natural_width for c in columns])
        self.discrete = torch.tensor([c.is_discrete for c in columns])
        # Each column's weight on its marginal VAE's KL term (a likelihood class's `code_kl_weight`, else 1).
        self.kl_weights = torch.tensor([getattr(likelihood_class(c), "code_kl_weight", 1.0) for c in columns])
        # One family in column order (the usual single target): no gathers and no reassembly, which keeps
        # the exported sampler free of the shape nodes those cost on every gradient evaluation.
        self.single = len(self.groups) == 1

    def dists(self, raw: Tensor):
        """(family instance, column index) pairs for `raw` [..., C, width]."""
        out = []
        for (fam, idx), pad in zip(self.groups, self.pads):
            r = raw if self.single else raw.index_select(-2, idx)
            out.append((fam.from_raw(r) if pad is None else fam.from_raw(r, pad), idx))
        return out

    def _assemble(self, parts: list[Tensor], axis: int = -1) -> Tensor:
        if self.single:
            return parts[0]
        return torch.cat(parts, dim=axis).index_select(axis, self.inverse.to(parts[0].device))

    def log_prob(self, raw: Tensor, x: Tensor) -> Tensor:
        """Per-column log-likelihood [..., C] of normalised values x [..., C]."""
        x = x.expand_as(raw[..., 0])  # expand_as stays symbolic when traced for export
        return self._assemble([d.log_prob(x.index_select(-1, idx)) for d, idx in self.dists(raw)])

    def log_prob_and_score(self, raw: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Log-likelihood [..., C] and its gradient with respect to raw [..., C, width]."""
        lps, scores = [], []
        for d, idx in self.dists(raw):
            xi = x if self.single else x.index_select(-1, idx)
            lps.append(d.log_prob(xi))
            s = d.raw_score(xi)
            pad = self.width - s.shape[-1]  # a Python int: constant pads in the graph
            scores.append(F.pad(s, (0, pad)) if pad else s)
        return self._assemble(lps), self._assemble(scores, axis=-2)

    def point(self, raw: Tensor) -> Tensor:
        """Point imputation [..., C]: the family's point value (mean for numbers, mode for categories)."""
        return self._assemble([d.point() for d, _ in self.dists(raw)])

    def natural(self, raw: Tensor) -> Tensor:
        """Natural parameters [..., C, natural_width], what serving reads from the exported graph.

        Gaussian: (loc, scale); Poisson: (rate,); Bernoulli: (1 - p, p); categorical: the probabilities
        (padding categories get 0). Zero-padded to a common width.
        """
        parts = []
        for d, _ in self.dists(raw):
            p = d.natural()[..., : self.natural_width]
            parts.append(F.pad(p, (0, self.natural_width - p.shape[-1])))
        return torch.cat(parts, dim=-2).index_select(-2, self.inverse.to(raw.device))

    def probs(self, raw: Tensor) -> Tensor:
        """Category probabilities [..., C, natural_width] (zeros for numeric columns)."""
        return self.natural(raw) * self.discrete.to(raw).unsqueeze(-1)

    def as_input(self, x: Tensor) -> Tensor:
        """Encoder input [..., C, input_width]: each column as its family enters an encoder, zero-padded."""
        width = self.input_width
        parts = []
        for fam, idx in self.groups:
            v = fam.as_input(x.index_select(-1, idx), width)
            parts.append(F.pad(v, (0, width - v.shape[-1])))
        return self._assemble(parts, axis=-2)

    def sample(self, raw: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self._assemble([d.sample(generator) for d, _ in self.dists(raw)])
