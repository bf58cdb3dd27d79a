"""The conformal correction of served quantiles (model/calibration.py) against known answers.

The predictive of every entry is a Gaussian with a known error: too narrow in one observed-share bin, too wide in
another, right in the third, while the truth is N(0, 1). Fitted on scores from one set of entries, the corrected
90 % and 50 % intervals must cover 90 % and 50 % of fresh entries in every bin, and match the exact interval of
N(0, 1), which is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from hhvaem.model.calibration import EDGES, GRID, MIN_SCORES, Calibration, bin_of, conformal_level, pit

SCALES = {0.1: 0.7, 0.5: 1.0, 0.9: 2.0}  # observed share -> the predictive's sd (the truth's is 1)


def _entries(rng, n_per_share: int, draws: int = 1000):
    shares, truths, samples = [], [], []
    for share, scale in SCALES.items():
        shares.append(np.full(n_per_share, share))
        truths.append(rng.standard_normal(n_per_share))
        samples.append(scale * rng.standard_normal((n_per_share, draws)))
    return np.concatenate(shares), np.concatenate(truths), np.concatenate(samples)


def _covered(calibration, share, truth, draws, level):
    lo, hi = (1 - level) / 2, (1 + level) / 2
    levels = calibration.levels("x", share, (lo, hi))
    v = np.sort(draws, 1)
    idx = np.clip(np.round(levels * (v.shape[1] - 1)).astype(int), 0, v.shape[1] - 1)
    a, b = np.take_along_axis(v, idx[:, :1], 1)[:, 0], np.take_along_axis(v, idx[:, 1:], 1)[:, 0]
    return (truth >= a) & (truth <= b), b - a


def test_corrected_intervals_cover_what_they_promise_in_every_bin():
    rng = np.random.default_rng(0)
    share, truth, draws = _entries(rng, 3000)
    calibration = Calibration.fit({"x": (share, pit(draws, truth, rng))}, {"x": "feature"})
    assert [c.source for c in calibration.cells["x"]] == ["bin", "bin", "bin"]
    share, truth, draws = _entries(np.random.default_rng(1), 20_000)
    exact90 = 2 * stats.norm.ppf(0.95)
    for s, scale in SCALES.items():
        rows = share == s
        raw = (np.abs(truth[rows]) <= scale * stats.norm.ppf(0.95)).mean()
        cover90, width90 = _covered(calibration, share[rows], truth[rows], draws[rows], 0.9)
        cover50, _ = _covered(calibration, share[rows], truth[rows], draws[rows], 0.5)
        assert 0.88 <= cover90.mean() <= 0.92, (s, cover90.mean())
        assert 0.47 <= cover50.mean() <= 0.53, (s, cover50.mean())
        assert width90.mean() == pytest.approx(exact90, rel=0.06), s  # the exact interval of N(0, 1)
        if scale != 1.0:
            assert abs(raw - 0.9) > 0.05  # the raw intervals were off (0.75 and 0.999)


def test_a_well_calibrated_predictive_is_left_about_alone():
    rng = np.random.default_rng(2)
    truth, draws = rng.standard_normal(5000), rng.standard_normal((5000, 400))
    calibration = Calibration.fit({"x": (np.full(5000, 0.5), pit(draws, truth, rng))}, {"x": "feature"})
    levels = calibration.levels("x", np.array([0.5]), (0.05, 0.5, 0.95))[0]
    assert levels == pytest.approx([0.05, 0.5, 0.95], abs=0.012)


def test_randomised_scores_are_uniform_for_counts():
    """Ties (a count, drawn from the right Poisson) are spread, not piled on one score."""
    rng = np.random.default_rng(3)
    truth = rng.poisson(2.0, 20_000).astype(float)
    draws = rng.poisson(2.0, (20_000, 300)).astype(float)
    u = pit(draws, truth, rng)
    assert (0 < u).all() and (u < 1).all()
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert np.mean(u <= q) == pytest.approx(q, abs=0.015)


def test_the_finite_sample_correction():
    assert conformal_level(0.9, 19) == pytest.approx(18 / 19)  # ceil(20 * 0.9) / 19
    assert conformal_level(0.05, 19) == pytest.approx(1 / 19)  # floor(20 * 0.05) / 19
    assert conformal_level(0.5, 19) == 0.5
    assert conformal_level(0.99, 10) == 1.0  # beyond the scores: the largest draw
    assert conformal_level(0.9, np.inf) == 0.9
    assert list(bin_of(np.array([0.0, 0.2, 1 / 3, 0.5, 0.7, 1.0]))) == [0, 0, 1, 1, 2, 2]
    assert len(EDGES) == 4 and GRID[0] == 0 and GRID[-1] == 1


def test_thin_cells_borrow_and_say_so():
    rng = np.random.default_rng(4)
    many = (rng.random(600), rng.random(600))  # every bin about 200 scores
    one_bin = (np.full(300, 0.9), rng.random(300))  # only the top bin
    few = (np.full(10, 0.5), rng.random(10))
    roles = {"a": "feature", "b": "feature", "c": "feature", "y": "target"}
    cal = Calibration.fit({"a": many, "b": one_bin, "c": few, "y": few}, roles)
    assert [c.source for c in cal.cells["a"]] == ["bin"] * 3
    assert [c.source for c in cal.cells["b"]] == ["column", "column", "bin"]
    assert [c.n for c in cal.cells["b"]] == [300, 300, 300]
    # c has 10 scores: it borrows the features' scores of each bin (a's, b's and its own)
    assert [c.source for c in cal.cells["c"]] == ["role"] * 3
    assert cal.cells["c"][2].n == (many[0] >= 2 / 3).sum() + 300
    # the only target, with 10 scores: nothing to borrow, so no correction
    assert [c.source for c in cal.cells["y"]] == ["none"] * 3
    assert cal.levels("y", np.array([0.5]), (0.05, 0.95))[0] == pytest.approx([0.05, 0.95])
    assert cal.levels("unknown", np.array([0.5]), (0.2,))[0] == pytest.approx([0.2])
    assert MIN_SCORES == 50


def test_json_round_trip_and_malformed_entries():
    rng = np.random.default_rng(5)
    cal = Calibration.fit({"x": (rng.random(900), rng.random(900))}, {"x": "feature"})
    back = Calibration.from_json(cal.to_json())
    share = rng.random(50)
    assert back.levels("x", share, (0.05, 0.95)) == pytest.approx(cal.levels("x", share, (0.05, 0.95)), abs=1e-4)
    data = cal.to_json()
    data["columns"]["x"][1]["quantiles"] = data["columns"]["x"][1]["quantiles"][::-1]  # not a quantile function
    with pytest.raises(ValueError, match="calibration.columns.x"):
        Calibration.from_json(data)
    with pytest.raises(ValueError, match="bins or grid"):
        Calibration.from_json({**cal.to_json(), "grid": 11})


@pytest.mark.parametrize("method", ["probit", "probit-pooled", "conformal-pooled"])
def test_the_other_methods_correct_a_too_narrow_predictive(method):
    """The probit fit (two numbers per cell) and the pooled cells also bring a 30 % too narrow predictive to 90 %."""
    rng = np.random.default_rng(6)
    truth, draws = rng.standard_normal(4000), 0.7 * rng.standard_normal((4000, 1000))
    share = rng.random(4000)
    cal = Calibration.fit({"x": (share, pit(draws, truth, rng))}, {"x": "feature"}, method)
    assert cal.method == method and Calibration.from_json(cal.to_json()).method == method
    if method.endswith("pooled"):
        assert len({c.quantiles.tobytes() for c in cal.cells["x"]}) == 1  # one cell for every bin
    truth, draws = rng.standard_normal(20_000), 0.7 * rng.standard_normal((20_000, 1000))
    cover, _ = _covered(cal, rng.random(20_000), truth, draws, 0.9)
    assert 0.88 <= cover.mean() <= 0.92, cover.mean()
    with pytest.raises(ValueError, match="unknown calibration method"):
        Calibration.fit({"x": (share, share)}, {"x": "feature"}, "isotonic")


def test_the_correction_never_reads_past_the_outer_draws():
    """Truths beyond every draw (a predictive far too narrow) push the corrected levels to the end, but no further
    than LEVEL_FLOOR from it: the outermost draws of a heavy tail are not served as a quantile."""
    from hhvaem.model.calibration import LEVEL_FLOOR

    rng = np.random.default_rng(8)
    scores = np.where(rng.random(2000) < 0.5, 0.0004, 0.9996)  # half below every draw, half above
    cal = Calibration.fit({"x": (rng.random(2000), scores)}, {"x": "feature"})
    levels = cal.levels("x", np.array([0.1, 0.5, 0.9]), (0.05, 0.25, 0.75, 0.95))
    assert levels.min() >= LEVEL_FLOOR and levels.max() <= 1 - LEVEL_FLOOR
    assert cal.levels("x", np.array([0.5]), (0.001,))[0, 0] == pytest.approx(0.001)  # asked further out: allowed
