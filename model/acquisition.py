"""Information-based feature acquisition: mutual information of posterior-sample mixtures, ranking, stopping.

numpy only (no torch, no scipy): the inference service runs on numpy + onnxruntime.

Setting
-------
For one row with missing values the model produces K posterior samples. For sample ``k`` it gives, for every
unobserved feature ``x_i``, a distribution ``p_k(x_i)``, and for the target the distribution ``q_k(y)`` it would have
were ``x_i`` observed at the value sample ``k`` drew for it (the sampler graph's ``target_given`` output: the
model's predictor reads an observed feature directly, so ``y`` follows the sampled ``x_i``). The joint predictive is
the equal-weight mixture of these components,

    p(x_i, y | x_O) = 1/K sum_k p_k(x_i) q_k(y),

and acquisition ranks the candidates by the mutual information ``I(y; x_i | x_O)`` of that mixture. Variables are on
the model's normalised scale, where each component belongs to a likelihood family (``model.families``): gaussian
(loc, scale), poisson (rate) or categorical / bernoulli (probabilities). MI is invariant to invertible transforms of
either variable, so computing it on this scale is exact.

Estimators (:func:`mixture_information`)
----------------------------------------
All estimators are Rao-Blackwellised: they evaluate the model's own likelihoods instead of binning samples.

* **discrete x discrete** - exact: ``P(a, b) = mean_k p_k(a) q_k(b)`` is enumerated over the finite supports
  (categorical: all classes; poisson: ``0..cutoff`` with tail mass < 1e-6) and
  ``I = sum P log(P / (Px Py))``. No randomness at all.
* **discrete D x gaussian G** - ``I = H(D) - E_g[H(D | g)]``. ``H(D)`` is exact; the expectation uses one draw
  ``g_j ~ component j`` for every ``j`` (a stratified sample of the mixture marginal) and the conditional
  ``P(D = a | g_j) ∝ sum_k p_k(a) q_k(g_j)`` is computed exactly over D's support. Only a 1-d expectation is Monte
  Carlo, over a bounded integrand (``0 <= H(D | g) <= log |support|``).
* **gaussian x gaussian** - draw ``(x_j, y_j)`` from component ``j`` for every ``j`` and average the log density ratio
  of the mixture, ``log p(x_j, y_j) - log p(x_j) - log p(y_j)``, each mixture density being an exact log-sum-exp
  over the K components: ``lse_k(LX[j,k] + LY[j,k]) - lse_k(LX[j,k]) - lse_k(LY[j,k]) + log K``.

Every estimate is clipped at ``>= 0``. Everything is computed in log space and vectorised over components (cost
``O(K^2)`` per pair, chunked to bound memory).

Why not the histogram baseline (:func:`histogram_information`)
--------------------------------------------------------------
The paper's baseline draws one joint sample per posterior sample and takes the plug-in MI of a 2-d histogram. With
K ~ 50..1000 samples that estimator has a large bias of unknown sign: binning a continuous variable discards
information (downward bias, worse for few bins) while the plug-in estimate of a sparse table is inflated by roughly
``(Bx - 1)(By - 1) / (2N)`` nats (upward bias, worse for many bins), and the two cannot both be made small at small
N. The mixture estimator has no binning at all, is exact over discrete supports (zero variance when both variables
are discrete) and its only Monte-Carlo step averages smooth, bounded log-ratios of exact mixture densities, so its
error shrinks like ``1/sqrt(K)`` with no bias from the discretisation. Features with near-equal gains are therefore
ranked consistently rather than by histogram noise. :func:`batch_information` additionally uses common random numbers
(the same target draws for every feature), which makes the *differences* between features even less noisy.

Ranking and stopping
--------------------
:func:`rank_features` orders candidates by gain (or gain per unit cost); :func:`stopping_advice` says whether asking
for more features is still worthwhile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hhvaem.model.families import Family, family, logsumexp

__all__ = [
    "Gain",
    "Mixture",
    "RankedFeature",
    "StoppingAdvice",
    "batch_information",
    "histogram_information",
    "mixture_gain",
    "mixture_information",
    "rank_features",
    "stopping_advice",
]

# Upper bound on the number of float64 elements of the [rows, K] blocks built at once (~32 MB per block).
_CHUNK_ELEMENTS = 1 << 22
# In the scaled matrix-product log-sum-exp, results this far below the row maxima are recomputed exactly.
_UNDERFLOW_GUARD = -600.0


# --------------------------------------------------------------------------------------------------- helpers


def _row_max(a: np.ndarray) -> np.ndarray:
    m = np.max(a, axis=1)
    return np.where(np.isfinite(m), m, 0.0)


def _log_matmul_exp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``out[i, j] = log sum_k exp(a[i, k] + b[j, k])`` for ``a [n, K]``, ``b [m, K]``.

    Computed as a matrix product of row-max-shifted exponentials (``O(n m K)`` time, ``O(n m)`` extra memory). Entries
    that come out far below the shift (where the scaled sum may have lost precision to underflow) are recomputed with
    an exact log-sum-exp over their pair of rows.
    """
    ma, mb = _row_max(a), _row_max(b)
    prod = np.exp(a - ma[:, None]) @ np.exp(b - mb[:, None]).T
    with np.errstate(divide="ignore"):
        scaled = np.log(prod)
    out = scaled + ma[:, None] + mb[None, :]
    rows_ok = np.isfinite(np.max(a, axis=1))[:, None] & np.isfinite(np.max(b, axis=1))[None, :]
    redo_i, redo_j = np.nonzero(rows_ok & (scaled < _UNDERFLOW_GUARD))
    if redo_i.size:
        step = max(1, _CHUNK_ELEMENTS // a.shape[1])
        for s in range(0, redo_i.size, step):
            ii, jj = redo_i[s : s + step], redo_j[s : s + step]
            out[ii, jj] = logsumexp(a[ii] + b[jj], axis=1)
    return out


def _entropy_of_log_probs(logp: np.ndarray, axis: int = 0) -> np.ndarray:
    """``-sum p log p`` along ``axis`` for log-probabilities (``-inf`` entries contribute 0)."""
    finite = np.isfinite(logp)
    safe = np.where(finite, logp, 0.0)
    return -np.sum(np.where(finite, np.exp(safe) * safe, 0.0), axis=axis)


def _default_rng(rng: np.random.Generator | None) -> np.random.Generator:
    # A fixed seed keeps results reproducible when the caller does not care about the stream.
    return rng if rng is not None else np.random.default_rng(0)


# --------------------------------------------------------------------------------------------------- Mixture


@dataclass(frozen=True, eq=False)  # eq=False: identity equality/hash (an ndarray field has neither)
class Mixture:
    """Equal-weight mixture of K components of one likelihood family, on the model's normalised scale.

    ``params`` is ``[K, w]`` float64 in the family's component form (``Family.component_params``): gaussian
    ``(loc, scale > 0)``, poisson ``(rate > 0,)``, categorical ``(p_0 .. p_{C-1})`` with rows summing to 1 (binary
    variables are C = 2). ``family`` is a :class:`Family` or its name. The stored array is a read-only float64 copy.
    """

    family: Family
    params: np.ndarray

    def __post_init__(self) -> None:
        fam = family(self.family)
        try:
            params = np.array(self.params, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{fam.name} mixture params must be a numeric [K, P] array: {exc}") from exc
        if params.ndim != 2 or params.shape[0] < 1:
            raise ValueError(f"{fam.name} mixture params must have shape [K, P] with K >= 1; got {params.shape}")
        if not np.all(np.isfinite(params)):
            raise ValueError(f"{fam.name} mixture params contain non-finite values")
        fam.check_params(params)
        if fam.discrete:
            params = params / params.sum(axis=1)[:, None]
        params.setflags(write=False)
        object.__setattr__(self, "family", fam)
        object.__setattr__(self, "params", params)

    # ---------------------------------------------------------------- basic properties

    @property
    def k(self) -> int:
        """Number of components."""
        return int(self.params.shape[0])

    @property
    def discrete(self) -> bool:
        """Whether the support is countable (categories, counts): enumerated exactly instead of sampled."""
        return self.family.countable

    def mean(self) -> float:
        """Mean of the mixture (categorical: of the class index 0..C-1)."""
        return float(np.mean(self.family.moments(self.params)[0]))

    def variance(self) -> float:
        """Variance of the mixture by the law of total variance: ``E_k[E[v^2 | k]] - mean^2``."""
        m1, m2 = self.family.moments(self.params)
        mean = float(np.mean(m1))
        # E[Var | k] + Var(E | k), computed as the mean of the per-component second moment minus the squared mean,
        # but centred first to avoid cancellation when |mean| >> std.
        centred = float(np.mean(m2 - m1**2) + np.mean((m1 - mean) ** 2))
        return max(centred, 0.0)

    # ---------------------------------------------------------------- densities and draws

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """``[N] -> [N, K]``: ``log p_k(x_n)``. Discrete families give ``-inf`` off their support (non-integers too)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim > 1:
            raise ValueError(f"log_prob expects a 1-d array of points; got shape {x.shape}")
        return self.family.log_prob(self.params, np.atleast_1d(x))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """``[K]``: one draw from each component (float64; integer-valued for discrete families)."""
        return self.family.sample(self.params, rng)

    def support(self) -> np.ndarray | None:
        """Points to enumerate for discrete families (poisson: ``0..cutoff``, tail mass < 1e-6); ``None`` else."""
        return self.family.support(self.params)

    def log_marginal(self, x: np.ndarray) -> np.ndarray:
        """``[N]``: log density (or mass) of the mixture at ``x``."""
        return logsumexp(self.log_prob(x), axis=1) - math.log(self.k)

    def entropy(self, rng: np.random.Generator | None = None) -> float:
        """Entropy of the mixture in nats: exact over the support for discrete families, Monte Carlo for gaussian
        (one draw per component; ``rng=None`` uses a fixed seed)."""
        if self.discrete:
            return float(_entropy_of_log_probs(self.log_marginal(self.support())))
        draws = self.sample(_default_rng(rng))
        return float(-np.mean(self.log_marginal(draws)))


# --------------------------------------------------------------------------------------------------- MI


@dataclass(frozen=True)
class _Prepared:
    """One variable's log-likelihood table: over its support (discrete, [S, K]) or at one draw per component
    (gaussian, [K, K]: row j = the draw from component j)."""

    logp: np.ndarray
    discrete: bool

    @property
    def k(self) -> int:
        return self.logp.shape[1]

    def only(self, keep: np.ndarray) -> _Prepared:
        """The table of the mixture of the components `keep` (and their draws) alone."""
        logp = self.logp[:, keep] if self.discrete else self.logp[np.ix_(keep, keep)]
        return _Prepared(logp, self.discrete)


def _prepare(m: Mixture, rng: np.random.Generator) -> _Prepared:
    if m.discrete:
        return _Prepared(m.log_prob(m.support()), True)
    return _Prepared(m.log_prob(m.sample(rng)), False)


def _discrete_discrete(a: _Prepared, b: _Prepared) -> float:
    k = a.k
    log_joint = _log_matmul_exp(a.logp, b.logp) - math.log(k)  # [Sa, Sb]
    log_pa = logsumexp(a.logp, axis=1) - math.log(k)
    log_pb = logsumexp(b.logp, axis=1) - math.log(k)
    finite = np.isfinite(log_joint)
    safe = np.where(finite, log_joint, 0.0)
    terms = np.exp(safe) * (safe - log_pa[:, None] - log_pb[None, :])
    return float(np.sum(np.where(finite, terms, 0.0)))


def _discrete_gaussian(d: _Prepared, g: _Prepared) -> float:
    log_joint = _log_matmul_exp(d.logp, g.logp)  # [S, J]: log sum_k p_k(a) q_k(g_j) (up to 1/K)
    log_cond = log_joint - logsumexp(log_joint, axis=0)[None, :]  # log P(D = a | g_j)
    entropy = float(_entropy_of_log_probs(logsumexp(d.logp, axis=1) - math.log(d.k)))
    return entropy - float(np.mean(_entropy_of_log_probs(log_cond, axis=0)))


def _gaussian_gaussian(a: _Prepared, b: _Prepared) -> float:
    k = a.k
    total = 0.0
    step = max(1, _CHUNK_ELEMENTS // k)
    for s in range(0, k, step):
        la, lb = a.logp[s : s + step], b.logp[s : s + step]
        # Row-max-shifted exponentials serve all three log-sum-exps: lse(la + lb) = log sum(ea * eb) + ma + mb.
        ma, mb = _row_max(la), _row_max(lb)
        ea, eb = np.exp(la - ma[:, None]), np.exp(lb - mb[:, None])
        with np.errstate(divide="ignore"):
            log_joint = np.log(np.einsum("jk,jk->j", ea, eb))
        redo = np.nonzero(log_joint < _UNDERFLOW_GUARD)[0]  # products underflowed: recompute those rows exactly
        if redo.size:
            log_joint[redo] = logsumexp(la[redo] + lb[redo], axis=1) - ma[redo] - mb[redo]
        total += float(np.sum(log_joint - np.log(ea.sum(axis=1)) - np.log(eb.sum(axis=1))))
    return total / k + math.log(k)


def _estimate(a: _Prepared, b: _Prepared) -> float:
    """The MI estimate of the two tables (unclipped)."""
    if a.k != b.k:
        raise ValueError(f"mixtures must have the same number of components; got {a.k} and {b.k}")
    if a.discrete and b.discrete:
        mi = _discrete_discrete(a, b)
    elif a.discrete:
        mi = _discrete_gaussian(a, b)
    elif b.discrete:
        mi = _discrete_gaussian(b, a)
    else:
        mi = _gaussian_gaussian(a, b)
    if not math.isfinite(mi):
        raise FloatingPointError(f"mutual information estimate is not finite ({mi})")
    return mi


def _information(a: _Prepared, b: _Prepared) -> float:
    return max(_estimate(a, b), 0.0)


# The Monte Carlo error of a gain comes from its K posterior samples (independent chains) and their draws. Batch
# means: the gain is estimated again on each of this many disjoint groups of the samples; the groups' spread over
# sqrt(groups) is the standard error of the whole estimate (checked against repeated posteriors in the tests), at
# 1/groups of the cost of the estimate itself.
SE_GROUPS = 10


@dataclass(frozen=True, eq=False)
class Gain:
    """An information gain estimate: `value` (clipped at >= 0), its Monte Carlo standard error `se`, and the
    estimates on the groups of samples (compare two gains on the same samples with `difference_se`)."""

    value: float
    se: float
    groups: np.ndarray

    @classmethod
    def of(cls, a: _Prepared, b: _Prepared) -> Gain:
        estimates = _group_estimates(a, b, min(SE_GROUPS, a.k // 2)) if a.k >= 4 else np.zeros(0)
        return cls(max(_estimate(a, b), 0.0), batch_se(estimates), estimates)

    def difference_se(self, other: Gain) -> float:
        """Standard error of self - other, paired over the common posterior samples (common random numbers)."""
        return batch_se(self.groups - other.groups)


def _group_estimates(a: _Prepared, b: _Prepared, g: int) -> np.ndarray:
    """[g] MI estimates, one per disjoint group of m = K // g components (and their draws), all at once."""
    m = a.k // g

    def blocks(t: _Prepared) -> np.ndarray:  # discrete: [g, S, m]; gaussian (draws x components): [g, m, m]
        if t.discrete:
            return t.logp[:, : g * m].reshape(-1, g, m).transpose(1, 0, 2)
        square = t.logp[: g * m, : g * m].reshape(g, m, g, m)
        return square[np.arange(g), :, np.arange(g), :]

    la, lb, log_m = blocks(a), blocks(b), math.log(m)
    if a.discrete and b.discrete:
        pa, pb = np.exp(la), np.exp(lb)
        joint = np.einsum("gak,gbk->gab", pa, pb) / m
        outer = pa.mean(2)[:, :, None] * pb.mean(2)[:, None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(joint > 0, joint * np.log(joint / outer), 0.0)
        return terms.sum((1, 2))
    if a.discrete or b.discrete:
        d, gs = (la, lb) if a.discrete else (lb, la)
        log_joint = logsumexp(d[:, :, None, :] + gs[:, None, :, :], axis=-1)  # [g, S, m draws]
        log_cond = log_joint - logsumexp(log_joint, axis=1)[:, None, :]
        entropy = _entropy_of_log_probs(logsumexp(d, axis=2) - log_m, axis=1)  # [g]
        return entropy - _entropy_of_log_probs(log_cond, axis=1).mean(1)
    terms = logsumexp(la + lb, axis=2) - logsumexp(la, axis=2) - logsumexp(lb, axis=2) + log_m
    return terms.mean(1)


def batch_se(estimates: np.ndarray) -> float:
    """sd / sqrt(groups) of the groups' estimates (inf with fewer than 2)."""
    g = len(estimates)
    return float(estimates.std(ddof=1) / math.sqrt(g)) if g >= 2 else float("inf")


def mixture_information(x: Mixture, y: Mixture, rng: np.random.Generator | None = None) -> float:
    """I(x; y) in nats for p(x, y) = 1/K sum_k p_k(x) q_k(y).

    Exact when both variables are discrete; otherwise a Rao-Blackwellised Monte-Carlo estimate using one draw per
    component (see the module docstring). Clipped at >= 0. ``rng=None`` uses a fixed seed (reproducible results);
    ``rng`` is not used at all when both variables are discrete.
    """
    return mixture_gain(x, y, rng).value


def mixture_gain(x: Mixture, y: Mixture, rng: np.random.Generator | None = None) -> Gain:
    """`mixture_information` with its Monte Carlo standard error (over the K posterior samples, and the draws)."""
    if x.k != y.k:
        raise ValueError(f"mixtures must have the same number of components; got {x.k} and {y.k}")
    rng = _default_rng(rng)
    return Gain.of(_prepare(x, rng), _prepare(y, rng))


def batch_information(features: Sequence[Mixture], y: Mixture, rng: np.random.Generator | None = None) -> np.ndarray:
    """``[len(features)]`` gains ``I(y; x_i)``, one per candidate feature.

    The target's likelihood table (and, for a gaussian target, its draws) is computed once and shared by all
    features: common random numbers make the differences between candidates less noisy than independent estimates.
    """
    rng = _default_rng(rng)
    gains = np.zeros(len(features), dtype=np.float64)
    if not features:
        return gains
    for i, f in enumerate(features):
        if f.k != y.k:
            raise ValueError(f"feature {i} has {f.k} components but the target has {y.k}")
    target = _prepare(y, rng)
    for i, f in enumerate(features):
        gains[i] = _information(_prepare(f, rng), target)
    return gains


# --------------------------------------------------------------------------------------------------- histogram baseline


def _default_bins(n: int) -> int:
    """``ceil(sqrt(N / 5))`` clipped to [2, 20]: about five samples per bin along each axis on average at the low end,
    while capping the plug-in's upward bias ``(B - 1)^2 / (2N)`` for large N."""
    return int(min(20, max(2, math.ceil(math.sqrt(n / 5.0)))))


def _bin_codes(v: np.ndarray, discrete: bool, bins: int) -> np.ndarray:
    if discrete:
        return np.unique(v, return_inverse=True)[1].reshape(-1)
    lo, hi = float(np.min(v)), float(np.max(v))
    if hi <= lo:
        return np.zeros(v.shape[0], dtype=np.int64)
    codes = np.floor((v - lo) / (hi - lo) * bins).astype(np.int64)
    return np.clip(codes, 0, bins - 1)


def histogram_information(
    x: np.ndarray,
    y: np.ndarray,
    x_discrete: bool = False,
    y_discrete: bool = False,
    bins: int | None = None,
) -> float:
    """Baseline: plug-in MI (nats) of the 2-d histogram of joint samples ``(x_j, y_j)``.

    Discrete variables use their distinct values as bins; continuous ones use ``bins`` equal-width bins over the
    sample range (default ``ceil(sqrt(N / 5))`` clipped to [2, 20]). Clipped at >= 0.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same number of samples; got {x.size} and {y.size}")
    if x.size == 0:
        raise ValueError("histogram_information needs at least one sample")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("histogram_information samples must be finite")
    if bins is None:
        bins = _default_bins(x.size)
    elif int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer; got {bins!r}")
    bins = int(bins)
    cx, cy = _bin_codes(x, x_discrete, bins), _bin_codes(y, y_discrete, bins)
    nx, ny = int(cx.max()) + 1, int(cy.max()) + 1
    joint = np.bincount(cx * ny + cy, minlength=nx * ny).reshape(nx, ny).astype(np.float64) / x.size
    px, py = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    outer = px[:, None] * py[None, :]
    mi = float(np.sum(joint[nz] * np.log(joint[nz] / outer[nz])))
    return max(mi, 0.0)


# --------------------------------------------------------------------------------------------------- ranking / stopping


@dataclass(frozen=True)
class RankedFeature:
    feature: str
    gain: float
    cost: float | None
    gain_per_cost: float | None


def rank_features(
    gains: Mapping[str, float],
    costs: Mapping[str, float] | None = None,
    top_k: int | None = None,
) -> list[RankedFeature]:
    """Candidates ordered best first.

    With ``costs`` the key is ``gain / cost`` (features missing from ``costs`` cost 1.0; every given cost must be
    finite and > 0), otherwise the gain; ties are broken by feature name. ``top_k=None`` returns all.
    """
    if top_k is not None and (int(top_k) != top_k or top_k < 0):
        raise ValueError(f"top_k must be a non-negative integer or None; got {top_k!r}")
    for name, g in gains.items():
        if not math.isfinite(float(g)):
            raise ValueError(f"gain for feature {name!r} must be finite; got {g!r}")
    if costs is not None:
        for name, c in costs.items():
            try:
                cf = float(c)
            except (TypeError, ValueError):
                raise ValueError(f"cost for feature {name!r} must be a number; got {c!r}") from None
            if not (math.isfinite(cf) and cf > 0):
                raise ValueError(f"cost for feature {name!r} must be finite and > 0; got {c!r}")
    ranked = []
    for name, g in gains.items():
        if costs is None:
            ranked.append(RankedFeature(name, float(g), None, None))
        else:
            c = float(costs.get(name, 1.0))
            ranked.append(RankedFeature(name, float(g), c, float(g) / c))
    if costs is None:
        ranked.sort(key=lambda r: (-r.gain, r.feature))
    else:
        ranked.sort(key=lambda r: (-r.gain_per_cost, r.feature))
    return ranked if top_k is None else ranked[: int(top_k)]


@dataclass(frozen=True)
class StoppingAdvice:
    stop: bool
    reason: str
    best_gain: float | None
    uncertainty: float


def stopping_advice(
    best_gain: float | None,
    uncertainty: float,
    min_gain: float = 0.01,
    max_uncertainty: float | None = None,
) -> StoppingAdvice:
    """Whether to stop acquiring features.

    Stop when no candidates remain (``best_gain is None``), when ``best_gain < min_gain`` nats, or when
    ``max_uncertainty`` is given and ``uncertainty <= max_uncertainty``. ``uncertainty`` is the prediction's std
    (numeric target) or its entropy in nats (classification). ``reason`` names every rule that fired, or why
    acquisition should continue.
    """
    uncertainty = float(uncertainty)
    if not math.isfinite(uncertainty) or uncertainty < 0:
        raise ValueError(f"uncertainty must be finite and >= 0; got {uncertainty!r}")
    if not math.isfinite(float(min_gain)):
        raise ValueError(f"min_gain must be finite; got {min_gain!r}")
    if max_uncertainty is not None and not math.isfinite(float(max_uncertainty)):
        raise ValueError(f"max_uncertainty must be finite or None; got {max_uncertainty!r}")
    if best_gain is not None:
        best_gain = float(best_gain)
        if not math.isfinite(best_gain):
            raise ValueError(f"best_gain must be finite or None; got {best_gain!r}")

    fired: list[str] = []
    if best_gain is None:
        fired.append("no candidate features remain")
    elif best_gain < min_gain:
        fired.append(f"best remaining information gain {best_gain:.3g} nats < {min_gain:.3g}")
    if max_uncertainty is not None and uncertainty <= max_uncertainty:
        fired.append(f"prediction uncertainty {uncertainty:.3g} <= {float(max_uncertainty):.3g}")
    if fired:
        return StoppingAdvice(True, "; ".join(fired), best_gain, uncertainty)

    reason = f"best remaining information gain {best_gain:.3g} nats >= {min_gain:.3g}"
    if max_uncertainty is not None:
        reason += f" and prediction uncertainty {uncertainty:.3g} > {float(max_uncertainty):.3g}"
    return StoppingAdvice(False, reason, best_gain, uncertainty)
