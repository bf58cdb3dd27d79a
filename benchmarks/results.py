"""Runs the protocol evaluation on the benchmark tables and renders docs/results.md.

    python -m benchmarks.results run ../shared/data/uci --out docs/results \\
        --variants vaem,hhvaem --steps 2000 --splits 0,1,2 --jobs 2
    python -m benchmarks.results render docs/results docs/results_full \\
        --titles "All tables, reduced budget" "Boston, the paper's full recipe" \\
        --notes docs/results_notes.md > docs/results.md

Tables: every folder of the UCI directory (data.csv + schema.json) plus scikit-learn's
diabetes (raw units) and wine, written to CSV with their schema inferred by the
docs/protocol.md rule. One JSON per (table, variant) in the `evaluate --json` format.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.train_speed import commit

# docs/protocol.md: the paper's Table 1 (NLL_xu) and Table 2 (NLL_y), HH-VAEM / VAEM.
PAPER = {
    "boston": {"nll_xu": (1.83, 2.01), "nll_y": (0.55, 0.85)},
    "concrete": {"nll_xu": (2.28, 2.45), "nll_y": (0.95, 1.07)},
    "energy": {"nll_xu": (1.71, 2.09), "nll_y": (0.32, 0.61)},
    "yacht": {"nll_xu": (2.47, 3.15), "nll_y": (0.56, 0.61)},
    "diabetes": {"nll_xu": (2.54, 2.78), "nll_y": (1.38, 1.59)},
    "wine": {"nll_xu": (1.90, 3.01), "nll_y": (0.20, 0.28)},
}
# ANCHORS.md: best classical imputer (RMSE_xu) and hgb_nan target error, same protocol.
ANCHORS = {
    "boston": {"rmse_xu": (0.609, "KNN"), "target": (4.68, "hgb_nan"), "mean_rmse": 1.024},
    "concrete": {"rmse_xu": (0.704, "KNN"), "target": (11.02, "hgb_nan"), "mean_rmse": 0.983},
    "energy": {"rmse_xu": (0.463, "KNN"), "target": (3.03, "hgb_nan"), "mean_rmse": 0.975},
    "wine_quality_red": {"rmse_xu": (0.739, "ExtraTrees"), "target": (0.594, "hgb_nan acc"), "mean_rmse": 0.958},
    "yacht": {"rmse_xu": (0.806, "ExtraTrees"), "target": (10.44, "hgb_nan"), "mean_rmse": 0.993},
    "diabetes": {"rmse_xu": (0.742, "MICE"), "target": (64.71, "hgb_nan"), "mean_rmse": 0.987},
}


def sklearn_tables(root: Path) -> list[Path]:
    """Writes scikit-learn's diabetes (raw) and wine as data.csv folders under root."""
    from sklearn.datasets import load_diabetes, load_wine

    out = []
    for name, loader in (("diabetes", lambda: load_diabetes(scaled=False)), ("wine", load_wine)):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        bunch = loader()
        import pandas as pd

        df = pd.DataFrame(bunch.data, columns=[str(c) for c in bunch.feature_names])
        df["target"] = bunch.target
        df.to_csv(d / "data.csv", index=False)
        out.append(d)
    return out


def run_one(table: Path, variant: str, steps: int, splits: str, out: Path, samples: int) -> str:
    cmd = [sys.executable, "-m", "hhvaem.cli", "evaluate", str(table / "data.csv"), "--variant", variant]
    schema = table / "schema.json"
    cmd += ["--schema", str(schema)] if schema.exists() else ["--target", "target"]
    dest = out / f"{table.name}.{variant}.json"
    cmd += ["--steps", str(steps), "--splits", splits, "--samples", str(samples), "--threads", "1", "--json", str(dest)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return f"{table.name}/{variant}: FAILED {res.stderr.strip()[-300:]}"
    meta = json.loads(dest.read_text())
    meta["settings"] = {"steps": steps, "samples": samples, "commit": commit(), "machine": platform.machine()}
    dest.write_text(json.dumps(meta, indent=2))
    return f"{table.name}/{variant}: done"


def cmd_run(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    tables = sorted(p for p in args.uci.iterdir() if (p / "data.csv").exists())
    tables += sklearn_tables(args.out / "_sklearn")
    if args.tables:
        keep = set(args.tables.split(","))
        tables = [t for t in tables if t.name in keep]
    jobs = [(t, v) for t in tables for v in args.variants.split(",")]
    with ThreadPoolExecutor(args.jobs) as pool:
        for msg in pool.map(lambda tv: run_one(tv[0], tv[1], args.steps, args.splits, args.out, args.samples), jobs):
            print(msg, flush=True)


def fmt(m: dict | None, key: str, digits: int = 3) -> str:
    if not m or key not in m["metrics"]:
        return "-"
    v = m["metrics"][key]
    return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"


LOWER_IS_BETTER = {
    "nll_xu": True,
    "nll_y": True,
    "rmse_xu": True,
    "acc_xu": False,
    "target_rmse": True,
    "target_accuracy": False,
}


def load_results(folder: Path) -> dict[str, dict[str, dict]]:
    results: dict[str, dict[str, dict]] = {}
    for f in sorted(folder.glob("*.json")):
        table, variant = f.stem.split(".")
        results.setdefault(table, {})[variant] = json.loads(f.read_text())
    return results


def render_section(folder: Path, steps: int | None) -> list[str]:
    results = load_results(folder)
    if not results:
        return [f"(no results in {folder})"]
    order = ["vaem", "hvaem", "hmcvaem", "miwaem", "hhvaem"]
    variants = sorted({v for r in results.values() for v in r}, key=order.index)
    any_meta = next(iter(next(iter(results.values())).values()))
    s = any_meta.get("settings", {})
    steps = steps or s.get("steps")
    splits = ", ".join(map(str, any_meta["splits"]))
    lines = [
        f"Runs in `{folder}`: `--steps {steps}` (stage 1 = min(steps/4, 1000) marginal steps, "
        f"{int(0.9 * steps)} stage-2 steps, {int(0.1 * steps)} stage-3 HMC steps; VAEM spends the HMC steps on "
        f"stage 2), splits {splits} of 10, {s.get('samples', 1000)} posterior samples per test row"
        + (f", commit {s['commit']}" if s.get("commit") else "")
        + ". Mean ± std over splits.",
        "",
        "| table | metric | " + " | ".join(variants) + " | paper HH-VAEM / VAEM | classical anchor |",
        "|" + "---|" * (len(variants) + 4),
    ]
    wins: dict[str, list[int]] = {}
    for table in sorted(results):
        r = results[table]
        for key in LOWER_IS_BETTER:
            if not any(key in m["metrics"] for m in r.values()):
                continue
            paper = PAPER.get(table, {}).get(key)
            anchor = ANCHORS.get(table, {})
            if key == "rmse_xu" and anchor:
                a = f"{anchor['rmse_xu'][1]} {anchor['rmse_xu'][0]} (mean imputation {anchor['mean_rmse']})"
            elif key.startswith("target") and anchor:
                a = f"{anchor['target'][1]} {anchor['target'][0]}"
            else:
                a = ""
            cells = [fmt(r.get(v), key) for v in variants]
            ptxt = f"{paper[0]} / {paper[1]}" if paper else ""
            lines.append(f"| {table} | {key} | " + " | ".join(cells) + f" | {ptxt} | {a} |")
            if "hhvaem" in r and "vaem" in r and key in r["hhvaem"]["metrics"] and key in r["vaem"]["metrics"]:
                h, v = r["hhvaem"]["metrics"][key]["mean"], r["vaem"]["metrics"][key]["mean"]
                better = h < v if LOWER_IS_BETTER[key] else h > v
                wins.setdefault(key, [0, 0])[0 if better else 1] += 1
    if wins:
        lines += ["", "HH-VAEM against VAEM, tables where its mean is better / worse:"]
        lines += [f"- {k}: {w} better, {lo} worse" for k, (w, lo) in wins.items()]
    lines += ["", "Training seconds per split (mean, one torch thread, two runs sharing the 2 cores):"]
    for table in sorted(results):
        lines.append(
            f"- {table}: " + ", ".join(f"{v} {fmt(results[table].get(v), 'train_seconds', 0)}" for v in variants)
        )
    return lines


def cmd_render(args) -> None:
    lines = [
        "# Results under docs/protocol.md",
        "",
        "Generated by `python -m benchmarks.results render "
        + " ".join(str(f) for f in args.folders)
        + "` (2-core machine kind of ANCHORS.md, torch 2.13 CPU). NLLs and RMSE_xu on the normalised scale; "
        "target error in original units (RMSE; accuracy for wine and wine_quality_red, higher is better). "
        "The paper's figures use its own normalisation and estimator details (docs/protocol.md): they anchor, "
        "they do not bind. Classical anchors are from ANCHORS.md, same protocol, 10 splits (3 for "
        "wine_quality_red), positive columns log(x + c) there instead of log(1 + x).",
    ]
    for folder, title in zip(args.folders, args.titles or [None] * len(args.folders)):
        lines += ["", f"## {title or folder.name}", ""]
        lines += render_section(folder, None)
    if args.notes and args.notes.exists():
        lines += ["", args.notes.read_text().rstrip()]
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("uci", type=Path)
    r.add_argument("--out", type=Path, default=Path("docs/results"))
    r.add_argument("--variants", default="vaem,hhvaem")
    r.add_argument("--steps", type=int, default=2000)
    r.add_argument("--splits", default="0,1,2")
    r.add_argument("--samples", type=int, default=1000)
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--tables", default="")
    g = sub.add_parser("render")
    g.add_argument("folders", type=Path, nargs="+")
    g.add_argument("--titles", nargs="*", help="one section title per folder")
    g.add_argument("--notes", type=Path, help="markdown appended after the tables (the analysis)")
    args = ap.parse_args()
    cmd_run(args) if args.cmd == "run" else cmd_render(args)


if __name__ == "__main__":
    main()
