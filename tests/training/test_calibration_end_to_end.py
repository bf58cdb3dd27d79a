"""`hhvaem train` calibrates on a Gaussian table whose conditionals are known exactly.

Four features and a target, jointly Gaussian with a known covariance: given any observed subset, the target's
conditional distribution is a known Gaussian, so the exact 90 % interval is known. A small model trained briefly
is not that distribution. The correction's guarantee is marginal within each observed-share bin: with fresh rows
whose features are shown as the calibration shows them (a share drawn uniformly, then each feature with that
probability), the calibrated 90 % intervals must cover 90 % of targets in every bin. For one fixed pattern the
coverage can differ (a bin mixes patterns): checked within a wider band, and the width against the exact one.
The table has 10,000 rows so that 1,000 are held out to calibrate on: with 200 the correction itself is off by
about 2 points of coverage (the quantile of 200 scores), which a test cannot tell from a fault."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from hhvaem.app.engine import Engine
from hhvaem.app.engine.queries import PredictQuery
from hhvaem.cli import app

NAMES = ["a", "b", "c", "d", "y"]
rng0 = np.random.default_rng(0)
L = np.tril(rng0.normal(size=(5, 5))) + 2 * np.eye(5)
COV = L @ L.T


def _table(n: int, seed: int) -> pd.DataFrame:
    z = np.random.default_rng(seed).multivariate_normal(np.zeros(5), COV, size=n)
    return pd.DataFrame(z, columns=NAMES)


def _exact_sd(observed: list[int]) -> float:
    """The target's conditional standard deviation given the observed features (Schur complement)."""
    if not observed:
        return float(np.sqrt(COV[4, 4]))
    s_oo = COV[np.ix_(observed, observed)]
    s_yo = COV[4, observed]
    return float(np.sqrt(COV[4, 4] - s_yo @ np.linalg.solve(s_oo, s_yo)))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("gaussian")
    _table(10_000, 1).to_csv(folder / "t.csv", index=False)
    out = folder / "m"
    args = ["train", str(folder / "t.csv"), "--target", "y", "--steps", "400", "--threads", "1", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "calibrating the quantiles on 1000 rows" in res.output  # 1,000 held out, no cross-fit
    return str(out)


def _intervals(engine, rows, calibrated: bool):
    prepared = PredictQuery(rows, 40, (0.05, 0.95), seed=3, calibrated=calibrated).prepare(engine)
    answer = prepared.finish(engine.run_graph(prepared.graph, prepared.feeds))
    lo = np.array([a["targets"]["y"]["quantiles"]["0.05"] for a in answer])
    hi = np.array([a["targets"]["y"]["quantiles"]["0.95"] for a in answer])
    return lo, hi


def test_calibrated_target_intervals_cover_in_every_observed_share_bin(model):
    engine = Engine(model, threads=1)
    test = _table(3000, 2)
    rng = np.random.default_rng(4)
    share = rng.random(len(test))
    shown = rng.random((len(test), 4)) < share[:, None]
    rows = [{NAMES[j]: float(test.iat[i, j]) for j in range(4) if shown[i, j]} for i in range(len(test))]
    lo, hi = _intervals(engine, rows, True)
    covered = (test["y"] >= lo) & (test["y"] <= hi)
    bins = np.clip((shown.mean(1) * 3).astype(int), 0, 2)  # the calibration's bins of the observed share
    for b in range(3):
        assert 0.86 <= covered[bins == b].mean() <= 0.94, (b, covered[bins == b].mean(), (bins == b).sum())
    raw_lo, raw_hi = _intervals(engine, rows, False)
    assert not np.allclose(raw_hi - raw_lo, hi - lo)  # the correction moved the intervals


@pytest.mark.parametrize("observed", [[0], [0, 1, 2]], ids=["one-of-four", "three-of-four"])
def test_one_pattern_is_covered_roughly_with_a_sane_width(model, observed):
    engine = Engine(model, threads=1)
    test = _table(600, 5)
    rows = [{NAMES[j]: float(test.iat[i, j]) for j in observed} for i in range(len(test))]
    lo, hi = _intervals(engine, rows, True)
    cover = float(np.mean((test["y"] >= lo) & (test["y"] <= hi)))
    assert 0.82 <= cover <= 0.96, cover  # measured 0.86-0.87 here: a bin mixes this pattern with others
    exact = 2 * 1.6449 * _exact_sd(observed)
    assert np.mean(hi - lo) < 1.6 * exact, (np.mean(hi - lo), exact)  # coverage is not bought with absurd width
