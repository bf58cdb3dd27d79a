"""The benchmark tables, each a folder with data.csv and schema.json (docs/protocol.md's form).

* the UCI folders given on the command line (boston, concrete, energy, wine_quality_red, yacht);
* scikit-learn's shipped tables: diabetes (raw units), wine, breast_cancer (30 columns), digits (64 count-like
  pixel columns, target the digit);
* two synthetic tables that reproduce failure shapes seen on users' tables:
  - ``categorical_wide``: 2,000 rows, 84 feature columns of which 40 categorical with 3-12 levels, all driven by
    a 3-dimensional latent factor, and a binary target from the same factor: the latent is recoverable from
    the rest of a row, so a good model beats column means / modes clearly;
  - ``sensors``: 12,000 rows of 14 sensor readings that are smooth, nearly deterministic functions of two hidden
    quantities (noise 1 % of their range), 2 of them binned into 8 categories, and an 8-class regime target:
    a model that captures the manifold imputes almost exactly.

Types: the shipped schemas follow the paper's rule, under which a non-negative column with many exact zeros is
`positive` (a log-normal on log(1 + x)). Unless `--paper-types`, such columns (at least `ZERO_INFLATED_SHARE` of
their values exactly 0: concrete's slag, fly_ash and superplasticizer, boston's ZN) are written `zero_positive`,
the type `hhvaem train` infers for them from a bare CSV. Both families share the protocol's scale (log1p, then
standardised), so every metric and baseline compares either way.

    python -m benchmarks.tables OUT [--uci ../shared/data/uci] [--only NAME,...] [--paper-types]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from hhvaem.training.tabular import ZERO_INFLATED_SHARE

SKLEARN = ("diabetes", "wine", "breast_cancer", "digits")
SYNTHETIC = ("categorical_wide", "sensors")


def write(folder: Path, df: pd.DataFrame, features: list[dict], targets: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "data.csv", index=False)
    (folder / "schema.json").write_text(json.dumps({"features": features, "targets": targets}, indent=1))
    return folder


def _categorical(name: str, values: np.ndarray) -> dict:
    return {
        "name": name,
        "type": "categorical" if len(np.unique(values)) > 2 else "binary",
        "categories": sorted(int(v) for v in np.unique(values)),
    }


def sklearn_table(name: str, out: Path) -> Path:
    from sklearn import datasets

    if name == "diabetes":
        bunch = datasets.load_diabetes(scaled=False)
    else:
        bunch = getattr(datasets, f"load_{name}")()
    cols = [str(c).replace(" ", "_") for c in bunch.feature_names]
    df = pd.DataFrame(bunch.data, columns=cols)
    features = []
    for c in cols:
        v = df[c].to_numpy()
        if len(np.unique(v)) == 1:  # digits' border pixels are always 0: nothing to model (the reader refuses them)
            continue
        if name == "digits":  # pixel intensities 0..16: counts
            features.append({"name": c, "type": "count"})
        elif len(np.unique(v)) < 10:
            df[c] = v.astype(int)
            features.append(_categorical(c, df[c].to_numpy()))
        else:
            features.append({"name": c, "type": "positive" if v.min() >= 0 else "real"})
    df = df[[f["name"] for f in features]]
    df["target"] = bunch.target
    if name == "diabetes":
        target = {"name": "target", "type": "positive"}
    else:
        target = _categorical("target", bunch.target)
    return write(out / name, df, features, [target])


def categorical_wide(out: Path, rows: int = 2000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(rows, 3))
    data, features = {}, []
    for j in range(44):
        x = u @ rng.normal(size=3) + 0.5 * rng.normal(size=rows)
        kind = ("real", "positive", "count")[j % 3]
        if kind == "positive":
            x = np.exp(0.5 * x)
        elif kind == "count":
            x = rng.poisson(np.exp(0.4 * x + 1.0)).astype(float)
        data[f"n{j}"] = x
        features.append({"name": f"n{j}", "type": kind})
    for j in range(40):
        k = int(rng.integers(3, 13))
        logits = 1.5 * u @ rng.normal(size=(3, k))
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        c = (probs.cumsum(1) < rng.random((rows, 1))).sum(1)
        data[f"c{j}"] = c
        features.append({"name": f"c{j}", "type": "categorical", "categories": list(range(k))})
    df = pd.DataFrame(data)
    df["target"] = (u @ np.array([1.0, -1.0, 0.5]) + 0.3 * rng.normal(size=rows) > 0).astype(int)
    return write(out / "categorical_wide", df, features, [{"name": "target", "type": "binary", "categories": [0, 1]}])


def sensors(out: Path, rows: int = 12000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    s, t = rng.random(rows), rng.random(rows)
    signals = [
        np.sin(3 * s) + t,
        np.cos(2 * t) * s,
        s * t,
        np.exp(s) - t,
        (s - 0.5) ** 2 + t,
        np.sin(2 * np.pi * t) * 0.5 + s,
        s + 2 * t,
        np.tanh(3 * (s - t)),
        np.sqrt(s + t + 0.1),
        s**3 - t**2,
        np.log1p(s) * (1 + t),
        np.sin(s + t),
    ]
    data = {}
    features = []
    for j, x in enumerate(signals):
        x = x + 0.01 * (x.max() - x.min()) * rng.normal(size=rows)
        data[f"sensor{j}"] = x
        features.append({"name": f"sensor{j}", "type": "positive" if x.min() >= 0 else "real"})
    for j, x in enumerate((s + 0.3 * t, t - 0.3 * s)):
        c = np.digitize(x, np.quantile(x, np.linspace(0, 1, 9)[1:-1]))
        data[f"band{j}"] = c
        features.append({"name": f"band{j}", "type": "categorical", "categories": list(range(8))})
    df = pd.DataFrame(data)
    df["regime"] = (np.floor(s * 4) + 4 * np.floor(t * 2)).astype(int)
    target = {"name": "regime", "type": "categorical", "categories": list(range(8))}
    return write(out / "sensors", df, features, [target])


def retype_zero_inflated(folder: Path) -> list[str]:
    """`positive` columns with at least ZERO_INFLATED_SHARE exact zeros become `zero_positive`; returns their names."""
    schema = json.loads((folder / "schema.json").read_text())
    df = pd.read_csv(folder / "data.csv")
    changed = []
    for part in ("features", "targets"):
        for col in schema[part]:
            v = df[col["name"]].dropna().to_numpy(dtype=float)
            if col["type"] == "positive" and len(v) and float(np.mean(v == 0)) >= ZERO_INFLATED_SHARE:
                col["type"] = "zero_positive"
                changed.append(col["name"])
    if changed:
        (folder / "schema.json").write_text(json.dumps(schema, indent=1))
    return changed


def build(out: Path, uci: Path | None, only: set[str] | None, paper_types: bool = False) -> list[Path]:
    folders = []
    if uci is not None:
        for d in sorted(p for p in uci.iterdir() if (p / "data.csv").exists()):
            if only is None or d.name in only:
                dest = out / d.name
                dest.mkdir(parents=True, exist_ok=True)
                for f in ("data.csv", "schema.json"):
                    shutil.copy(d / f, dest / f)
                folders.append(dest)
    for name in SKLEARN:
        if only is None or name in only:
            folders.append(sklearn_table(name, out))
    makers = {"categorical_wide": categorical_wide, "sensors": sensors}
    for name in SYNTHETIC:
        if only is None or name in only:
            folders.append(makers[name](out))
    if not paper_types:
        for folder in folders:
            retype_zero_inflated(folder)
    return folders


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--uci", type=Path, help="folder of UCI tables (data.csv + schema.json each)")
    ap.add_argument("--only", help="comma-separated table names")
    ap.add_argument("--paper-types", action="store_true", help="keep zero-inflated columns `positive`")
    args = ap.parse_args(argv)
    for folder in build(args.out, args.uci, set(args.only.split(",")) if args.only else None, args.paper_types):
        print(folder)


if __name__ == "__main__":
    main()
