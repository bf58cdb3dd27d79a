"""Issue #10's failure shapes at small size, at the default configuration: the model must clearly beat column
means / modes on the hidden entries and the constant predictor on the target (docs/accuracy.md has the full-size
figures). The tables come from benchmarks/tables.py, the metrics from the protocol's own code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import tables
from hhvaem.training.baselines import baseline_split
from hhvaem.training.evaluate import evaluate_split, split_indices
from hhvaem.training.tabular import load_dataset

SHAPES = {
    # 84 columns, 40 categorical with 3-12 levels, all driven by a 3-d factor; binary target
    "categorical_wide": (tables.categorical_wide, 600, 1200),
    # 14 near-deterministic functions of two hidden quantities, 2 binned; 8-class target
    "sensors": (tables.sensors, 1500, 800),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_the_model_clearly_beats_mean_mode_and_the_constant_predictor(shape, tmp_path) -> None:
    torch.set_num_threads(1)
    make, rows, steps = SHAPES[shape]
    folder = make(tmp_path, rows=rows, seed=0)
    df, schema = load_dataset(folder / "data.csv", schema_path=folder / "schema.json")
    ours = evaluate_split(df, schema, 0, "hhvaem", steps, n_samples=100)
    mean_mode = baseline_split(df, schema, 0, "mean")
    train_idx, test_idx = split_indices(len(df), 0)
    target = schema.targets[0].name
    majority = df[target].iloc[train_idx].mode()[0]
    constant = float(np.mean(df[target].iloc[test_idx] == majority))

    assert ours["rmse_xu"] < 0.85 * mean_mode["rmse_xu"], (ours["rmse_xu"], mean_mode["rmse_xu"])
    assert ours["acc_xu"] > mean_mode["acc_xu"] + 0.05, (ours["acc_xu"], mean_mode["acc_xu"])
    assert ours["target_accuracy"] > constant + 0.15, (ours["target_accuracy"], constant)
