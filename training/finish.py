"""The end of `hhvaem train` after the served model is written: calibrate its quantiles and measure its quality.

Both need rows the served model was not fitted on. With held-out rows (training/quality.py) they are used for
both. Without (a small table, or --no-hold-out) and with calibration on, a cross-fit supplies them: a second model
trained with the same recipe on 80 % of the training rows (`refit`) is calibrated and measured on the other 20 %,
and its correction and figures go into the served model's manifest (training/calibration.py says why that errs on
the safe side). Without either, the quality summary is in-sample and says so.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hhvaem.training import calibration, quality
from hhvaem.training.artifact import write_artifact
from hhvaem.training.fit import FittedModel


@dataclass
class Finished:
    manifest: dict[str, Any]
    quality: dict[str, Any]
    scores: calibration.Scores = field(default_factory=dict)  # what the calibration was fitted from (if any)
    roles: dict[str, str] = field(default_factory=dict)


def finish(
    out: str | Path,
    table_rows: int,
    train_df: pd.DataFrame,
    held: pd.DataFrame | None,
    fitted: FittedModel,
    refit: Callable[[pd.DataFrame], FittedModel] | None,  # needed only without held-out rows
    seed: int,
    threads: int,
    calibrate: bool,
    echo: Callable[[str], None],
) -> Finished:
    """Adds `calibration` (when `calibrate`) and `metrics.quality` to the artifact at `out`."""
    started = time.perf_counter()
    found: calibration.Scores = {}
    roles: dict[str, str] = {}
    fitted_cal = None
    trained_on = train_df
    with tempfile.TemporaryDirectory(prefix="hhvaem-cross-fit-") as tmp:
        scored, rows, model, cross = Path(out), held, fitted, False
        if calibrate and held is None:
            fold, rows = calibration.cross_fit_rows(train_df, seed)
            echo(
                f"cross-fit: training a second model on {len(fold)} rows to calibrate on the other {len(rows)} "
                "(too few rows to hold any out of the served model)"
            )
            model, scored, cross, trained_on = refit(fold), Path(tmp) / "cross-fit", True, fold
            write_artifact(scored, model.model, model.preprocessor, model.history, {})
        if calibrate:
            echo(f"calibrating the quantiles on {len(rows)} rows the model was not fitted on")
            fitted_cal, about, found, roles = calibration.measure(scored, rows, seed, threads)
            entry = calibration.stored(fitted_cal, {**about, "cross_fit": cross})
            quality.amend(out, lambda m: {"calibration": entry})
        rows_scored = quality.rows_to_score(train_df, rows, seed)
        echo(f"measuring the quality on {len(rows_scored)} {'held-out' if rows is not None else 'training'} rows")
        summary = quality.measure(
            scored, model, rows_scored, rows is not None, table_rows, seed, threads, trained_on, fitted_cal
        )
        if calibrate:
            summary["interval_coverage"] = entry["check"]
            summary["calibration_applied"] = entry["applied"]
        summary["extra_seconds"] = round(time.perf_counter() - started, 1)  # cross-fit, calibration, this summary
        summary["cross_fit"] = cross
        if cross:
            summary["rows_chosen"] = (
                f"{len(rows)} rows (20 %, by seed {seed}) that a second model, trained with the same recipe on the "
                "other 80 %, did not see (cross-fit: the table is too small to hold rows out of the served model)"
            )
    return Finished(quality.record(out, "quality", summary), summary, found, roles)
