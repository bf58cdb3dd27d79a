"""Catching data-entry errors: the plausibility check against a per-column z-score and an IsolationForest
(docs/plausibility.md).

For each table, a model is trained as `hhvaem train` trains it (protocol split 0's training rows; rows held out or
the cross-fit, then calibration: training/finish.py). Each test row is scored clean, and again with one realistic
error in one numeric column it has (COPIES copies per error kind, a different column each, chosen at random):

- ``times10`` / ``div10``: the value multiplied or divided by 10 (a slipped decimal point);
- ``unit18``: multiplied or divided by 18 (mg/dL entered as mmol/L or the reverse, as for glucose);
- ``unit2.2``: multiplied or divided by 2.2 (pounds for kilograms: a small slip);
- ``swap``: two numeric columns' values exchanged;
- ``other_row``: the value taken from another test row.

Scores of a row (higher = more suspicious): ours, -log of the smallest plausibility p over its values (every value
is checked against the others, app/engine/plausibility.py, 50 samples); the z-score, the largest |x - mean| / sd
over its numeric values (training rows' mean and sd); IsolationForest (scikit-learn, 200 trees, fitted on the
training rows' numeric columns, holes filled with the training median), minus its score_samples. The figures:
ROC AUC of corrupted against clean rows per error kind, and the share of clean rows and of clean values flagged at
the default threshold (0.01).

    python -m benchmarks.plausibility /tmp/tables --out docs/plausibility.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.train_speed import commit

KINDS = ("times10", "div10", "unit18", "unit2.2", "swap", "other_row")
COPIES = 3
SAMPLES = 50
THRESHOLD = 0.01


def corrupt(row: dict, kind: str, numeric: list[str], donors: list[dict], rng) -> dict | None:
    """`row` with one error of `kind`, or None when the row has no column it applies to."""
    have = [c for c in numeric if row.get(c) is not None and np.isfinite(row[c])]
    if kind == "swap":
        if len(have) < 2:
            return None
        a, b = rng.choice(have, 2, replace=False)
        return {**row, a: row[b], b: row[a]}
    if not have:
        return None
    col = str(rng.choice(have))
    if kind == "other_row":
        pool = [d[col] for d in donors if d.get(col) is not None and d[col] != row[col]]
        return {**row, col: pool[rng.integers(len(pool))]} if pool else None
    factor = {"times10": 10.0, "div10": 0.1, "unit18": 18.0, "unit2.2": 2.2}[kind]
    if kind in ("unit18", "unit2.2") and rng.random() < 0.5:
        factor = 1 / factor
    return {**row, col: row[col] * factor}


def auc(bad: np.ndarray, good: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(bad)), np.zeros(len(good))], np.r_[bad, good]))


# A row the service answers with a 422 naming the value (too many standard deviations from the training data to
# extrapolate): caught for certain, as the most suspicious.
REFUSED = {"plausibility": {"refused": {"p": 0.0, "unusual": True}}, "unusual": ["refused"], "refused": True}


def check(engine, rows: list[dict], seed: int) -> list[dict]:
    from hhvaem.app.engine.queries import PredictQuery

    prepared = PredictQuery(rows, SAMPLES, seed=seed, plausibility=True, strict=False).prepare(engine)
    return prepared.finish(engine.run_graph(prepared.graph, prepared.feeds))


def run_table(table: Path, seed: int = 0) -> dict:
    from sklearn.ensemble import IsolationForest

    from hhvaem.app.engine import Engine
    from hhvaem.app.engine.errors import InputError
    from hhvaem.training import finish, quality
    from hhvaem.training.artifact import data_fingerprint, write_artifact
    from hhvaem.training.evaluate import split_indices
    from hhvaem.training.fit import fit
    from hhvaem.training.tabular import load_dataset

    df, schema = load_dataset(table / "data.csv", [], table / "schema.json")
    train_idx, test_idx = split_indices(len(df), 0)
    train_all, test_df = df.iloc[train_idx].reset_index(drop=True), df.iloc[test_idx].reset_index(drop=True)
    started = time.perf_counter()
    train_df, held = quality.split_rows(train_all, seed)
    fitted = fit(train_df, schema, "hhvaem", None, seed)
    rng = np.random.default_rng(seed)
    features = [c.name for c in schema.features]
    numeric = [c.name for c in schema.features if not c.is_discrete]
    with tempfile.TemporaryDirectory(prefix="plausibility-") as tmp:
        art = Path(tmp) / "model"
        write_artifact(art, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(train_all))
        refit = lambda rows: fit(rows, schema, "hhvaem", None, seed)  # noqa: E731
        finish.finish(art, len(train_all), train_df, held, fitted, refit, seed, 1, True, lambda line: None)
        train_seconds = time.perf_counter() - started
        engine = Engine(art, threads=1)

        def plain(v):
            return (
                None if v is None or (isinstance(v, float) and np.isnan(v)) else (v.item() if hasattr(v, "item") else v)
            )

        clean = [{c: plain(test_df.at[i, c]) for c in features} for i in range(len(test_df))]
        clean = [{k: v for k, v in r.items() if v is not None} for r in clean]
        rows, kinds = list(clean), ["clean"] * len(clean)
        for kind in KINDS:
            for _ in range(COPIES):
                for r in clean:
                    bad = corrupt(r, kind, numeric, clean, rng)
                    if bad is not None:
                        rows.append(bad)
                        kinds.append(kind)
        t0 = time.perf_counter()
        answers = []
        for i in range(0, len(rows), 64):
            try:
                answers += check(engine, rows[i : i + 64], seed)
            except InputError:  # a value the engine refuses outright (too far from the training data): row by row
                for row in rows[i : i + 64]:
                    try:
                        answers += check(engine, [row], seed)
                    except InputError:
                        answers.append(REFUSED)
        check_seconds = time.perf_counter() - t0
    kinds_a = np.array(kinds)
    ours = np.array([-np.log(max(min([v["p"] for v in a["plausibility"].values()] or [1.0]), 1e-6)) for a in answers])
    flagged_rows = np.array([bool(a["unusual"]) for a in answers])
    clean_p = np.array([v["p"] for a, k in zip(answers, kinds) if k == "clean" for v in a["plausibility"].values()])
    min_p = np.array([min([v["p"] for v in a["plausibility"].values()] or [1.0]) for a in answers])

    mean = train_all[numeric].astype(float).mean()
    sd = train_all[numeric].astype(float).std().replace(0, 1.0)
    x = np.array([[r.get(c, np.nan) for c in numeric] for r in rows], dtype=float)
    z = np.nanmax(np.abs((x - mean.to_numpy()) / sd.to_numpy()), axis=1)
    z = np.where(np.isfinite(z), z, 0.0)
    fill = train_all[numeric].astype(float).median().to_numpy()
    forest = IsolationForest(n_estimators=200, random_state=seed).fit(
        np.where(np.isnan(train_all[numeric].astype(float).to_numpy()), fill, train_all[numeric].astype(float))
    )
    iso = -forest.score_samples(np.where(np.isnan(x), fill, x))

    good = kinds_a == "clean"
    result: dict = {"kinds": {}}
    for kind in KINDS:
        bad = kinds_a == kind
        if not bad.any():
            continue
        result["kinds"][kind] = {
            "rows": int(bad.sum()),
            "auc_hhvaem": auc(ours[bad], ours[good]),
            "auc_zscore": auc(z[bad], z[good]),
            "auc_isolation_forest": auc(iso[bad], iso[good]),
            "flagged_hhvaem": float(flagged_rows[bad].mean()),
            "flagged_at_0.001": float((min_p[bad] < 0.001).mean()),
            "refused": int(sum(1 for a, k in zip(answers, kinds) if k == kind and a.get("refused"))),
        }
    result.update(
        clean_rows=int(good.sum()),
        clean_rows_flagged=float(flagged_rows[good].mean()),
        clean_values=len(clean_p),
        clean_values_flagged=float(np.mean(clean_p < THRESHOLD)),
        clean_values_flagged_at={f"{t:g}": float(np.mean(clean_p < t)) for t in (0.01, 0.003, 0.001)},
        clean_rows_flagged_at={f"{t:g}": float(np.mean(min_p[good] < t)) for t in (0.01, 0.003, 0.001)},
        train_seconds=round(train_seconds, 1),
        check_ms_per_row=round(1000 * check_seconds / len(rows), 2),
        samples=SAMPLES,
        threshold=THRESHOLD,
        calibrated=engine.calibration is not None,
    )
    return result


def render(results: dict) -> str:
    lines = [
        "| table | error | rows | AUC HH-VAEM | AUC z-score | AUC IsolationForest | flagged at 0.01 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["tables"].items():
        for kind, f in r["kinds"].items():
            best = max(f["auc_zscore"], f["auc_isolation_forest"])
            mark = "**" if f["auc_hhvaem"] >= best else ""
            lines.append(
                f"| {name} | {kind} | {f['rows']} | {mark}{f['auc_hhvaem']:.3f}{mark} | {f['auc_zscore']:.3f} | "
                f"{f['auc_isolation_forest']:.3f} | {f['flagged_hhvaem']:.1%} |"
            )
    lines += ["", "| table | clean rows flagged | clean values flagged | check ms per row |", "|---|---|---|---|"]
    for name, r in results["tables"].items():
        lines.append(
            f"| {name} | {r['clean_rows_flagged']:.1%} of {r['clean_rows']} | {r['clean_values_flagged']:.1%} of "
            f"{r['clean_values']} | {r['check_ms_per_row']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/plausibility.json"))
    ap.add_argument("--only", default=None)
    ap.add_argument("--render", action="store_true", help="print the tables of --out and stop")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(args.out.read_text())))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"tables": {}}
    for table in sorted(p for p in args.tables.iterdir() if (p / "data.csv").exists()):
        if (args.only and table.name not in args.only.split(",")) or table.name in results["tables"]:
            continue
        before = os.getloadavg()[0]
        r = run_table(table)
        r.update(load_before=round(before, 2), load_after=round(os.getloadavg()[0], 2), commit=commit())
        r["machine"] = f"{platform.node()} ({os.cpu_count()} cores)"
        results["tables"][table.name] = r
        args.out.write_text(json.dumps(results, indent=1))
        print(f"{table.name}: done", flush=True)
    print(render(results))


if __name__ == "__main__":
    main()
