"""Scores of predictive distributions against held-out truth (numpy): calibration and proper scoring rules.

Each predictive is given by draws (one per posterior sample, in the units being scored): central-interval
coverage tells whether the model's uncertainty is honest (a 90 % interval should hold the truth 90 % of the time),
the continuous ranked probability score (CRPS) rewards sharp and calibrated predictives together, and the Brier
score does the same for class probabilities. See docs/protocol.md.
"""

from __future__ import annotations

import numpy as np

LEVELS = (0.5, 0.9)


def interval_coverage(draws: np.ndarray, truth: np.ndarray, level: float) -> float:
    """Share of rows whose truth lies in the central `level` interval of its draws [N, S]."""
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return float(np.mean((truth >= lo) & (truth <= hi)))


def crps(draws: np.ndarray, truth: np.ndarray) -> float:
    """Mean CRPS of the empirical predictives draws [N, S] at truth [N]: E|X - y| - E|X - X'| / 2.

    The pairwise term from the sorted draws: sum_i (2 i - S - 1) x_(i) / S^2 (O(S log S) per row).
    """
    n = draws.shape[1]
    x = np.sort(draws, axis=1)
    spread = (x * (2 * np.arange(1, n + 1) - n - 1)).sum(1) / (n * n)
    return float(np.mean(np.abs(draws - truth[:, None]).mean(1) - spread))


def brier(probs: np.ndarray, truth: np.ndarray) -> float:
    """Mean Brier score of class probabilities [N, C] against class indices [N] (0 is perfect, 2 the worst)."""
    onehot = np.eye(probs.shape[1])[truth.astype(int)]
    return float(np.mean(((probs - onehot) ** 2).sum(1)))


def numeric_scores(draws: np.ndarray, truth: np.ndarray, prefix: str) -> dict[str, float]:
    """coverage50, coverage90 and crps of numeric predictives, named `<prefix>_<score>`."""
    if len(truth) == 0:
        return {}
    out = {f"{prefix}_coverage{round(level * 100)}": interval_coverage(draws, truth, level) for level in LEVELS}
    out[f"{prefix}_crps"] = crps(draws, truth)
    return out
