"""Issue #10's failure shapes at small size, at the default configuration: the model must clearly beat column
means / modes on the hidden entries and the constant predictor on the target (docs/accuracy.md has the full-size
figures). The tables come from benchmarks/tables.py, the metrics from the protocol's own code.

The budget is the suite's (issue #23): a stage-3 (VAE + HMC) step costs about 90 dependency-VAE steps (the demo
model: 40 in 13 s, 3,000 in 11 s, docs/quick_start_before_split.json), so stage 3 gets a quarter of `--steps N`'s
share here, and the test rows are scored with 30 posterior samples instead of 100; CPU time of the two, 340 s ->
174 s. The margins this left on split 0 (ratio to the mean/mode RMSE; gains in accuracy over mean/mode and the constant;
thresholds 0.85, +0.05, +0.15): categorical_wide 0.715, +0.37, +0.32; sensors 0.787, +0.60, +0.80."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import tables
from hhvaem.training.baselines import baseline_split
from hhvaem.training.evaluate import evaluate_split, split_indices
from hhvaem.training.tabular import load_dataset
from hhvaem.training.trainer import StageSteps

SHAPES = {
    # 84 columns, 40 categorical with 3-12 levels, all driven by a 3-d factor; binary target
    "categorical_wide": (tables.categorical_wide, 600, StageSteps(marginal=300, vi=1080, hmc=30)),
    # 14 near-deterministic functions of two hidden quantities, 2 binned; 8-class target
    "sensors": (tables.sensors, 1500, StageSteps(marginal=200, vi=720, hmc=20)),
}
SAMPLES = 30


@pytest.mark.parametrize("shape", SHAPES)
def test_the_model_clearly_beats_mean_mode_and_the_constant_predictor(shape, tmp_path) -> None:
    torch.set_num_threads(1)
    make, rows, steps = SHAPES[shape]
    folder = make(tmp_path, rows=rows, seed=0)
    df, schema = load_dataset(folder / "data.csv", schema_path=folder / "schema.json")
    ours = evaluate_split(df, schema, 0, "hhvaem", steps, n_samples=SAMPLES)
    mean_mode = baseline_split(df, schema, 0, "mean")
    train_idx, test_idx = split_indices(len(df), 0)
    target = schema.targets[0].name
    majority = df[target].iloc[train_idx].mode()[0]
    constant = float(np.mean(df[target].iloc[test_idx] == majority))

    assert ours["rmse_xu"] < 0.85 * mean_mode["rmse_xu"], (ours["rmse_xu"], mean_mode["rmse_xu"])
    assert ours["acc_xu"] > mean_mode["acc_xu"] + 0.05, (ours["acc_xu"], mean_mode["acc_xu"])
    assert ours["target_accuracy"] > constant + 0.15, (ours["target_accuracy"], constant)
