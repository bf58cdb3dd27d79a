"""How plausible each observed value of a row is, given the row's other observed values (numpy only).

For an observed value x_j, the row is run again with x_j hidden (a leave-one-out copy, in the same sampler call as
the answer), and the posterior predictive of x_j given the other observed values is read off that copy:
- a number: the probability of a value at least as extreme, two-sided, 2 min(F(x), 1 - F(x)), with F the
  predictive CDF from the draws the summaries use (mid-ranks for ties), mapped through the column's calibration
  (model/calibration.py) when the model has one, so that p is as honest as the served intervals;
- a category: the probability of a category no more probable than the one given (the sum of the probabilities
  at most its own), so that a rare but expected category is not flagged for being rare.
Below the threshold (the caller's, default DEFAULT_THRESHOLD) the value is called unusual. The answer is a p-value,
not a verdict: about one in 1/threshold of correct values is flagged (docs/plausibility.md measures it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hhvaem.app.engine.errors import FieldError, InputError
from hhvaem.app.engine.summaries import ColumnPredictive, category_probabilities, draw
from hhvaem.model.calibration import GRID, Calibration, bin_of
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Column

DEFAULT_THRESHOLD = 0.01


def leave_one_out(rows: Sequence[Mapping[str, Any]], features: Sequence[str]) -> list[tuple[int, str, dict]]:
    """(row index, feature, the row without that feature) for every observed feature of every row."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            continue
        for name in features:
            if row.get(name) is not None:
                out.append((i, name, {k: v for k, v in row.items() if k != name}))
    return out


def tail_probability(
    col: Column,
    params: np.ndarray,
    value: float,
    prep: Preprocessor,
    rng: np.random.Generator,
    draws: int,
    calibration: Calibration | None,
    observed_share: float,
) -> float:
    """p of `value` (the model's encoding: normalised number or category index) under natural params [K, W]."""
    pred = ColumnPredictive(col, params[None])
    if col.is_discrete:
        probs = category_probabilities(pred)[0]
        own = probs[int(value)]
        return float(min(1.0, probs[probs <= own * (1 + 1e-9)].sum()))
    values = draw(pred, prep, rng, draws)[0]
    x = float(prep.to_original(col, np.array([value]))[0])
    u = ((values < x).sum() + 0.5 * (values == x).sum() + 0.5) / (len(values) + 1)
    cells = calibration.cells.get(col.name) if calibration is not None else None
    if cells is not None:
        cell = cells[int(bin_of(np.array([observed_share]))[0])]
        if cell.source != "none":
            u = calibrated_score(u, cell.quantiles, cell.n)
    return float(min(1.0, 2 * min(u, 1 - u)))


def calibrated_score(u: float, quantiles: np.ndarray, n: int) -> float:
    """The held-out scores' CDF at u (their quantile function on GRID, from n scores). Beyond the lowest and the
    highest score, n scores cannot say how rare u is, only that it is rarer than about 1 in n + 1: there the model's
    own tail scales it down to that, linearly, so that a value far beyond the draws still gets a tiny p."""
    edge = 1.0 / (n + 1)
    lo, hi = float(quantiles[0]), float(quantiles[-1])
    if u < lo:
        return edge * u / lo if lo > 0 else 0.0
    if u > hi:
        return 1.0 - (edge * (1.0 - u) / (1.0 - hi) if hi < 1 else 0.0)
    return float(np.clip(np.interp(u, quantiles, GRID), edge, 1.0 - edge))


def check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise InputError([FieldError("plausibility_threshold", f"must lie in (0, 1), got {threshold!r}")])
    return float(threshold)


def with_copies(rows: Sequence[Mapping[str, Any]], engine, check: bool) -> tuple[list, list[tuple[int, str, dict]]]:
    """(the rows to run: `rows`, then their leave-one-out copies when `check`; the copies)."""
    copies = leave_one_out(rows, [c.name for c in engine.schema.features]) if check else []
    return [*rows, *(c[2] for c in copies)], copies


def read(engine, prep, out, first: int, copies, threshold: float, stream) -> list[dict[str, Any]]:
    """Per row of the request (the first `first` rows of the call), {"plausibility": {feature: {"p", "unusual"}},
    "unusual": [features]}, from the leave-one-out copies that follow them (`stream(copy row, column)`: the
    copy's generator for that column's draws)."""
    found: list[dict[str, Any]] = [{"plausibility": {}, "unusual": []} for _ in range(first)]
    draws = engine.draws_per_sample(prep.samples)
    for m, (i, name, _) in enumerate(copies):
        j = engine.feature_index[name]
        col = engine.schema.features[j]
        k = first + m
        share = float(prep.feeds["mask"][k].mean())
        p = tail_probability(
            col,
            out["features"][k, :, j],
            float(prep.feeds["x"][i, j]),
            engine.preprocessor,
            stream(k, j),
            draws,
            engine.calibration,
            share,
        )
        found[i]["plausibility"][name] = {"p": p, "unusual": p < threshold}
        if p < threshold:
            found[i]["unusual"].append(name)
    return found
