"""The demo model: scikit-learn's diabetes table in raw units, with readable names and units.

442 patients, 10 baseline measurements and the disease progression one year later (the
target). `hhvaem demo` trains it on first run (a few minutes on 2 cores) and serves it;
the service and browser tests train a smaller one the same way.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hhvaem.model.schema import Column, Schema
from hhvaem.training.artifact import data_fingerprint, write_artifact
from hhvaem.training.fit import fit
from hhvaem.training.trainer import Progress

DEMO_NAME = "diabetes"
DEMO_STEPS = 2000
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


def build_demo(out: str | Path, steps: int = DEMO_STEPS, seed: int = 0, progress: Progress | None = None) -> dict:
    """Trains the demo model and writes its artifact (ONNX graph included) to `out`; returns the manifest."""
    df, schema = demo_table()
    fitted = fit(df, schema, "hhvaem", steps, seed, progress)
    return write_artifact(out, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(df), name=DEMO_NAME)
