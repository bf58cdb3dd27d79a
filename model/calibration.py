"""Conformal recalibration of the served quantiles, per column and per share of the row observed (numpy only).

The model's predictive distribution F for a hidden entry is a mixture over posterior samples; its quantiles are
honest only if the probability integral transform u = F(y) of the true value is uniform. It is not, quite, and how
far it is off depends on the column and on how much of the row the model sees (a row with 2 of 10 features
observed has a wider, differently wrong posterior than one with 9). So the trainer measures u on rows held out of
fitting (`training/calibration.py`), under masks drawn across the whole range of observed shares, and keeps, for each
column and each observed-share bin, the empirical quantile function Q of those scores. Serving asks for level q and
reads the model's quantile at level Q(q') instead, q' being q moved out by the split-conformal finite-sample
correction (the ceil((n + 1) q)-th of n scores): with the score u and the one-sided set {y: F(y) <= Q(q')}, this is
split-conformal prediction (Vovk et al. 2005; Lei et al. 2018) with the predictive CDF as the score, i.e. a
conformal predictive system (Vovk et al. 2017) and the recalibration of Kuleshov et al. (2018), made
mask-conditional by stratifying on the observed share as the missing-data conformal methods do (Zaffran et al.
2023, "Conformal prediction with missing values"). Every level, hence every interval, is corrected at once; the
guarantee is marginal over rows within a bin, not per row.

A cell (column, bin) with fewer than MIN_SCORES scores borrows the column's scores from every bin; a column with
too few borrows the scores of every column in its role (features or targets) in that bin, and failing that no
correction is made. Each cell says which it used (`source`). Category probabilities are not recalibrated here.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

# Bins of the share of a row's features that the model sees: [0, 1/3), [1/3, 2/3), [2/3, 1].
EDGES = (0.0, 1 / 3, 2 / 3, 1.0)
GRID = np.linspace(0.0, 1.0, 201)  # levels at which each cell's quantile function of scores is kept
MIN_SCORES = 50
# A corrected level reads the draws no further out than this (unless the nominal level itself is further out): the
# outermost of ~1,000 draws of a heavy-tailed mixture can be absurd, so the correction cannot widen an interval
# past the model's 0.5 % and 99.5 % predictive quantiles; where truths often fall beyond them, coverage stays
# short, and benchmarks/calibration.py shows it.
LEVEL_FLOOR = 0.005
SOURCES = ("bin", "column", "role", "none")
# How a cell's quantile function of scores is estimated: the empirical one (split-conformal), or a probit
# location-scale fit (Phi(mu + sigma Phi^-1(g)): two numbers, far less noise from few rows, no finite-sample
# guarantee); "-pooled": one cell per column for every bin. benchmarks/calibration.py compares them.
METHODS = ("conformal", "conformal-pooled", "probit", "probit-pooled")
DEFAULT_METHOD = "conformal"
_NORMAL = NormalDist()
_Z90 = _NORMAL.inv_cdf(0.9)


def pit(draws: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The randomised probability integral transform [N] of truth [N] under the predictive given by draws [N, S]:
    (#draws below + V (#draws equal + 1)) / (S + 1) with V uniform, so that ties (counts, zeros) do not pile up."""
    below = (draws < truth[:, None]).sum(1)
    equal = (draws == truth[:, None]).sum(1)
    return (below + rng.random(len(truth)) * (equal + 1)) / (draws.shape[1] + 1)


def bin_of(observed_share: np.ndarray) -> np.ndarray:
    """The bin index [B] of each row's observed share of features."""
    return np.clip(np.searchsorted(EDGES, observed_share, side="right") - 1, 0, len(EDGES) - 2)


def conformal_level(q: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Level q moved out by the split-conformal correction for n scores: ceil((n + 1) q) / n above the median,
    floor((n + 1) q) / n below it (clipped to [0, 1]); infinite n (no correction) leaves q."""
    q, n = np.asarray(q, np.float64), np.asarray(n, np.float64)
    finite = np.isfinite(n) & (n > 0)
    m = np.where(finite, n, 1.0)
    up = np.ceil((m + 1) * q - 1e-9) / m
    down = np.floor((m + 1) * q + 1e-9) / m
    moved = np.where(q > 0.5, up, np.where(q < 0.5, down, q))
    return np.clip(np.where(finite, moved, q), 0.0, 1.0)


@dataclass(frozen=True)
class Cell:
    """The quantile function of one (column, bin)'s scores on GRID, how many scores, and where they came from."""

    quantiles: np.ndarray  # [len(GRID)]
    n: int
    source: str


IDENTITY = Cell(GRID.copy(), 0, "none")


@dataclass(frozen=True)
class Calibration:
    """Per column name, one Cell per observed-share bin."""

    cells: dict[str, tuple[Cell, ...]]

    method: str = DEFAULT_METHOD

    @classmethod
    def fit(
        cls, scores: dict[str, tuple[np.ndarray, np.ndarray]], roles: dict[str, str], method: str = DEFAULT_METHOD
    ) -> Calibration:
        """From {column: (observed shares [M], scores [M])} of held-out entries and {column: role}."""
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r} (expected one of {', '.join(METHODS)})")
        n_bins = len(EDGES) - 1
        pooled = method.endswith("-pooled")
        binned = {name: np.zeros(len(share), int) if pooled else bin_of(share) for name, (share, _) in scores.items()}
        _cell = _probit_cell if method.startswith("probit") else _conformal_cell
        cells: dict[str, tuple[Cell, ...]] = {}
        for name, (_, u) in scores.items():
            row = []
            for b in range(n_bins):
                here = u[binned[name] == b]
                if len(here) >= MIN_SCORES:
                    row.append(_cell(here, "bin"))
                elif len(u) >= MIN_SCORES:
                    row.append(_cell(u, "column"))
                else:
                    kin = [s[binned[k] == b] for k, (_, s) in scores.items() if roles[k] == roles[name]]
                    kin_u = np.concatenate(kin) if kin else np.zeros(0)
                    row.append(_cell(kin_u, "role") if len(kin_u) >= MIN_SCORES else IDENTITY)
            cells[name] = tuple(row[:1] * n_bins if pooled else row)
        return cls(cells, method)

    def levels(self, column: str, observed_share: np.ndarray, quantiles: tuple[float, ...]) -> np.ndarray:
        """The model's levels [B, Q] to read for the nominal `quantiles`, rows with the given observed shares [B]."""
        q = np.asarray(quantiles, np.float64)
        cells = self.cells.get(column)
        if cells is None:
            return np.broadcast_to(q, (len(observed_share), len(q))).copy()
        out = np.empty((len(observed_share), len(q)))
        for i, b in enumerate(bin_of(np.asarray(observed_share, np.float64))):
            cell = cells[b]
            if cell.source == "none":
                out[i] = q
            else:
                moved = np.interp(conformal_level(q, np.full(len(q), cell.n)), GRID, cell.quantiles)
                out[i] = np.clip(moved, np.minimum(q, LEVEL_FLOOR), np.maximum(q, 1 - LEVEL_FLOOR))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "edges": [round(e, 6) for e in EDGES],
            "grid": len(GRID),
            "columns": {
                name: [
                    {"n": c.n, "source": c.source, "quantiles": [round(float(v), 5) for v in c.quantiles]}
                    for c in cells
                ]
                for name, cells in self.cells.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        """Read back what `to_json` wrote; a malformed entry is a ValueError naming it."""
        if [round(e, 6) for e in data.get("edges", [])] != [round(e, 6) for e in EDGES] or data.get("grid") != len(
            GRID
        ):
            raise ValueError("calibration: bins or grid differ from this version's (retrain or re-calibrate)")
        cells: dict[str, tuple[Cell, ...]] = {}
        for name, row in data["columns"].items():
            if len(row) != len(EDGES) - 1:
                raise ValueError(f"calibration.columns.{name}: expected {len(EDGES) - 1} bins, got {len(row)}")
            parsed = []
            for c in row:
                qf = np.asarray(c["quantiles"], np.float64)
                if qf.shape != GRID.shape or not np.all(np.diff(qf) >= 0) or c["source"] not in SOURCES:
                    raise ValueError(f"calibration.columns.{name}: a bin is malformed")
                parsed.append(Cell(qf, int(c["n"]), c["source"]))
            cells[name] = tuple(parsed)
        method = data.get("method", DEFAULT_METHOD)
        if method not in METHODS:
            raise ValueError(f"calibration.method: unknown method {method!r}")
        return cls(cells, method)


def _conformal_cell(scores: np.ndarray, source: str) -> Cell:
    return Cell(np.maximum.accumulate(np.quantile(scores, GRID)), len(scores), source)


def _probit_cell(scores: np.ndarray, source: str) -> Cell:
    """Scores modelled as Phi(Z), Z ~ N(mu, sigma^2), mu and sigma from the median and the 10-90 % range of Z
    (robust to the scores piled at the draws' ends when the predictive is much too narrow)."""
    lo, mid, hi = (_NORMAL.inv_cdf(float(np.clip(v, 1e-6, 1 - 1e-6))) for v in np.quantile(scores, (0.1, 0.5, 0.9)))
    sigma = max((hi - lo) / (2 * _Z90), 1e-3)
    ends = np.clip(GRID, 1e-6, 1 - 1e-6)
    qf = np.array([_NORMAL.cdf(mid + sigma * _NORMAL.inv_cdf(float(g))) for g in ends])
    return Cell(np.maximum.accumulate(qf), len(scores), source)
