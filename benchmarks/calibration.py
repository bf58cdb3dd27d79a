"""Coverage and width of the served intervals before and after the conformal correction (docs/calibration.md).

For each table and protocol split (docs/protocol.md: the split's training rows, its test rows), the model is
trained exactly as `hhvaem train` trains it (rows held out, or the cross-fit on small tables; training/finish.py),
then the test rows are scored through the engine's graphs at three observed shares: every feature the row has is
shown with probability 0.2, 0.5 or 0.8 (MASKS independent masks per row and share), the target hidden. Each hidden
numeric entry and each numeric target gets its 50 % and 90 % central intervals read off the draws at the nominal
levels (raw) and at the calibrated levels (`Calibration.levels`, what the engine serves), and the CRPS of the
predictive resampled at 200 evenly spaced levels either way. Widths and CRPS are in standard deviations of the
column on the training rows.

    python -m benchmarks.tables /tmp/tables --uci ../shared/data/uci
    python -m benchmarks.calibration run /tmp/tables --out docs/calibration/runs --splits 0,1,2,3,4
    python -m benchmarks.calibration render docs/calibration/runs > /tmp/calibration.md

One torch and one ONNX Runtime thread; each (table, split) writes its JSON (skipped when present), with the commit,
the load average before and after and the seconds spent in training, the cross-fit and the calibration.
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

SHARES = (0.2, 0.5, 0.8)
MASKS = 4
SAMPLES = 100  # the service's default


def score_split(table: Path, split: int, seed: int = 0) -> dict:
    from hhvaem.app.engine import Engine
    from hhvaem.model.calibration import DEFAULT_METHOD, METHODS, Calibration
    from hhvaem.training import finish, quality
    from hhvaem.training.artifact import data_fingerprint, write_artifact
    from hhvaem.training.calibration import interval_figures
    from hhvaem.training.evaluate import served_posterior, split_indices
    from hhvaem.training.fit import encode_rows, fit
    from hhvaem.training.tabular import load_dataset
    from hhvaem.training.trainer import TrainData

    df, schema = load_dataset(table / "data.csv", [], table / "schema.json")
    train_idx, test_idx = split_indices(len(df), split)
    train_all, test_df = df.iloc[train_idx].reset_index(drop=True), df.iloc[test_idx].reset_index(drop=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    train_df, held = quality.split_rows(train_all, seed)
    fitted = fit(train_df, schema, "hhvaem", None, seed)
    seconds["fit"] = time.perf_counter() - t0

    def refit(rows):
        t = time.perf_counter()
        model = fit(rows, schema, "hhvaem", None, seed)
        seconds["cross_fit"] = time.perf_counter() - t
        return model

    with tempfile.TemporaryDirectory(prefix="calibration-") as tmp:
        art = Path(tmp) / "model"
        write_artifact(art, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(train_all))
        t1 = time.perf_counter()
        done = finish.finish(art, len(train_all), train_df, held, fitted, refit, seed, 1, True, lambda line: None)
        seconds["finish"] = time.perf_counter() - t1 - seconds.get("cross_fit", 0.0)
        engine = Engine(art, threads=1)
        pp = engine.preprocessor
        # the served correction (the default method) and the others, fitted on the same scores
        calibrations = {m: Calibration.fit(done.scores, done.roles, m) for m in METHODS}
        assert calibrations[DEFAULT_METHOD].to_json()["columns"] == engine.manifest["calibration"]["columns"]
        test = encode_rows(pp, test_df)
        sd = {c.name: float(np.nanstd(train_all[c.name].astype(float))) for c in schema.columns if not c.is_discrete}
        rng = np.random.default_rng(1000 + split)
        result: dict = {"shares": {}}
        for share in SHARES:
            index = np.repeat(np.arange(len(test_df)), MASKS)
            observed = (rng.random((len(index), len(schema.features))) < share) & test.mx.numpy()[index]
            copies = TrainData(*(t[index] for t in (test.x, test.mx, test.y, test.my)))
            out = served_posterior(engine, copies, observed, SAMPLES, seed)
            corrections = {"raw": None, **calibrations}
            result["shares"][str(share)] = interval_figures(schema, pp, out, copies, observed, rng, corrections, sd)
        result["calibration"] = {
            k: v for k, v in engine.manifest["calibration"].items() if k not in ("columns", "method")
        }
        result["sources"] = sorted(
            {c["source"] for cells in engine.manifest["calibration"]["columns"].values() for c in cells}
        )
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    result["train_rows"], result["test_rows"], result["held_out"] = len(train_all), len(test_df), held is not None
    return result


def run(args) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    tables = sorted(p for p in args.tables.iterdir() if (p / "data.csv").exists())
    if args.only:
        tables = [p for p in tables if p.name in args.only.split(",")]
    for table in tables:
        for split in [int(s) for s in args.splits.split(",")]:
            dest = args.out / table.name / f"split{split}.json"
            if dest.exists():
                continue
            before = os.getloadavg()[0]
            started = time.perf_counter()
            result = score_split(table, split)
            result.update(
                table=table.name,
                split=split,
                commit=commit(),
                machine=f"{platform.node()} ({os.cpu_count()} cores)",
                load_before=round(before, 2),
                load_after=round(os.getloadavg()[0], 2),
                wall_seconds=round(time.perf_counter() - started, 1),
            )
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(json.dumps(result, indent=1))
            print(f"{table.name} split {split}: {result['wall_seconds']} s", flush=True)


def served(run: dict) -> dict:
    """The run with a "served" correction added to each figure set: the default method's where its 2-fold check
    says it helps (what `hhvaem train` then applies), else the raw quantiles (training/calibration.py: helps)."""
    from hhvaem.model.calibration import DEFAULT_METHOD
    from hhvaem.training.calibration import helps

    use = DEFAULT_METHOD if helps(run["calibration"]["check"]) else "raw"
    for figures in run["shares"].values():
        for f in figures.values():
            f.update({k.replace(use, "served", 1): v for k, v in list(f.items()) if k.startswith(use + "_")})
    run["applied"] = use != "raw"
    return run


KINDS = ("raw", "conformal", "conformal-pooled", "probit", "probit-pooled", "served")


def compare(runs_by_table: dict[str, list[dict]]) -> str:
    """Per method: in how many (table, observed share, role) cells the 90 % and 50 % intervals cover 88-92 % and
    47-53 %, the mean distance from nominal, and the CRPS change against raw."""
    lines = [
        "| correction | cells with cover90 in 88-92 % | cells with cover50 in 47-53 % | mean abs(cover90 - 0.9) | "
        "mean abs(cover50 - 0.5) | CRPS vs raw, mean (worst) |",
        "|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        in90, in50, d90, d50, crps = [], [], [], [], []
        for runs in runs_by_table.values():
            for share in SHARES:
                for role in ("target", "features"):
                    parts = [r["shares"][str(share)][role] for r in runs if role in r["shares"][str(share)]]
                    if not parts:
                        continue
                    w = [p["entries"] for p in parts]
                    c90 = np.average([p[f"{kind}_cover90"] for p in parts], weights=w)
                    c50 = np.average([p[f"{kind}_cover50"] for p in parts], weights=w)
                    raw = np.average([p["raw_crps"] for p in parts], weights=w)
                    in90.append(0.88 <= c90 <= 0.92)
                    in50.append(0.47 <= c50 <= 0.53)
                    d90.append(abs(c90 - 0.9))
                    d50.append(abs(c50 - 0.5))
                    crps.append(np.average([p[f"{kind}_crps"] for p in parts], weights=w) / raw - 1)
        lines.append(
            f"| {kind} | {sum(in90)} of {len(in90)} | {sum(in50)} of {len(in50)} | {np.mean(d90):.3f} | "
            f"{np.mean(d50):.3f} | {np.mean(crps):+.1%} ({max(crps):+.1%}) |"
        )
    return "\n".join(lines)


def render(args) -> None:
    cal = args.method
    rows = [
        "| table | role | observed | entries | cover50 raw → calibrated | cover90 raw → calibrated | "
        "width90 raw → calibrated | CRPS raw → calibrated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    extra = []
    by_table: dict[str, list[dict]] = {}
    for folder in sorted(p for p in args.runs.iterdir() if p.is_dir()):
        runs = [served(json.loads(f.read_text())) for f in sorted(folder.glob("split*.json"))]
        if not runs:
            continue
        by_table[folder.name] = runs
        for share in SHARES:
            for role in ("target", "features"):
                parts = [r["shares"][str(share)][role] for r in runs if role in r["shares"][str(share)]]
                if not parts:
                    continue
                n = sum(p["entries"] for p in parts)
                m = {k: np.average([p[k] for p in parts], weights=[p["entries"] for p in parts]) for k in parts[0]}
                rows.append(
                    f"| {folder.name} | {role} | {share:.0%} | {n}"
                    f" | {m['raw_cover50']:.3f} → {m[cal + '_cover50']:.3f}"
                    f" | {m['raw_cover90']:.3f} → {m[cal + '_cover90']:.3f}"
                    f" | {m['raw_width90']:.3f} → {m[cal + '_width90']:.3f}"
                    f" | {m['raw_crps']:.4f} → {m[cal + '_crps']:.4f} |"
                )
        fit_s = np.mean([r["seconds"]["fit"] for r in runs])
        extra_s = np.mean([r["seconds"].get("cross_fit", 0) + r["seconds"]["finish"] for r in runs])
        how = "cross-fit" if not runs[0]["held_out"] else "held-out rows"
        loads = [x for r in runs for x in (r["load_before"], r["load_after"])]
        extra.append(
            f"| {folder.name} | {len(runs)} | {runs[0]['train_rows']} | {how}, {runs[0]['calibration']['rows']} rows | "
            f"{sum(r['applied'] for r in runs)} of {len(runs)} | {fit_s:.0f} | {extra_s:.0f} | "
            f"{extra_s / fit_s:.0%} | {min(loads):.2f}-{max(loads):.2f} | "
            f"{', '.join(sorted({r['commit'] for r in runs}))} |"
        )
    print("\n".join(rows))
    print(
        "\n| table | splits | training rows | calibrated on | applied | fit s | calibration + card s (incl. "
        "cross-fit) | extra | load | commit |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(extra))
    print()
    print(compare(by_table))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("tables", type=Path)
    r.add_argument("--out", type=Path, default=Path("docs/calibration/runs"))
    r.add_argument("--splits", default="0,1,2,3,4")
    r.add_argument("--only", default=None)
    r.set_defaults(func=run)
    s = sub.add_parser("render")
    s.add_argument("runs", type=Path)
    s.add_argument(
        "--method", default="served", help="the correction shown beside raw: served (what training applies) or a method"
    )
    s.set_defaults(func=render)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
