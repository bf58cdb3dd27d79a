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


def test_a_ray_partition_carries_the_checks_as_in_process(demo_artifact, tmp_path):
    """What each Ray actor runs (`output_schema`, then `score_partition` on a partition), without a cluster: the
    plausibility columns are in the partition's schema and hold the in-process figures."""
    import pandas as pd

    from hhvaem.app.engine import Engine
    from hhvaem.app.engine.partitions import frame_partition, output_schema, plan_table, score_partition
    from hhvaem.app.engine.scoring import score_frame

    engine = Engine(demo_artifact, threads=1)
    df = pd.DataFrame({"age": [59.0, 48.0, 30.0], "ldl": [120.0, 1200.0, None], "bmi": [32.1, 25.0, 22.0]})
    src = tmp_path / "in.csv"
    df.to_csv(src, index=False)
    plan = plan_table(src, 128)
    schema, _ = output_schema(engine, plan.schema, "predict", plausibility=True)
    assert {"ldl__plausibility", "unusual"} <= set(schema.names)
    options = {"operation": "predict", "samples": 20, "chunk_rows": 128, "seed": 0, "plausibility": True}
    table, errors = score_partition(engine, frame_partition(plan, plan.partitions[0]), schema, options)
    expected, _ = score_frame(engine, df, "predict", 20, 128, 0, plausibility=True)
    got = table.to_pandas()
    assert errors == [] and got["unusual"].tolist() == expected["unusual"].tolist()
    assert got["ldl__plausibility"].tolist()[:2] == pytest.approx(expected["ldl__plausibility"].tolist()[:2])
    assert "ldl" in got.loc[1, "unusual"]
