"""The demo model: scikit-learn's diabetes table in raw units, with readable names and units.

442 patients, 10 baseline measurements and the disease progression one year later (the
target). `hhvaem demo` trains it on first run and serves it; the service and browser tests
train a smaller one the same way.

The recipe (`DEMO_STEPS`) is sized so that the first `make demo` serves within two minutes of the
install on a busy 2-core machine, one torch thread: dependency-VAE steps are cheap (~3 ms) and
take the model most of the way, HMC steps are not (~0.4 s each, 30 chains), and on this table
stage 3 gains little after its first few dozen steps (with early stopping, when that was the
default, the best step was 35 of 200 in a 2000-step recipe). Training and export then take
about a minute (README, "Quick start").
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hhvaem.model.schema import Column, Schema
from hhvaem.training.artifact import data_fingerprint, write_artifact
from hhvaem.training.fit import fit
from hhvaem.training.trainer import Progress, StageSteps

DEMO_NAME = "diabetes"
DEMO_STEPS = StageSteps(marginal=500, vi=3000, hmc=40)
# sklearn's short names -> (readable name, type, unit)
_COLUMNS = {
    "age": ("age", "positive", "years"),
    "sex": ("sex", "binary", None),
    "bmi": ("bmi", "positive", "kg/m²"),
    "bp": ("blood_pressure", "positive", "mm Hg"),
    "s1": ("total_cholesterol", "positive", "mg/dL"),
    "s2": ("ldl", "positive", "mg/dL"),
    "s3": ("hdl", "positive", "mg/dL"),
    "s4": ("cholesterol_ratio", "positive", "total/HDL"),
    "s5": ("log_triglycerides", "real", "log mg/dL"),
    "s6": ("blood_sugar", "positive", "mg/dL"),
    "target": ("disease_progression", "positive", "index"),
}


def demo_table() -> tuple[pd.DataFrame, Schema]:
    from sklearn.datasets import load_diabetes

    raw = load_diabetes(scaled=False, as_frame=True).frame
    df = raw.rename(columns={k: v[0] for k, v in _COLUMNS.items()})
    df["sex"] = df["sex"].astype(int)
    cols = {
        name: Column(name, typ, categories=(1, 2) if typ == "binary" else None, unit=unit)
        for name, typ, unit in _COLUMNS.values()
    }
    target = cols.pop("disease_progression")
    return df, Schema(features=tuple(cols.values()), targets=(target,))


def build_demo(
    out: str | Path, steps: int | StageSteps | None = None, seed: int = 0, progress: Progress | None = None
) -> dict:
    """Trains the demo model and writes its artifact (ONNX graphs included) to `out`; returns the manifest.

    `steps`: the demo recipe `DEMO_STEPS` when None, else a total as `hhvaem train --steps` takes it (or stages)."""
    steps = DEMO_STEPS if steps is None else steps
    df, schema = demo_table()
    fitted = fit(df, schema, "hhvaem", steps, seed, progress)
    return write_artifact(out, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(df), name=DEMO_NAME)
