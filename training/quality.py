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
from hhvaem.model.calibration import Calibration
from hhvaem.model.io.artifact import MANIFEST, manifest_text, read_manifest
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.training.baselines import Encoding, hgb_nan_metrics, imputation_metrics, impute
from hhvaem.training.calibration import interval_figures
from hhvaem.training.evaluate import feature_metrics, protocol_test_mask, served_posterior, target_metrics
from hhvaem.training.fit import FittedModel, encode_rows
from hhvaem.training.tabular import table_columns

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
    train_rows: pd.DataFrame | None = None,
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """The quality summary of the model exported to `artifact`, on `rows` (held out of training, or not): the
    figures, per feature too; the served intervals' widths (raw, and with `calibration`); with `train_rows` (the
    rows the model was fitted on), KNN's and hgb_nan's figures fitted on those rows, on the same rows and masks."""
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
    summary["per_feature"] = per_feature(schema, pp, out["features"], data.x.numpy(), hidden, seed)
    corrections = {"raw": None} | ({"calibrated": calibration} if calibration is not None else {})
    scale = {c.name: _spread(rows, c.name) for c in schema.columns if not c.is_discrete}
    widths = interval_figures(schema, pp, out, data, observed, np.random.default_rng(seed + 2), corrections, scale)
    summary["interval_width"] = {  # mean width in standard deviations of the column (on the scored rows)
        role: {k.replace("_width", "_"): round(v, 4) for k, v in f.items() if "_width" in k}
        for role, f in widths.items()
    }
    if train_rows is not None:
        summary["baselines"] = classical(schema, train_rows, rows, observed, seed)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _spread(rows: pd.DataFrame, name: str) -> float:
    sd = float(pd.to_numeric(rows[name], errors="coerce").std()) if name in rows else float("nan")
    return sd if np.isfinite(sd) and sd > 0 else 1.0


def per_feature(schema, pp, natural, x, hidden, seed: int) -> dict[str, dict[str, float]]:
    """{feature: {"rmse" (standard deviations, as RMSE_xu) or "accuracy", "entries"}} of the hidden entries."""
    out = {}
    for d, col in enumerate(schema.features):
        only = np.zeros_like(hidden)
        only[:, d] = hidden[:, d]
        if not only.any():
            continue
        f = feature_metrics(schema, pp, natural, x, only, np.random.default_rng(seed + 3))
        key = "accuracy" if col.is_discrete else "rmse"
        out[col.name] = {key: round(f["acc_xu" if col.is_discrete else "rmse_xu"], 4), "entries": int(only.sum())}
    return out


# At most this many training rows fit the classical tools (KNN's distances grow with them); chosen by the seed.
BASELINE_ROWS = 5000


def classical(schema, train_rows: pd.DataFrame, rows: pd.DataFrame, observed: np.ndarray, seed: int) -> dict:
    """KNN imputation (RMSE_xu, ACC_xu) and hgb_nan's target error, fitted on `train_rows`, on `rows` under the
    same mask as the model, on the protocol's scale (training/baselines.py, docs/protocol.md)."""
    if len(train_rows) > BASELINE_ROWS:
        pick = np.sort(np.random.default_rng(seed).permutation(len(train_rows))[:BASELINE_ROWS])
        train_rows = train_rows.iloc[pick].reset_index(drop=True)
    pp = Preprocessor.fit(schema, table_columns(train_rows), warps=False)
    train, test = encode_rows(pp, train_rows), encode_rows(pp, rows)
    hidden = test.mx.numpy() & ~observed
    imputed = impute("knn", seed, Encoding(schema, pp), train, test.x.numpy(), observed)
    out = {"knn": imputation_metrics(schema, pp, imputed, test.x.numpy(), hidden)}
    out["hgb_nan"] = hgb_nan_metrics(schema, pp, train, test, observed, seed)
    out["knn_per_feature"] = {}
    for d, col in enumerate(schema.features):
        only = np.zeros_like(hidden)
        only[:, d] = hidden[:, d]
        if only.any():
            f = imputation_metrics(schema, pp, imputed, test.x.numpy(), only)
            out["knn_per_feature"][col.name] = round(f["acc_xu" if col.is_discrete else "rmse_xu"], 4)
    out["fitted_on_rows"] = len(train_rows)
    return out


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
    base = summary.get("baselines", {})
    knn, hgb = base.get("knn", {}), base.get("hgb_nan", {})
    if "rmse_xu" in summary:
        vs = f"; KNN {knn['rmse_xu']:.3f}" if "rmse_xu" in knn else ""
        lines.append(
            f"  hidden numeric entries: RMSE {summary['rmse_xu']:.3f} standard deviations (about 1.0 = imputing "
            f"each column's mean{vs})"
        )
    if "acc_xu" in summary:
        vs = f" (KNN {knn['acc_xu']:.3f})" if "acc_xu" in knn else ""
        lines.append(f"  hidden categorical entries: accuracy {summary['acc_xu']:.3f}{vs}")
    target = ", ".join(target_names)
    if "target_rmse" in summary:
        sd = f"; its standard deviation there: {summary['target_std']:.4g}" if "target_std" in summary else ""
        vs = f"; gradient boosting {hgb['target_rmse']:.4g}" if "target_rmse" in hgb else ""
        rmse = summary["target_rmse"]
        lines.append(f"  target {target}: RMSE {rmse:.4g} (in its units{sd}{vs}), from the shown features")
    if "target_accuracy" in summary:
        vs = f" (gradient boosting {hgb['target_accuracy']:.3f})" if "target_accuracy" in hgb else ""
        lines.append(f"  target {target}: accuracy {summary['target_accuracy']:.3f}{vs}, from the shown features")
    applied = summary.get("calibration_applied", True)
    for role, figures in summary.get("interval_coverage", {}).items():
        what = "target" if role == "target" else "hidden numeric entries"
        lines.append(
            f"  90 % intervals, {what}: cover {figures['raw_cover90']:.1%} raw, {figures['calibrated_cover90']:.1%} "
            f"calibrated (2-fold check on the calibration rows, {figures['entries']} entries)"
            + ("" if applied else "; the correction is not applied (it did not help)")
        )
    return "\n".join(lines)


def card(manifest: dict[str, Any]) -> str:
    """The model card of an artifact's manifest, for `hhvaem info MODEL`: data, training, quality, per feature."""
    schema, q = manifest["schema"], manifest.get("metrics", {}).get("quality")
    training = manifest.get("training", {})
    seconds = sum(training.get(s, {}).get("seconds", 0.0) for s in ("marginal", "vi", "hmc"))
    lines = [
        f"model {manifest.get('name')} (created {manifest.get('created_at')})",
        f"  data: {manifest.get('data', {}).get('rows', '?')} rows, {len(schema['features'])} features, targets "
        + ", ".join(c["name"] for c in schema["targets"]),
        f"  training: {training.get('steps', {}).get('total', '?')} steps in {seconds:.0f} s"
        + (f"; calibration and quality {q['extra_seconds']:.0f} s more" if q and "extra_seconds" in q else ""),
    ]
    cal = manifest.get("calibration")
    if not cal:
        lines.append("  intervals: not calibrated (trained with --no-calibrate, or before calibration existed)")
    elif cal.get("applied", True):
        cross = " (cross-fit)" if cal.get("cross_fit") else ""
        lines.append(f"  intervals: calibrated on {cal['rows']} rows{cross}, method {cal['method']}")
    else:
        lines.append(
            f"  intervals: raw; a correction measured on {cal['rows']} rows did not bring coverage closer to "
            "nominal in its 2-fold check, so it is not applied"
        )
    if q is None:
        return "\n".join([*lines, "  no quality summary (trained before it existed)"])
    lines.append(describe(q, [c["name"] for c in schema["targets"]]))
    knn = q.get("baselines", {}).get("knn_per_feature", {})
    if q.get("per_feature"):
        lines.append("  per feature (hidden entries: RMSE in standard deviations, or accuracy; KNN beside it):")
        for name, f in q["per_feature"].items():
            figure = f"RMSE {f['rmse']:.3f}" if "rmse" in f else f"accuracy {f['accuracy']:.3f}"
            vs = f" (KNN {knn[name]:.3f})" if name in knn else ""
            lines.append(f"    {name}: {figure}{vs}, {f['entries']} entries")
    return "\n".join(lines)
