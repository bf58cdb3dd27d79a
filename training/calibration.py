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
from hhvaem.model.calibration import Calibration, pit
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Schema
from hhvaem.training.evaluate import served_posterior
from hhvaem.training.fit import encode_rows
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
    hidden = data.mx.numpy() & ~observed
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    columns = [(c, out["features"][:, :, d], data.x.numpy()[:, d], hidden[:, d]) for d, c in enumerate(schema.features)]
    seen_y = data.my.numpy().astype(bool)
    columns += [(c, out["target"][:, :, t], data.y.numpy()[:, t], seen_y[:, t]) for t, c in enumerate(schema.targets)]
    for col, natural, x, keep in columns:
        if col.is_discrete or not keep.any():
            continue
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
    return calibration, {"rows": len(rows), "masks_per_row": per_row, "samples": SAMPLES}, found, roles


def stored(calibration: Calibration, summary: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `calibration` entry."""
    return {**calibration.to_json(), **summary}
