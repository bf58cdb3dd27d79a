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


@dataclass(frozen=True)
class ColumnPredictive:
    """The predictive distribution of one column for a batch of rows: natural params [B, K, W]."""

    column: Column
    params: np.ndarray

    def mixture(self, row: int) -> Mixture:
        """The row's mixture on the normalised scale, in the form the acquisition estimators take."""
        col = self.column
        return Mixture(col.family, col.family.component_params(self.params[row], col.n_categories))


def moments(pred: ColumnPredictive, prep: Preprocessor) -> tuple[np.ndarray, np.ndarray]:
    """Mixture mean and standard deviation [B] in original units (numeric columns)."""
    col = pred.column
    p = col.family.component_params(pred.params, col.n_categories)
    return col.family.user_moments(p, prep.stats.get(col.name))


def draw(pred: ColumnPredictive, prep: Preprocessor, rng: np.random.Generator, draws: int) -> np.ndarray:
    """`draws` values per posterior sample, in original units: [B, K * draws] (numeric columns)."""
    col = pred.column
    p = col.family.component_params(pred.params, col.n_categories)
    return col.family.user_draws(p, prep.stats.get(col.name), rng, draws)


def category_probabilities(pred: ColumnPredictive) -> np.ndarray:
    """Mixture class probabilities [B, n_categories] (discrete columns)."""
    return pred.column.family.probabilities(pred.params, pred.column.n_categories)


def json_value(col: Column, x: float) -> Any:
    """A number as the column's users write it: counts as integers."""
    return col.family.to_json(x)


def summarise(
    pred: ColumnPredictive,
    prep: Preprocessor,
    rng: np.random.Generator,
    quantiles: tuple[float, ...],
    draws: int,
    return_samples: bool,
    levels: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Per row: {"point", "mean", "std", "quantiles", "calibrated", [extras], ["samples"]} or {"mode",
    "probabilities", ["samples"]}, with the Monte Carlo standard errors of the estimates ("mean_se", "quantiles_se",
    "probabilities_se"). The extras are the family's own figures (`Family.summary_extras`: a zero_positive
    column's "probability_zero"). `levels` [B, Q]: the model's levels to read for the nominal `quantiles` (the
    conformal correction, model/calibration.py), else the nominal ones (the model's raw quantiles)."""
    col = pred.column
    if col.is_discrete:
        probs = category_probabilities(pred)
        probs_se = batch_se(category_probabilities(grouped(pred)), len(probs))
        out = []
        for b in range(probs.shape[0]):
            d: dict[str, Any] = {
                "mode": col.categories[int(np.argmax(probs[b]))],
                "probabilities": {str(c): float(p) for c, p in zip(col.categories, probs[b])},
                "probabilities_se": {str(c): float(se) for c, se in zip(col.categories, probs_se[b])},
            }
            if return_samples:
                k = pred.params.shape[1]
                picks = [rng.choice(col.n_categories, p=probs[b]) for _ in range(k)]
                d["samples"] = [col.categories[i] for i in picks]
            out.append(d)
        return out
    mean, std = moments(pred, prep)
    values = draw(pred, prep, rng, draws)  # [B, K * draws], component by component
    b = len(values)
    read = np.broadcast_to(np.asarray(quantiles, np.float64), (b, len(quantiles))) if levels is None else levels
    qs = sample_quantiles(values, read)
    mean_se = batch_se(moments(grouped(pred), prep)[0], b)
    g = n_groups(pred.params.shape[1])
    per_group = values[:, : (values.shape[1] // (g * draws)) * g * draws].reshape(b * g, -1)
    qs_se = batch_se(sample_quantiles(per_group, np.repeat(read, g, axis=0)).T, b)
    params = col.family.component_params(pred.params, col.n_categories)
    point = col.family.point(params, prep.stats.get(col.name))
    extras = col.family.summary_extras(params)  # e.g. a zero-inflated column's probability of zero
    out = []
    for b in range(len(mean)):
        d = {
            "point": json_value(col, point[b]),
            "mean": float(mean[b]),
            "std": float(std[b]),
            "quantiles": {_q_key(q): json_value(col, qs[i, b]) for i, q in enumerate(quantiles)},
            "mean_se": float(mean_se[b]),
            "quantiles_se": {_q_key(q): float(qs_se[b, i]) for i, q in enumerate(quantiles)},
            "calibrated": levels is not None,
        }
        d.update({name: float(v[b]) for name, v in extras.items()})
        if return_samples:
            d["samples"] = [json_value(col, v) for v in values[b, :: max(draws, 1)]]
        out.append(d)
    return out


# Monte Carlo standard errors by batch means: the K posterior samples are independent chains, split into this many
# groups; the spread of an estimate across groups, over sqrt(groups), is the standard error of the whole estimate.
SE_GROUPS = 10


def n_groups(k: int) -> int:
    return max(2, min(SE_GROUPS, k // 2))


def grouped(pred: ColumnPredictive) -> ColumnPredictive:
    """The predictive of each group of samples as a row of its own: params [B * G, K // G, W]."""
    b, k, w = pred.params.shape
    g = n_groups(k)
    return ColumnPredictive(pred.column, pred.params[:, : (k // g) * g].reshape(b * g, k // g, w))


def batch_se(estimates: np.ndarray, rows: int) -> np.ndarray:
    """Standard error [B, ...] of an estimate from its values on each group of samples ([B * G, ...])."""
    e = estimates.reshape(rows, -1, *estimates.shape[1:])
    return e.std(1, ddof=1) / np.sqrt(e.shape[1])


def sample_quantiles(values: np.ndarray, quantiles) -> np.ndarray:
    """Quantiles [Q, B] of draws [B, N], linear interpolation (numpy's default method); `quantiles` the same
    levels [Q] for every row, or each row's own [B, Q].

    Written out because np.quantile's generic machinery costs ~0.3 ms per call, more than the
    sort itself for a single row's 1000 draws.
    """
    v = np.sort(values, axis=-1)
    q = np.broadcast_to(np.asarray(quantiles, dtype=np.float64), (len(v), np.shape(quantiles)[-1]))
    pos = q * (v.shape[-1] - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, v.shape[-1] - 1)
    w = pos - lo
    pick = lambda i: np.take_along_axis(v, i, axis=1)  # noqa: E731
    return (pick(lo) * (1 - w) + pick(hi) * w).T


def point_value(col: Column, summary: dict[str, Any]) -> Any:
    """The single value that fills a hole: the mode of a discrete column, else the point imputation (counts
    rounded)."""
    if col.is_discrete:
        return summary["mode"]
    return summary["point"]


def uncertainty(pred: ColumnPredictive, prep: Preprocessor, row: int) -> float:
    """Standard deviation in original units (numeric) or entropy in nats (discrete) of the prediction."""
    if pred.column.is_discrete:
        p = category_probabilities(pred)[row]
        return float(-(p[p > 0] * np.log(p[p > 0])).sum())
    _, std = moments(pred, prep)
    return float(std[row])


def _q_key(q: float) -> str:
    return f"{q:g}"
