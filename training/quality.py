"""How good a trained model is, measured at the end of `hhvaem train` and kept in the manifest (`metrics`).

The figures are `hhvaem evaluate`'s point-prediction figures (training/evaluate.py: `feature_metrics`,
`target_metrics`, docs/protocol.md) on one slice of rows, 50 posterior samples per row, through the exported graphs
that serving runs: every feature of a row is shown to the model with probability 0.5 and the target is hidden;
RMSE_xu and ACC_xu score the hidden entries (numeric ones in standard deviations on the protocol's scale: about 1
for imputing each column's mean), and the target error is an RMSE in the target's units, or an accuracy.

Which rows: a table of at least HOLD_OUT_MIN_ROWS rows has min(10 %, 1,000) of them held out of training (chosen by
the seed) and scored; the model trains on the rest. Below that, every row is needed for training: with calibration
on (the default), the cross-fit's second model is scored on the 20 % of rows it did not see (training/finish.py;
`cross_fit: true`, a slightly weaker model than the one served, so the figures err pessimistic); with neither, the
summary is measured on the training rows under the same masks and says so (`held_out: false`): in-sample, and
optimistic.
The trainer's own validation rows (`--set validation_fraction=...`, off by default) serve early stopping, not this.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hhvaem.app.engine import Engine
from hhvaem.model.io.artifact import MANIFEST, manifest_text, read_manifest
from hhvaem.training.evaluate import feature_metrics, protocol_test_mask, served_posterior, target_metrics
from hhvaem.training.fit import FittedModel, encode_rows

HOLD_OUT_MIN_ROWS = 500
HOLD_OUT_FRACTION = 0.1
HOLD_OUT_MAX_ROWS = 1000
SAMPLES = 50  # posterior samples per row (evaluate uses 1,000: enough for its likelihoods; means need fewer)
# The summary's figures, named as evaluate's (the calibration figures left out: the summary stays short).
FIGURES = ("rmse_xu", "acc_xu", "target_rmse", "target_accuracy")


def held_out_rows(n_rows: int, seed: int) -> np.ndarray:
    """Indices of the rows kept out of training for the quality summary (none below HOLD_OUT_MIN_ROWS rows)."""
    if n_rows < HOLD_OUT_MIN_ROWS:
        return np.arange(0)
    n = min(round(n_rows * HOLD_OUT_FRACTION), HOLD_OUT_MAX_ROWS)
    return np.sort(np.random.default_rng(seed).permutation(n_rows)[:n])


def split_rows(df: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(rows to train on, rows held out, or None when the table is too small to spare any)."""
    held = held_out_rows(len(df), seed)
    if not len(held):
        return df, None
    keep = np.ones(len(df), dtype=bool)
    keep[held] = False
    return df[keep].reset_index(drop=True), df.iloc[held].reset_index(drop=True)


def rows_to_score(train: pd.DataFrame, held: pd.DataFrame | None, seed: int) -> pd.DataFrame:
    """The held-out rows, or (none held out) at most HOLD_OUT_MAX_ROWS of the training rows, chosen by the seed."""
    if held is not None:
        return held
    if len(train) <= HOLD_OUT_MAX_ROWS:
        return train
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[:HOLD_OUT_MAX_ROWS])
    return train.iloc[pick].reset_index(drop=True)


def measure(
    artifact: str | Path,
    fitted: FittedModel,
    rows: pd.DataFrame,
    held_out: bool,
    table_rows: int,
    seed: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    """The quality summary of the model exported to `artifact`, on `rows` (held out of training, or not)."""
    started = time.perf_counter()
    data = encode_rows(fitted.preprocessor, rows)
    observed = protocol_test_mask(len(rows), data.x.shape[1], 0) & data.mx.numpy()
    engine = Engine(artifact, threads=threads)
    # protocol_metrics' point-prediction half: its likelihood half (NLL_xu, NLL_y) would double the time
    out = served_posterior(engine, data, observed, SAMPLES, seed)
    hidden = data.mx.numpy() & ~observed
    rng = np.random.default_rng(seed + 1)
    schema, pp = fitted.model.schema, fitted.preprocessor
    figures = feature_metrics(schema, pp, out["features"], data.x.numpy(), hidden, rng)
    figures.update(target_metrics(schema, pp, out["target"], data.y.numpy(), data.my.numpy(), rng))
    summary: dict[str, Any] = {
        "held_out": held_out,
        "rows": len(rows),
        "table_rows": table_rows,
        "rows_chosen": f"min(10 %, {HOLD_OUT_MAX_ROWS}) of the table's rows, by seed {seed}, not trained on"
        if held_out
        else f"training rows, at most {HOLD_OUT_MAX_ROWS} (none held out: a table under {HOLD_OUT_MIN_ROWS} rows, "
        "or --no-hold-out); in-sample, so optimistic",
        "mask": "each feature shown with probability 0.5, the target hidden (docs/protocol.md)",
        "samples": SAMPLES,
    }
    summary.update({k: figures[k] for k in FIGURES if k in figures})
    numeric = [c.name for c in fitted.model.schema.targets if not c.is_discrete and c.name in rows]
    spread = [pd.to_numeric(rows[name], errors="coerce").std() for name in numeric]
    if "target_rmse" in summary and spread and np.isfinite(spread).all():
        summary["target_std"] = float(np.mean(spread))  # of the scored rows: the RMSE of always guessing their mean
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def record(artifact: str | Path, name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Adds `summary` to the manifest's `metrics` under `name`, re-sealed (`amend`)."""
    return amend(artifact, lambda m: {"metrics": {**m.get("metrics", {}), name: summary}})


def amend(artifact: str | Path, change) -> dict[str, Any]:
    """Updates the manifest with the entries `change(manifest)` returns, re-sealed by the writer's `manifest_text`."""
    manifest = read_manifest(artifact)  # verified first: a changed artifact is refused, not re-sealed
    manifest.pop("seal", None)
    manifest.update(change(manifest))
    (Path(artifact) / MANIFEST).write_text(manifest_text(manifest))
    return manifest


def describe(summary: dict[str, Any], target_names: list[str]) -> str:
    """The summary in a few lines, for the end of `hhvaem train`."""
    if summary.get("cross_fit"):
        where = f"{summary['rows']} rows a cross-fit model trained on the other rows did not see"
    elif summary["held_out"]:
        where = f"{summary['rows']} held-out rows (not trained on)"
    else:
        where = f"{summary['rows']} training rows (in-sample, so optimistic: none held out)"
    lines = [f"quality on {where}, each feature hidden with probability 0.5:"]
    if "rmse_xu" in summary:
        lines.append(
            f"  hidden numeric entries: RMSE {summary['rmse_xu']:.3f} standard deviations (about 1.0 = imputing "
            "each column's mean)"
        )
    if "acc_xu" in summary:
        lines.append(f"  hidden categorical entries: accuracy {summary['acc_xu']:.3f}")
    target = ", ".join(target_names)
    if "target_rmse" in summary:
        sd = f"; its standard deviation there: {summary['target_std']:.4g}" if "target_std" in summary else ""
        rmse = summary["target_rmse"]
        lines.append(f"  target {target}: RMSE {rmse:.4g} (in its units{sd}), from the shown features")
    if "target_accuracy" in summary:
        lines.append(f"  target {target}: accuracy {summary['target_accuracy']:.3f}, from the shown features")
    return "\n".join(lines)
