"""The plausibility p (app/engine/plausibility.py) on known answers."""

from __future__ import annotations

import numpy as np
import pytest

from hhvaem.app.engine.errors import InputError
from hhvaem.app.engine.plausibility import calibrated_score, check_threshold, leave_one_out
from hhvaem.model.calibration import GRID


def test_calibrated_score_is_the_scores_cdf_inside_and_the_models_tail_outside():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.2, 0.8, 4000)  # a model twice too wide: its scores never reach the outer 20 %
    quantiles = np.quantile(scores, GRID)
    assert calibrated_score(0.5, quantiles, 4000) == pytest.approx(0.5, abs=0.03)
    assert calibrated_score(0.35, quantiles, 4000) == pytest.approx(0.25, abs=0.03)
    edge = 1 / 4001
    below = [calibrated_score(u, quantiles, 4000) for u in (0.19, 0.1, 0.01, 0.0001)]
    assert all(a > b for a, b in zip(below, below[1:])) and below[0] <= edge  # rarer than 1 in 4,001, in order
    assert below[-1] < 1e-5  # far beyond the draws: tiny, so it can be flagged at any threshold
    above = calibrated_score(0.9999, quantiles, 4000)
    assert 1 - above < 1e-5


def test_leave_one_out_copies_and_the_threshold_check():
    rows = [{"a": 1.0, "b": None, "c": "x"}, {"b": 2.0}]
    copies = leave_one_out(rows, ["a", "b", "c"])
    assert [(i, n) for i, n, _ in copies] == [(0, "a"), (0, "c"), (1, "b")]
    assert copies[0][2] == {"b": None, "c": "x"} and copies[2][2] == {}
    assert check_threshold(0.01) == 0.01
    for bad in (0, 1, -0.1, True, "0.1"):
        with pytest.raises(InputError, match="plausibility_threshold"):
            check_threshold(bad)
