"""Likelihood families, one class per family on a shared base (numpy only: serving imports this without torch).

A column's type names its family (`FAMILIES`, the type table). The family owns everything that depends on it:

* the widths: raw network outputs (`raw_width`) and natural parameters (`natural_width`);
* the user's values: what fits the support (`check`), the map to the model's normalised scale and back
  (`normalise`, `to_user`);
* the model's predictive per posterior sample ("component"), given by natural parameters on the normalised
  scale (`ColumnLikelihoods.natural` on the torch side writes them): densities, draws, supports and moments
  (`log_prob`, `sample`, `support`, `moments`), which acquisition's mixtures use;
* the predictive in the user's units: the mixture's mean and standard deviation, or class probabilities.

The torch side (`model.likelihoods`) has one likelihood class per `Family.likelihood` name; nothing else switches
on a column's type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

_LOG_2PI = math.log(2.0 * math.pi)
# exp() arguments beyond this overflow float64; a log-normal that wide has no useful moments anyway.
_MAX_EXP = 700.0
# Categorical rows may come from float32 softmax outputs: accept small normalisation errors, then renormalise.
_PROB_SUM_TOL = 1e-5
# Poisson truncation: the mixture's mass beyond the support cutoff must stay below this.
_POISSON_TAIL = 1e-6
# A rate this small stands for zero (log p stays finite).
_MIN_RATE = 1e-12
# Beyond this many training standard deviations (on the model's scale) a value is refused: the networks never
# saw anything like it, and exp() in the decoders would overflow long before.
MAX_STANDARD_DEVIATIONS = 100.0
MAX_COUNT = 1e6


# A numeric column is warped (`Warp`) when its standardised values are more skewed than this (either way).
SKEW_THRESHOLD = 1.0
# Fewer observed values or distinct values than these: no warp (the skewness says too little).
_WARP_MIN_VALUES = 20
_WARP_MIN_DISTINCT = 5
# A column with a point mass holding more than this share of its values is not warped (see Warp.fit).
_WARP_MAX_POINT_MASS = 0.5
# The warp's offset is searched on a log grid between these (in training standard deviations).
_WARP_OFFSETS = (1e-3, 1e3)
_WARP_GRID = 121
_WARP_MAX_VALUES = 100_000
# Gauss-Hermite nodes for moments through a warp (probabilists' weight exp(-x^2 / 2)).
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(48)
_GH_WEIGHTS = _GH_WEIGHTS / math.sqrt(2.0 * math.pi)


def _skewness(v: np.ndarray) -> float:
    c = v - v.mean()
    s2 = float(np.mean(c * c))
    return float(np.mean(c**3)) / s2**1.5 if s2 > 0 else 0.0


def _kurtosis(v: np.ndarray) -> float:
    c = v - v.mean()
    s2 = float(np.mean(c * c))
    return float(np.mean(c**4)) / s2**2 if s2 > 0 else 0.0


@dataclass(frozen=True)
class Warp:
    """A monotone increasing map from a column's protocol scale u (standardised, docs/protocol.md) to the model's
    scale v, for strongly skewed columns: a shifted log on the long tail's side, then standardised.

    With ``y = sign * u`` (sign -1 reflects a left-skewed column), ``r(y) = log(y - low + offset)`` on the training
    range ``low <= y <= high`` and the tangent lines beyond it on both sides, so the map stays total and invertible
    and its inverse grows linearly, not exponentially, outside the training range: a predictive that strays past
    the data (a wide posterior, a decoder extrapolating) cannot put an exp() blow-up into a mean on the protocol
    scale. ``v = sign * (r - loc) / scale``. The offset is chosen at fit time to make the warped training values'
    tails as light as it can (the least kurtosis on a log grid; a column whose tails get no lighter is not
    warped): for a left-skewed bounded column such as boston's B, a reflected log ``log(c - x)`` with c a little
    above the training maximum.
    """

    sign: float
    low: float
    offset: float
    loc: float = 0.0
    scale: float = 1.0
    high: float = math.inf

    @property
    def _edges(self) -> tuple[float, float]:
        """r at the ends of the training range (where the log meets its tangent lines)."""
        span = self.high - self.low
        return math.log(self.offset), (math.log(span + self.offset) if math.isfinite(span) else math.inf)

    def _r(self, u: np.ndarray) -> np.ndarray:
        y = self.sign * np.asarray(u, dtype=np.float64) - self.low
        span = self.high - self.low
        inside = np.clip(y, 0.0, span)
        r = np.log(inside + self.offset)
        r = np.where(y < 0, math.log(self.offset) + y / self.offset, r)
        if math.isfinite(span):
            r = np.where(y > span, math.log(span + self.offset) + (y - span) / (span + self.offset), r)
        return r

    def forward(self, u: np.ndarray) -> np.ndarray:
        """Protocol scale -> the model's scale."""
        return self.sign * (self._r(u) - self.loc) / self.scale

    def inverse(self, v: np.ndarray) -> np.ndarray:
        """The model's scale -> protocol scale (total: every real v has a preimage)."""
        r = self.loc + self.sign * np.asarray(v, dtype=np.float64) * self.scale
        lo, hi = self._edges
        y = np.exp(np.clip(r, lo, min(hi, _MAX_EXP))) - self.offset
        y = np.where(r < lo, (r - lo) * self.offset, y)
        if math.isfinite(hi):
            y = np.where(r > hi, (self.high - self.low) + (r - hi) * math.exp(hi), y)
        return self.sign * (y + self.low)

    def log_derivative(self, v: np.ndarray) -> np.ndarray:
        """``log dv/du`` at the model-scale value v: what turns a density on the model's scale into one on the
        protocol scale (``log p(u) = log p(v) + log dv/du``)."""
        r = self.loc + self.sign * np.asarray(v, dtype=np.float64) * self.scale
        lo, hi = self._edges
        return -math.log(self.scale) - np.clip(r, lo, hi)

    @classmethod
    def fit(cls, u: np.ndarray) -> Warp | None:
        """The warp for observed protocol-scale values `u`, or None when the column is not skewed enough."""
        u = np.asarray(u, dtype=np.float64)
        values, counts = np.unique(u, return_counts=True)
        if u.size < _WARP_MIN_VALUES or values.size < _WARP_MIN_DISTINCT:
            return None
        if counts.max() > _WARP_MAX_POINT_MASS * u.size:  # mostly one value (boston's ZN): a log only squeezes the
            return None  # rest, which the model then reconstructs worse on the protocol's scale (measured)
        skew = _skewness(u)
        if abs(skew) <= SKEW_THRESHOLD:
            return None
        sign = 1.0 if skew > 0 else -1.0
        y = np.sort(sign * u)
        if y.size > _WARP_MAX_VALUES:  # evenly spaced order statistics stand for a very long column
            y = y[np.linspace(0, y.size - 1, _WARP_MAX_VALUES).round().astype(np.int64)]
        low = float(y[0])
        best: tuple[float, float] | None = None
        for offset in np.geomspace(*_WARP_OFFSETS, _WARP_GRID):
            k = _kurtosis(np.log(y - low + offset))
            if best is None or k < best[0]:
                best = (k, float(offset))
        assert best is not None
        if best[0] >= _kurtosis(y):  # the log makes the tails no lighter: leave the column as it is
            return None
        r = np.log(sign * u - low + best[1])
        scale = float(r.std())
        return cls(sign, low, best[1], float(r.mean()), scale if scale > 1e-8 else 1.0, float(np.max(sign * u)))

    def to_dict(self) -> dict[str, float]:
        d = {"sign": self.sign, "low": self.low, "offset": self.offset, "loc": self.loc, "scale": self.scale}
        return {**d, "high": self.high} if math.isfinite(self.high) else d

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> Warp:
        return cls(*(float(d[k]) for k in ("sign", "low", "offset", "loc", "scale")), float(d.get("high", math.inf)))


@dataclass(frozen=True)
class Stats:
    """Shift and scale of a numeric column on its transformed scale (log1p for positive columns), and the
    column's `Warp` (None: the model's scale is the protocol scale, the standardised values themselves)."""

    mean: float = 0.0
    std: float = 1.0
    warp: Warp | None = None

    def to_protocol(self, v: np.ndarray) -> np.ndarray:
        """The model's scale -> the protocol scale (standardised; docs/protocol.md)."""
        v = np.asarray(v, dtype=np.float64)
        return v if self.warp is None else self.warp.inverse(v)

    def standardise(self, t: np.ndarray) -> np.ndarray:
        """Transformed values (log1p for positive columns) -> the model's scale."""
        u = (np.asarray(t, dtype=np.float64) - self.mean) / self.std
        return u if self.warp is None else self.warp.forward(u)

    def unstandardise(self, v: np.ndarray) -> np.ndarray:
        """The model's scale -> transformed values."""
        return self.to_protocol(v) * self.std + self.mean

    def to_dict(self) -> dict:
        d: dict = {"mean": self.mean, "std": self.std}
        if self.warp is not None:
            d["warp"] = self.warp.to_dict()
        return d

    @classmethod
    def from_dict(cls, d) -> Stats:
        """Reads `to_dict`'s output; artifacts written before warps existed have none."""
        warp = d.get("warp")
        return cls(float(d["mean"]), float(d["std"]), Warp.from_dict(warp) if warp else None)


def log_factorial(x: np.ndarray) -> np.ndarray:
    """``log(x!)`` for non-negative integer-valued floats (loop over distinct values only)."""
    uniq, inverse = np.unique(x, return_inverse=True)
    vals = np.array([math.lgamma(v + 1.0) for v in uniq.tolist()], dtype=np.float64)
    return vals[inverse].reshape(x.shape)


def logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable ``log(sum(exp(a), axis))``; all ``-inf`` slices give ``-inf`` (no NaN, no warning)."""
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


class Family:
    """The shared base. Component parameters `p` are natural parameters ``[..., K, W]`` on the normalised scale."""

    name: ClassVar[str]
    likelihood: ClassVar[str]  # the torch likelihood class that produces these natural parameters
    discrete: ClassVar[bool] = False  # values are categories (summaries: mode and class probabilities)
    countable: ClassVar[bool] = False  # the support can be enumerated (categories, counts)
    uses_stats: ClassVar[bool] = True  # Preprocessor.fit computes Stats for the column
    warpable: ClassVar[bool] = False  # Preprocessor.fit may give the column a Warp (strongly skewed columns)
    extras: ClassVar[tuple[str, ...]] = ()  # the names `summary_extras` gives (answers and protocol tensors)

    # ---- widths ------------------------------------------------------------------------------
    def raw_width(self, n_categories: int) -> int:
        """Width of the raw network output that parametrises the likelihood."""
        raise NotImplementedError

    def natural_width(self, n_categories: int) -> int:
        raise NotImplementedError

    def check_categories(self, n_categories: int) -> str | None:
        """Why a column of this family cannot have `n_categories` categories (None: it can)."""
        return "takes no categories" if n_categories else None

    # ---- the user's values ---------------------------------------------------------------------
    def invalid(self, x: np.ndarray) -> np.ndarray:
        """Which finite numbers lie outside the support (vectorised `check`). Numeric families only."""
        return np.zeros(np.shape(x), dtype=bool)

    def check(self, x: float) -> str | None:
        """Why a finite number does not fit the support (None: it fits). Numeric families only."""
        return None

    def implausible(self, v: float) -> str | None:
        """Why a valid value on the normalised scale lies too far out for the model to say anything."""
        return None

    def to_json(self, x: float) -> float | int:
        """A number in user units as the column's users write it."""
        return float(x)

    def example(self, rng: np.random.Generator, n: int, n_categories: int) -> np.ndarray:
        """`n` valid values on the normalised scale (for tracing the exported graph and for tests)."""
        return rng.standard_normal(n)

    def metric_scale(self, stats: Stats | None) -> float:
        """Divides an error on the normalised scale for RMSE_xu (counts are not standardised by `normalise`)."""
        return 1.0

    def normalise(self, x: np.ndarray, stats: Stats | None) -> np.ndarray:
        """User units (validated numbers or category indices) -> the model's normalised scale."""
        return np.asarray(x, dtype=np.float64)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """The part of `normalise` before standardisation (what Stats are computed on)."""
        return np.asarray(x, dtype=np.float64)

    def to_user(self, v: np.ndarray, stats: Stats | None) -> np.ndarray:
        """Normalised values back to user units (elementwise)."""
        return np.asarray(v, dtype=np.float64)

    # ---- the protocol's scale (docs/protocol.md), where accuracy is measured ----------------------------------
    def to_protocol(self, v: np.ndarray, stats: Stats | None) -> np.ndarray:
        """Values on the model's normalised scale -> the protocol's scale (they differ only for warped columns)."""
        return np.asarray(v, dtype=np.float64)

    def protocol_log_jacobian(self, v: np.ndarray, stats: Stats | None) -> np.ndarray:
        """``log |d model / d protocol|`` at model-scale values: added to a model-scale log density, it gives the
        density on the protocol's scale."""
        return np.zeros(np.shape(v))

    def protocol_moments(self, p: np.ndarray, stats: Stats | None) -> tuple[np.ndarray, np.ndarray]:
        """Per-component first and second moments ``[..., K]`` on the protocol's scale."""
        return self.moments(p)

    # ---- components ------------------------------------------------------------------------------
    def component_params(self, natural: np.ndarray, n_categories: int) -> np.ndarray:
        """The used part of natural parameters ``[..., K, W] -> [..., K, w]`` (float64, made valid)."""
        raise NotImplementedError

    def check_params(self, p: np.ndarray) -> None:
        """Raises ValueError when ``p [K, w]`` are not valid component parameters."""

    def log_prob(self, p: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``[N] -> [N, K]``: ``log p_k(x_n)``; discrete families give ``-inf`` off their support."""
        raise NotImplementedError

    def sample(self, p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``[..., K, w] -> [..., K]``: one draw from each component."""
        raise NotImplementedError

    def support(self, p: np.ndarray) -> np.ndarray | None:
        """Points to enumerate (discrete families); None for continuous ones."""
        return None

    def moments(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-component first and second moments ``[..., K]`` on the normalised scale."""
        raise NotImplementedError

    def summary_extras(self, p: np.ndarray) -> dict[str, np.ndarray]:
        """Family-specific figures ``{name: [B]}`` the served summaries add for mixtures ``p [B, K, w]``."""
        return {}

    def observed_extras(self, value: float) -> dict[str, float]:
        """The same figures for a value the row gave (certain: 0 or 1 for a probability)."""
        return {}


# ---- numeric families -------------------------------------------------------------------------------------
class Gaussian(Family):
    """real: standardised values, N(loc, scale) per component."""

    name = "gaussian"
    likelihood = "gaussian"
    warpable = True

    def raw_width(self, n_categories: int) -> int:
        return 2

    def natural_width(self, n_categories: int) -> int:
        return 2

    def normalise(self, x, stats):
        return stats.standardise(self.transform(x))

    def untransform(self, t: np.ndarray) -> np.ndarray:
        """The inverse of `transform` (elementwise)."""
        return np.asarray(t, dtype=np.float64)

    def to_user(self, v, stats):
        return self.untransform(stats.unstandardise(v))

    def to_protocol(self, v, stats):
        return stats.to_protocol(v)

    def protocol_log_jacobian(self, v, stats):
        if stats.warp is None:
            return np.zeros(np.shape(v))
        return stats.warp.log_derivative(v)

    def protocol_moments(self, p, stats):
        if stats is None or stats.warp is None:
            return self.moments(p)
        u = stats.warp.inverse(_nodes(p))
        return u @ _GH_WEIGHTS, (u * u) @ _GH_WEIGHTS

    def implausible(self, v):
        if abs(v) <= MAX_STANDARD_DEVIATIONS:
            return None
        return f"{abs(v):.3g} standard deviations from the training data's mean"

    def component_params(self, natural, n_categories):
        return np.asarray(natural[..., :2], dtype=np.float64)

    def check_params(self, p):
        if p.shape[-1] != 2:
            raise ValueError(f"gaussian mixture params must have shape [K, 2] (loc, scale); got {p.shape}")
        if np.any(p[:, 1] <= 0):
            raise ValueError("gaussian mixture scales must be > 0")

    def log_prob(self, p, x):
        loc, scale = p[:, 0], p[:, 1]
        out = np.subtract(x[:, None], loc[None, :])  # in place from here on: these tables are [K, K]
        out *= 1.0 / scale[None, :]
        np.square(out, out=out)
        out *= -0.5
        out -= (np.log(scale) + 0.5 * _LOG_2PI)[None, :]
        return out

    def sample(self, p, rng):
        return rng.normal(p[..., 0], p[..., 1])

    def moments(self, p):
        loc, scale = p[..., 0], p[..., 1]
        return loc, scale**2 + loc**2

    def point(self, p: np.ndarray, stats: Stats | None) -> np.ndarray:
        """The point imputation ``[B]`` in user units: the predictive mean on the protocol's scale, mapped back
        (what RMSE_xu scores; for positive columns exp(E[log(1 + x)]) - 1, robust to a heavy right tail)."""
        return self.untransform(self.protocol_moments(p, stats)[0].mean(-1) * stats.std + stats.mean)

    def user_moments(self, p: np.ndarray, stats: Stats) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation ``[B]`` in user units of the equal-weight mixtures ``p [B, K, 2]``."""
        if stats.warp is not None:
            return self._warped_user_moments(p, stats)
        loc, scale = p[..., 0] * stats.std + stats.mean, p[..., 1] * stats.std
        mean = loc.mean(-1)
        return mean, _std(mean, (scale**2 + loc**2).mean(-1))

    def _warped_user_moments(self, p: np.ndarray, stats: Stats) -> tuple[np.ndarray, np.ndarray]:
        """Through a warp there are no closed forms: Gauss-Hermite quadrature per component (exact enough for
        the smooth, at most exponential maps a warp and log1p make)."""
        with np.errstate(over="ignore", invalid="ignore"):
            x = self.to_user(_nodes(p), stats)
        m1, m2 = x @ _GH_WEIGHTS, (x * x) @ _GH_WEIGHTS
        mean = m1.mean(-1)
        return mean, _std(mean, m2.mean(-1))

    def user_draws(self, p: np.ndarray, stats: Stats, rng: np.random.Generator, draws: int) -> np.ndarray:
        """`draws` values per component in user units: ``[B, K * draws]``."""
        loc = np.repeat(p[..., 0], draws, axis=-1)
        scale = np.repeat(p[..., 1], draws, axis=-1)
        return self.to_user(loc + scale * rng.standard_normal(loc.shape), stats)


class LogNormal(Gaussian):
    """positive: log(1 + x), standardised; Gaussian on that scale, so x = exp(v) - 1 is log-normal."""

    name = "lognormal"

    def invalid(self, x):
        return np.asarray(x) < 0

    def check(self, x):
        return f"negative value {x:g} in a positive column" if x < 0 else None

    def transform(self, x):
        return np.log1p(np.asarray(x, dtype=np.float64))

    def untransform(self, t):
        return np.maximum(np.expm1(np.asarray(t, dtype=np.float64)), 0.0)  # rounding can dip below 0

    def user_moments(self, p, stats):
        if stats.warp is not None:
            return self._warped_user_moments(p, stats)
        loc, scale = p[..., 0] * stats.std + stats.mean, p[..., 1] * stats.std
        m1 = np.exp(np.minimum(loc + 0.5 * scale**2, _MAX_EXP))
        m2 = np.exp(np.minimum(2 * loc + 2 * scale**2, _MAX_EXP))
        mean = np.maximum(m1.mean(-1) - 1.0, 0.0)
        return mean, _std(mean, m2.mean(-1) - 2 * m1.mean(-1) + 1.0)


class ZeroLogNormal(LogNormal):
    """zero_positive: a non-negative column with many exact zeros: a point mass at 0 (probability pi) and the
    positive family's log-normal on log(1 + x) for the rest.

    The model's scale is ``v = log(1 + x) / std`` (the protocol's standardisation without its shift, so that a
    zero is exactly ``v = 0``, which the likelihoods recognise); the protocol's scale is ``v - mean / std``.
    Natural parameters ``(loc, scale, pi)``: the positive part's Gaussian on v, and the probability of zero.
    """

    name = "zero_lognormal"
    likelihood = "zero_lognormal"
    warpable = False
    extras = ("probability_zero",)

    def raw_width(self, n_categories: int) -> int:
        return 3

    def natural_width(self, n_categories: int) -> int:
        return 3

    def example(self, rng, n, n_categories):
        return np.where(rng.random(n) < 0.3, 0.0, np.abs(rng.standard_normal(n)) + 0.1)

    def normalise(self, x, stats):
        return self.transform(x) / stats.std

    def to_user(self, v, stats):
        return self.untransform(np.asarray(v, dtype=np.float64) * stats.std)

    def to_protocol(self, v, stats):
        return np.asarray(v, dtype=np.float64) - stats.mean / stats.std

    def protocol_log_jacobian(self, v, stats):
        return np.zeros(np.shape(v))

    def protocol_moments(self, p, stats):
        m1, m2 = self.moments(p)
        c = stats.mean / stats.std
        return m1 - c, m2 - 2.0 * c * m1 + c * c

    def component_params(self, natural, n_categories):
        p = np.array(natural[..., :3], dtype=np.float64)
        p[..., 2] = np.clip(p[..., 2], 0.0, 1.0)
        return p

    def check_params(self, p):
        if p.shape[-1] != 3:
            raise ValueError(f"zero_lognormal mixture params must have shape [K, 3] (loc, scale, pi); got {p.shape}")
        if np.any(p[:, 1] <= 0):
            raise ValueError("zero_lognormal mixture scales must be > 0")
        if np.any((p[:, 2] < 0) | (p[:, 2] > 1)):
            raise ValueError("zero_lognormal mixture zero probabilities must lie in [0, 1]")

    def log_prob(self, p, x):
        """A probability (mass) at 0, a density on the positive part: ``log pi`` or ``log(1 - pi) + log N``."""
        loc, scale, pi = p[:, 0], p[:, 1], p[:, 2]
        u = (x[:, None] - loc[None, :]) / scale[None, :]
        with np.errstate(divide="ignore"):
            positive = np.log1p(-pi)[None, :] - 0.5 * u * u - (np.log(scale) + 0.5 * _LOG_2PI)[None, :]
            zero = np.broadcast_to(np.log(pi)[None, :], positive.shape)
        return np.where((x == 0)[:, None], zero, positive)

    def sample(self, p, rng):
        v = rng.normal(p[..., 0], p[..., 1])
        return np.where(rng.random(v.shape) < p[..., 2], 0.0, v)

    def moments(self, p):
        loc, scale, pi = p[..., 0], p[..., 1], p[..., 2]
        return (1.0 - pi) * loc, (1.0 - pi) * (scale**2 + loc**2)

    def point(self, p, stats):
        return self.to_user(self.moments(p)[0].mean(-1), stats)

    def user_moments(self, p, stats):
        loc, scale, keep = p[..., 0] * stats.std, p[..., 1] * stats.std, 1.0 - p[..., 2]
        m1 = np.exp(np.minimum(loc + 0.5 * scale**2, _MAX_EXP)) - 1.0
        m2 = np.exp(np.minimum(2 * loc + 2 * scale**2, _MAX_EXP)) - 2.0 * m1 - 1.0  # E[(e^Y - 1)^2]
        mean = np.maximum((keep * m1).mean(-1), 0.0)
        return mean, _std(mean, (keep * m2).mean(-1))

    def user_draws(self, p, stats, rng, draws):
        loc = np.repeat(p[..., 0], draws, axis=-1)
        scale = np.repeat(p[..., 1], draws, axis=-1)
        pi = np.repeat(p[..., 2], draws, axis=-1)
        x = self.to_user(loc + scale * rng.standard_normal(loc.shape), stats)
        return np.where(rng.random(loc.shape) < pi, 0.0, x)

    def summary_extras(self, p):
        return {"probability_zero": p[..., 2].mean(-1)}

    def observed_extras(self, value):
        return {"probability_zero": float(value == 0)}


class Poisson(Family):
    """count: the raw count, Poisson(rate) per component."""

    name = "poisson"
    likelihood = "poisson"
    countable = True

    def raw_width(self, n_categories: int) -> int:
        return 1

    def natural_width(self, n_categories: int) -> int:
        return 1

    def invalid(self, x):
        x = np.asarray(x)
        return (x < 0) | (x != np.round(x))

    def check(self, x):
        if x < 0:
            return f"negative value {x:g} in a count column"
        return None if x == round(x) else f"non-integer value {x:g} in a count column"

    def implausible(self, v):
        return f"above {MAX_COUNT:g}" if v > MAX_COUNT else None

    def to_json(self, x):
        return int(round(x))

    def example(self, rng, n, n_categories):
        return rng.integers(0, 5, n).astype(np.float64)

    def metric_scale(self, stats):
        return stats.std

    def component_params(self, natural, n_categories):
        return np.maximum(np.asarray(natural[..., :1], dtype=np.float64), _MIN_RATE)

    def check_params(self, p):
        if p.shape[-1] != 1:
            raise ValueError(f"poisson mixture params must have shape [K, 1] (rate); got {p.shape}")
        if np.any(p[:, 0] <= 0):
            raise ValueError("poisson mixture rates must be > 0")

    def log_prob(self, p, x):
        valid = _integers(x)
        valid_x = np.where(valid, x, 0.0)
        rate = p[:, 0]
        out = valid_x[:, None] * np.log(rate)[None, :] - rate[None, :] - log_factorial(valid_x)[:, None]
        return np.where(valid[:, None], out, -np.inf)

    def sample(self, p, rng):
        return rng.poisson(p[..., 0]).astype(np.float64)

    def support(self, p):
        """``0..cutoff`` with ``cutoff = ceil(r + 10 sqrt(r) + 10)`` for the largest rate; the mixture's tail mass
        beyond it is < 1e-6 (checked, and the cutoff extended if ever needed)."""
        r = float(np.max(p[:, 0]))
        cutoff = int(math.ceil(r + 10.0 * math.sqrt(r) + 10.0))
        while True:
            pts = np.arange(cutoff + 1, dtype=np.float64)
            mass = float(np.mean(np.exp(logsumexp(self.log_prob(p, pts), axis=0))))
            if 1.0 - mass < _POISSON_TAIL:
                return pts
            cutoff *= 2  # pragma: no cover - the Chernoff bound makes the first cutoff sufficient

    def moments(self, p):
        rate = p[..., 0]
        return rate, rate + rate**2

    def point(self, p, stats):
        return p[..., 0].mean(-1)

    def user_moments(self, p, stats):
        rate = p[..., 0]
        mean = rate.mean(-1)
        return mean, _std(mean, (rate + rate**2).mean(-1))

    def user_draws(self, p, stats, rng, draws):
        return rng.poisson(np.repeat(p[..., 0], draws, axis=-1)).astype(np.float64)


# ---- discrete families ------------------------------------------------------------------------------------
class Categorical(Family):
    """categorical: the category's index, class probabilities per component."""

    name = "categorical"
    likelihood = "categorical"
    discrete = True
    countable = True
    uses_stats = False

    def raw_width(self, n_categories: int) -> int:
        return n_categories

    def natural_width(self, n_categories: int) -> int:
        return n_categories

    def check_categories(self, n_categories):
        return None if n_categories >= 2 else "categorical needs at least 2 categories"

    def example(self, rng, n, n_categories):
        return rng.integers(0, n_categories, n).astype(np.float64)

    def component_params(self, natural, n_categories):
        probs = np.clip(np.asarray(natural[..., :n_categories], dtype=np.float64), 0.0, None)
        return probs / probs.sum(-1, keepdims=True)

    def check_params(self, p):
        if p.shape[-1] < 1:
            raise ValueError(f"categorical mixture params must have shape [K, C] with C >= 1; got {p.shape}")
        if np.any(p < 0):
            raise ValueError("categorical mixture probabilities must be >= 0")
        sums = p.sum(axis=1)
        if np.any(np.abs(sums - 1.0) > _PROB_SUM_TOL):
            worst = int(np.argmax(np.abs(sums - 1.0)))
            raise ValueError(
                f"categorical mixture probabilities must sum to 1 per component; component {worst} sums to "
                f"{sums[worst]:.8g}"
            )

    def log_prob(self, p, x):
        valid = _integers(x) & (x < p.shape[1])
        idx = np.where(valid, x, 0.0).astype(np.int64)
        with np.errstate(divide="ignore"):
            out = np.log(p[:, idx].T)
        return np.where(valid[:, None], out, -np.inf)

    def sample(self, p, rng):
        cdf = np.cumsum(p, axis=-1)
        u = rng.random(cdf.shape[:-1]) * cdf[..., -1]
        idx = np.sum(cdf < u[..., None], axis=-1)
        return np.minimum(idx, p.shape[-1] - 1).astype(np.float64)

    def support(self, p):
        return np.arange(p.shape[1], dtype=np.float64)

    def moments(self, p):
        idx = np.arange(p.shape[-1], dtype=np.float64)
        return p @ idx, p @ idx**2

    def probabilities(self, natural: np.ndarray, n_categories: int) -> np.ndarray:
        """Class probabilities ``[B, n]`` of the equal-weight mixtures of natural parameters ``[B, K, W]``."""
        probs = np.clip(np.asarray(natural[..., :n_categories], dtype=np.float64), 0.0, None).mean(1)
        return probs / probs.sum(-1, keepdims=True)


class Bernoulli(Categorical):
    """binary: the index of one of two categories; natural parameters (1 - p, p)."""

    name = "bernoulli"
    likelihood = "bernoulli"

    def raw_width(self, n_categories: int) -> int:
        return 1

    def natural_width(self, n_categories: int) -> int:
        return 2

    def check_categories(self, n_categories):
        return None if n_categories == 2 else f"binary needs exactly 2 categories, got {n_categories}"


def _nodes(p: np.ndarray) -> np.ndarray:
    """Gauss-Hermite nodes ``[..., K, n]`` of Gaussian components ``p [..., K, 2]`` (loc, scale)."""
    return p[..., 0, None] + p[..., 1, None] * _GH_NODES


def _std(mean: np.ndarray, second: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(second - mean**2, 0.0))


def _integers(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x) & (x >= 0) & (x == np.floor(x))


# The type table: a column's type -> its family.
FAMILIES: dict[str, Family] = {
    "real": Gaussian(),
    "positive": LogNormal(),
    "zero_positive": ZeroLogNormal(),
    "count": Poisson(),
    "binary": Bernoulli(),
    "categorical": Categorical(),
}
# Families by name (acquisition's mixtures may be given a family name).
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES.values()}


def family(name_or_family: str | Family) -> Family:
    if isinstance(name_or_family, Family):
        return name_or_family
    try:
        return BY_NAME[name_or_family]
    except KeyError:
        raise ValueError(f"unknown family {name_or_family!r} (expected one of {', '.join(BY_NAME)})") from None
