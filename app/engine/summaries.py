"""Posterior predictive summaries in the user's units, from the graph's natural parameters (numpy only).

For one column and one row the sampler gives K posterior samples, each with a likelihood
on the normalised scale (see `ColumnLikelihoods.natural`): the predictive distribution is
their equal-weight mixture. Means and standard deviations are the mixture's exact moments
in original units (log-normal moments for positive columns); quantiles come from draws
(`draws` per posterior sample), mapped back to original units; discrete columns get the
mixture's class probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hhvaem.model.acquisition import Mixture
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Column

# exp() arguments beyond this overflow float64; a log-normal that wide has no useful moments anyway.
_MAX_EXP = 700.0


@dataclass(frozen=True)
class ColumnPredictive:
    """The predictive distribution of one column for a batch of rows: natural params [B, K, W]."""

    column: Column
    params: np.ndarray

    def mixture(self, row: int) -> Mixture:
        """The row's mixture on the normalised scale, in the kind the acquisition estimators take."""
        p = self.params[row].astype(np.float64)
        t = self.column.type
        if t in ("real", "positive"):
            return Mixture("gaussian", p[:, :2])
        if t == "count":
            return Mixture("poisson", np.maximum(p[:, :1], 1e-12))
        k = self.column.n_categories
        probs = np.clip(p[:, :k], 0.0, None)
        return Mixture("categorical", probs / probs.sum(-1, keepdims=True))


def moments(pred: ColumnPredictive, prep: Preprocessor) -> tuple[np.ndarray, np.ndarray]:
    """Mixture mean and standard deviation [B] in original units (numeric columns)."""
    col, p = pred.column, pred.params.astype(np.float64)
    if col.type == "count":
        rate = p[..., 0]
        mean = rate.mean(-1)
        var = (rate + rate**2).mean(-1) - mean**2
        return mean, np.sqrt(np.maximum(var, 0.0))
    s = prep.stats[col.name]
    loc, scale = p[..., 0] * s.std + s.mean, p[..., 1] * s.std
    if col.type == "real":
        mean = loc.mean(-1)
        second = (scale**2 + loc**2).mean(-1)
    else:  # positive: x = exp(v) - 1 with v ~ N(loc, scale) on the log1p scale
        m1 = np.exp(np.minimum(loc + 0.5 * scale**2, _MAX_EXP))
        m2 = np.exp(np.minimum(2 * loc + 2 * scale**2, _MAX_EXP))
        mean = np.maximum(m1.mean(-1) - 1.0, 0.0)
        second = m2.mean(-1) - 2 * m1.mean(-1) + 1.0
    var = np.maximum(second - mean**2, 0.0)
    return mean, np.sqrt(var)


def draw(pred: ColumnPredictive, prep: Preprocessor, rng: np.random.Generator, draws: int) -> np.ndarray:
    """`draws` values per posterior sample, in original units: [B, K * draws] (numeric columns)."""
    col, p = pred.column, pred.params.astype(np.float64)
    if col.type == "count":
        rate = np.repeat(p[..., 0], draws, axis=-1)
        return rng.poisson(rate).astype(np.float64)
    loc = np.repeat(p[..., 0], draws, axis=-1)
    scale = np.repeat(p[..., 1], draws, axis=-1)
    v = loc + scale * rng.standard_normal(loc.shape)
    return prep.to_original(col, v)


def category_probabilities(pred: ColumnPredictive) -> np.ndarray:
    """Mixture class probabilities [B, n_categories] (discrete columns)."""
    k = pred.column.n_categories
    probs = np.clip(pred.params[..., :k].astype(np.float64), 0.0, None).mean(1)
    return probs / probs.sum(-1, keepdims=True)


def json_value(col: Column, x: float) -> Any:
    """A number as the column's users write it: counts as integers."""
    return int(round(x)) if col.type == "count" else float(x)


def summarise(
    pred: ColumnPredictive,
    prep: Preprocessor,
    rng: np.random.Generator,
    quantiles: tuple[float, ...],
    draws: int,
    return_samples: bool,
) -> list[dict[str, Any]]:
    """Per row: {"mean", "std", "quantiles", ["samples"]} or {"mode", "probabilities", ["samples"]}."""
    col = pred.column
    if col.is_discrete:
        probs = category_probabilities(pred)
        out = []
        for b in range(probs.shape[0]):
            d: dict[str, Any] = {
                "mode": col.categories[int(np.argmax(probs[b]))],
                "probabilities": {str(c): float(p) for c, p in zip(col.categories, probs[b])},
            }
            if return_samples:
                k = pred.params.shape[1]
                picks = [rng.choice(col.n_categories, p=probs[b]) for _ in range(k)]
                d["samples"] = [col.categories[i] for i in picks]
            out.append(d)
        return out
    mean, std = moments(pred, prep)
    values = draw(pred, prep, rng, draws)
    qs = sample_quantiles(values, quantiles)
    out = []
    for b in range(len(mean)):
        d = {
            "mean": float(mean[b]),
            "std": float(std[b]),
            "quantiles": {_q_key(q): json_value(col, qs[i, b]) for i, q in enumerate(quantiles)},
        }
        if return_samples:
            d["samples"] = [json_value(col, v) for v in values[b, :: max(draws, 1)]]
        out.append(d)
    return out


def sample_quantiles(values: np.ndarray, quantiles: tuple[float, ...]) -> np.ndarray:
    """Quantiles [Q, B] of draws [B, N], linear interpolation (numpy's default method).

    Written out because np.quantile's generic machinery costs ~0.3 ms per call, more than the
    sort itself for a single row's 1000 draws.
    """
    v = np.sort(values, axis=-1)
    pos = np.asarray(quantiles, dtype=np.float64) * (v.shape[-1] - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, v.shape[-1] - 1)
    w = pos - lo
    return (v[:, lo] * (1 - w) + v[:, hi] * w).T


def point_value(col: Column, summary: dict[str, Any]) -> Any:
    """The single value that fills a hole: the mode of a discrete column, else the mean (counts rounded)."""
    if col.is_discrete:
        return summary["mode"]
    return json_value(col, summary["mean"])


def uncertainty(pred: ColumnPredictive, prep: Preprocessor, row: int) -> float:
    """Standard deviation in original units (numeric) or entropy in nats (discrete) of the prediction."""
    if pred.column.is_discrete:
        p = category_probabilities(pred)[row]
        return float(-(p[p > 0] * np.log(p[p > 0])).sum())
    _, std = moments(pred, prep)
    return float(std[row])


def _q_key(q: float) -> str:
    return f"{q:g}"
