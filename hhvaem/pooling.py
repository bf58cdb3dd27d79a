"""Rubin's rules: one estimate and its interval from an analysis repeated on M multiply imputed tables.

Analyse each completed table as if it were complete (estimate q_m, its squared standard error u_m), then pool:

    q = mean(q_m)                      the pooled estimate
    W = mean(u_m)                      within-imputation variance
    B = var(q_m, ddof=1)               between-imputation variance (what a single imputation leaves out)
    T = W + (1 + 1/M) B                total variance; the interval is q +- t_{nu, 1 - alpha/2} sqrt(T)

with Rubin's degrees of freedom nu = (M - 1) (1 + 1/r)^2, r = (1 + 1/M) B / W, or Barnard and Rubin's (1999)
small-sample version when the complete-data degrees of freedom are given. Rubin (1987), "Multiple Imputation for
Nonresponse in Surveys"; docs/multiple_imputation.md has a worked example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pooled:
    estimate: float
    within: float  # W
    between: float  # B
    total: float  # T
    dof: float  # nu
    imputations: int

    @property
    def std_error(self) -> float:
        return math.sqrt(self.total)

    @property
    def missing_information(self) -> float:
        """The fraction of missing information about the estimate, lambda = (1 + 1/M) B / T."""
        return (1 + 1 / self.imputations) * self.between / self.total if self.total > 0 else 0.0

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        from scipy.stats import t

        half = float(t.ppf(0.5 + level / 2, self.dof)) * self.std_error
        return self.estimate - half, self.estimate + half


def rubin(estimates: Sequence[float], variances: Sequence[float], complete_dof: float | None = None) -> Pooled:
    """Pools M >= 2 estimates and their squared standard errors (Rubin's rules); `complete_dof` (e.g. n - p for
    least squares) switches to Barnard and Rubin's degrees of freedom."""
    q, u = np.asarray(estimates, dtype=np.float64), np.asarray(variances, dtype=np.float64)
    if q.ndim != 1 or q.shape != u.shape or len(q) < 2:
        raise ValueError("rubin: needs M >= 2 estimates and as many variances")
    m = len(q)
    within, between = float(u.mean()), float(q.var(ddof=1))
    total = within + (1 + 1 / m) * between
    if between == 0:  # no missing information: the complete-data answer
        dof = math.inf if complete_dof is None else float(complete_dof)
    else:
        r = (1 + 1 / m) * between / within
        dof = (m - 1) * (1 + 1 / r) ** 2
        if complete_dof is not None:
            lam = (1 + 1 / m) * between / total
            observed = (complete_dof + 1) / (complete_dof + 3) * complete_dof * (1 - lam)
            dof = 1 / (1 / dof + 1 / observed)
    return Pooled(float(q.mean()), within, between, total, float(dof), m)
