"""Measuring the conformal correction of the served quantiles (model/calibration.py) at the end of training.

Scores come from rows the served model was not fitted on: the rows `hhvaem train` holds out (training/quality.py),
or, on a table too small to spare them, a cross-fit: a second model, trained with the same recipe on 80 % of the
rows, is scored on the other 20 % and its correction goes with the model trained on every row (`cross_fit_rows`).
That model is a little weaker than the served one, so the correction errs wide; the cost is a second training run.

Masks follow no single serving distribution (nobody knows it): each held-out row is scored under several masks, each
with its own observed share drawn uniformly in (0, 1), every feature the row has shown with that probability, so
every observed-share bin gets scores. The target is always hidden; hidden numeric features and numeric targets
give one score each: the probability integral transform of the true value under the served predictive, read off
the draws the engine's summaries use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hhvaem.app.engine import Engine
from hhvaem.app.engine.summaries import sample_quantiles
from hhvaem.model.calibration import Calibration, pit
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Schema
from hhvaem.training.evaluate import served_posterior
from hhvaem.training.fit import encode_rows
from hhvaem.training.metrics import crps
from hhvaem.training.trainer import TrainData

SAMPLES = 50  # posterior samples per scored row (the quality summary's)
DRAWS = 20  # draws per sample: 1,000 per predictive, as the engine's summaries use
TARGET_MASKS = 4000  # masks per table in all: MIN_SCORES per cell and more, within seconds
MAX_MASKS_PER_ROW = 16
CROSS_FIT_FRACTION = 0.2


def cross_fit_rows(df: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows the calibration model trains on, the CROSS_FIT_FRACTION it is scored on), chosen by the seed."""
    order = np.random.default_rng(seed + 7).permutation(len(df))
    n = max(1, round(len(df) * CROSS_FIT_FRACTION))
    return df.iloc[np.sort(order[n:])].reset_index(drop=True), df.iloc[np.sort(order[:n])].reset_index(drop=True)


def random_masks(known: np.ndarray, per_row: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(row index [R * per_row], observed [R * per_row, D]): each copy of a row with its own observed share,
    uniform in (0, 1), of the features the row has."""
    rows = np.repeat(np.arange(len(known)), per_row)
    share = rng.random(len(rows))[:, None]
    return rows, (rng.random((len(rows), known.shape[1])) < share) & known[rows]


def scores(
    schema: Schema, pp: Preprocessor, out: dict[str, np.ndarray], data: TrainData, observed: np.ndarray, rng
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{column: (observed shares, scores)} of the hidden numeric entries whose truth is known, from the served
    posterior `out` of `data`'s rows under `observed`."""
    share = observed.mean(1)
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _, col, natural, x, keep in numeric_entries(schema, out, data, observed):
        p = col.family.component_params(natural[keep], col.n_categories)
        draws = col.family.user_draws(p, pp.stats.get(col.name), rng, DRAWS)
        found[col.name] = (share[keep], pit(draws, pp.to_original(col, x[keep]), rng))
    return found


Scores = dict[str, tuple[np.ndarray, np.ndarray]]


def measure(
    artifact: str | Path, rows: pd.DataFrame, seed: int = 0, threads: int = 1
) -> tuple[Calibration, dict, Scores, dict[str, str]]:
    """The correction of the model at `artifact` from `rows` it was not fitted on, a summary of what it used, and
    the scores and column roles it was fitted from (to fit other methods on: benchmarks/calibration.py)."""
    engine = Engine(artifact, threads=threads)
    data = encode_rows(engine.preprocessor, rows)
    rng = np.random.default_rng(seed + 11)
    per_row = int(np.clip(np.ceil(TARGET_MASKS / max(len(rows), 1)), 1, MAX_MASKS_PER_ROW))
    index, observed = random_masks(data.mx.numpy(), per_row, rng)
    copies = TrainData(*(t[index] for t in (data.x, data.mx, data.y, data.my)))
    out = served_posterior(engine, copies, observed, SAMPLES, seed)
    found = scores(engine.schema, engine.preprocessor, out, copies, observed, rng)
    roles = {c.name: ("target" if c in engine.schema.targets else "feature") for c in engine.schema.columns}
    calibration = Calibration.fit(found, roles)
    about = {"rows": len(rows), "masks_per_row": per_row, "samples": SAMPLES}
    about["check"] = two_fold_check(found, roles, rows_of(engine.schema, copies, observed, index))
    about["applied"] = helps(about["check"])
    return calibration, about, found, roles


def helps(check: dict[str, dict[str, float]]) -> bool:
    """Whether the correction brought the 50 % and 90 % coverage closer to nominal in the 2-fold check, over the
    checked entries. On few rows (a small table's cross-fit, the demo's 44) a correction can be mostly noise: then
    it is kept in the manifest for the record but not applied, and the model serves its raw quantiles."""
    miss = {"raw": 0.0, "calibrated": 0.0}
    for figures in check.values():
        for kind in miss:
            for level, nominal in (("50", 0.5), ("90", 0.9)):
                miss[kind] += figures["entries"] * abs(figures[f"{kind}_cover{level}"] - nominal)
    return miss["calibrated"] <= miss["raw"]


def rows_of(schema: Schema, data: TrainData, observed: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """{column: the row each of its scores came from}, in the order `scores` gives them."""
    return {col.name: index[keep] for _, col, _, _, keep in numeric_entries(schema, {}, data, observed, lazy=True)}


def two_fold_check(found: Scores, roles: dict[str, str], rows: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Coverage of the 50 % and 90 % intervals, raw and corrected, with the correction fitted on half the scored rows
    (odd or even) and checked on the other half, both ways: an honest figure from the rows the correction used."""
    hits: dict[str, dict[str, list[np.ndarray]]] = {}
    for fold in (0, 1):
        train = {k: (s[rows[k] % 2 == fold], u[rows[k] % 2 == fold]) for k, (s, u) in found.items()}
        correction = Calibration.fit(train, roles)
        for name, (share, u) in found.items():
            test = rows[name] % 2 != fold
            acc = hits.setdefault("target" if roles[name] == "target" else "features", {})
            for level, q in INTERVALS.items():
                lo, hi = correction.levels(name, share[test], q).T
                acc.setdefault(f"calibrated_cover{level}", []).append((u[test] >= lo) & (u[test] <= hi))
                acc.setdefault(f"raw_cover{level}", []).append((u[test] >= q[0]) & (u[test] <= q[1]))
    return {
        role: {k: round(float(np.concatenate(v).mean()), 4) for k, v in acc.items()}
        | {"entries": int(sum(len(x) for x in acc["raw_cover90"]))}
        for role, acc in hits.items()
    }


def stored(calibration: Calibration, summary: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `calibration` entry."""
    return {**calibration.to_json(), **summary}


INTERVALS = {"50": (0.25, 0.75), "90": (0.05, 0.95)}
RESAMPLE = (np.arange(200) + 0.5) / 200  # levels at which a (corrected) predictive is resampled for its CRPS


def interval_figures(
    schema: Schema,
    pp: Preprocessor,
    out: dict[str, np.ndarray],
    data: TrainData,
    observed: np.ndarray,
    rng: np.random.Generator,
    corrections: dict[str, Calibration | None],
    scale: dict[str, float],
) -> dict[str, dict[str, float]]:
    """Per role ("features": the hidden numeric entries, "target"), for each named correction (None: the raw
    quantiles): the coverage and mean width of the central 50 % and 90 % intervals as served (read off the same
    draws at the corrected levels) and the CRPS of the corrected predictive; widths and CRPS in units of `scale`
    (a standard deviation per column). `{kind}_cover90`, `{kind}_width90`, `{kind}_crps`, ..., and `entries`."""
    share = observed.mean(1)
    parts: dict[str, dict[str, list[np.ndarray]]] = {}
    for role, col, natural, x, keep in numeric_entries(schema, out, data, observed):
        p = col.family.component_params(natural[keep], col.n_categories)
        draws = col.family.user_draws(p, pp.stats.get(col.name), rng, DRAWS)
        truth = pp.to_original(col, x[keep])
        sd = scale.get(col.name) or 1.0
        acc = parts.setdefault(role, {})
        acc.setdefault("entries", []).append(np.ones(len(truth)))
        for kind, correction in corrections.items():
            for name, q in INTERVALS.items():
                lv = correction.levels(col.name, share[keep], q) if correction else np.tile(q, (len(truth), 1))
                a, b = sample_quantiles(draws, lv)
                acc.setdefault(f"{kind}_cover{name}", []).append((truth >= a) & (truth <= b))
                acc.setdefault(f"{kind}_width{name}", []).append((b - a) / sd)
            lv = correction.levels(col.name, share[keep], tuple(RESAMPLE)) if correction else RESAMPLE
            resampled = sample_quantiles(draws, lv).T
            acc.setdefault(f"{kind}_crps", []).append(np.full(len(truth), crps(resampled / sd, truth / sd)))
    total = lambda k, v: int(np.concatenate(v).sum()) if k == "entries" else float(np.concatenate(v).mean())  # noqa: E731
    return {role: {k: total(k, v) for k, v in acc.items()} for role, acc in parts.items()}


def numeric_entries(
    schema: Schema, out: dict[str, np.ndarray], data: TrainData, observed: np.ndarray, lazy: bool = False
):
    """(role, column, its natural parameters [N, K, W], its values [N], which entries to score [N]) of each numeric
    column with an entry to score: a hidden feature whose truth is known, a known target (always hidden). `lazy`:
    no parameters (None), for callers that only need which entries."""
    hidden = data.mx.numpy() & ~observed
    seen_y = data.my.numpy().astype(bool)
    for d, col in enumerate(schema.features):
        if not col.is_discrete and hidden[:, d].any():
            yield "features", col, None if lazy else out["features"][:, :, d], data.x.numpy()[:, d], hidden[:, d]
    for t, col in enumerate(schema.targets):
        if not col.is_discrete and seen_y[:, t].any():
            yield "target", col, None if lazy else out["target"][:, :, t], data.y.numpy()[:, t], seen_y[:, t]
