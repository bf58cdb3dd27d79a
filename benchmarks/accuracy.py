"""Accuracy experiments under docs/protocol.md: named runs (a variant, a budget, setting overrides) over tables.

    python -m benchmarks.tables /tmp/tables --uci ../shared/data/uci          # the tables, once
    python -m benchmarks.accuracy run /tmp/tables --out docs/accuracy/runs --name default --splits 0,1,2
    python -m benchmarks.accuracy run /tmp/tables --out docs/accuracy/runs --name lr3e-3 --set lr=3e-3 \\
        --tables boston,concrete --splits 0
    python -m benchmarks.accuracy baselines /tmp/tables --out docs/accuracy/runs --splits 0,1,2
    python -m benchmarks.accuracy render docs/accuracy/runs --runs default,lr3e-3 > /tmp/table.md

`snapshot [REV]` copies the package at a commit into a folder, and `run --code FOLDER` runs from it, so that
experiments keep measuring one commit while the checkout changes. A run writes `<out>/<name>/<table>.json`: the
`hhvaem evaluate --json` output plus the settings, the command, the commit, the machine and the load average
before and after. Runs are skipped when their JSON exists (`--force` reruns). Each evaluation runs in its own
process with one torch and one ONNX Runtime thread (`--jobs` runs that many at once).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.train_speed import commit, snapshot_commit

KEY_METRICS = ("rmse_xu", "acc_xu", "target_rmse", "target_accuracy", "nll_xu", "nll_y")
HIGHER_IS_BETTER = {"acc_xu", "target_accuracy"}
# ablation rows reported as differences (sd units), not per cent
DIFFERENCES = ("observed_rmse_median",)


def tables(root: Path, only: str | None) -> list[Path]:
    found = sorted(p for p in root.iterdir() if (p / "data.csv").exists())
    if only:
        keep = only.split(",")
        found = [p for p in found if p.name in keep]
    return found


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_one(table: Path, args, dest: Path) -> str:
    table, dest = table.resolve(), dest.resolve()  # the run may start in another folder (--code)
    cmd = [
        sys.executable,
        "-m",
        "hhvaem.cli",
        "evaluate",
        str(table / "data.csv"),
        "--schema",
        str(table / "schema.json"),
    ]
    cmd += ["--variant", args.variant, "--splits", args.splits, "--samples", str(args.samples), "--threads", "1"]
    cmd += ["--json", str(dest)]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    for pair in args.set or []:
        cmd += ["--set", pair]
    before = _load()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cwd = None
    if args.code:  # a snapshot of the package (`snapshot`), so that edits to the checkout do not reach the run
        # run from the snapshot's folder too: Python puts the working directory first on sys.path, and a
        # checkout's own hhvaem/ would win over PYTHONPATH
        env["PYTHONPATH"], cwd = str(args.code), str(args.code)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if res.returncode != 0:
        return f"{args.name}/{table.name}: FAILED {res.stderr.strip()[-400:]}"
    out = json.loads(dest.read_text())
    out["run"] = {
        "name": args.name,
        "variant": args.variant,
        "steps": args.steps,
        "set": args.set or [],
        "samples": args.samples,
        "command": shlex.join(["hhvaem", *cmd[3:]]),
        "commit": snapshot_commit(args.code) if args.code else commit(),
        "machine": platform.machine(),
        "load_before": before,
        "load_after": _load(),
    }
    dest.write_text(json.dumps(out, indent=1))
    m = out["metrics"]
    keys = [k for k in KEY_METRICS if k in m]
    return f"{args.name}/{table.name}: " + ", ".join(f"{k} {m[k]['mean']:.4f}" for k in keys)


def cmd_run(args) -> None:
    folder = args.out / args.name
    folder.mkdir(parents=True, exist_ok=True)
    todo = [t for t in tables(args.tables_dir, args.tables) if args.force or not (folder / f"{t.name}.json").exists()]
    with ThreadPoolExecutor(args.jobs) as pool:
        for msg in pool.map(lambda t: run_one(t, args, folder / f"{t.name}.json"), todo):
            print(msg, flush=True)


def cmd_baselines(args) -> None:
    folder = args.out / "baselines"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = args.methods.split(",")
    for table in tables(args.tables_dir, args.tables):
        dest = folder / f"{table.name}.json"
        done = json.loads(dest.read_text()) if dest.exists() and not args.force else {}
        todo = [m for m in wanted if m not in done]
        if not todo:
            continue
        part = folder / f".{table.name}.part.json"
        cmd = [sys.executable, "-m", "hhvaem.cli", "baselines", str(table / "data.csv"), "--methods", ",".join(todo)]
        cmd += ["--schema", str(table / "schema.json"), "--splits", args.splits, "--json", str(part)]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if res.returncode == 0:  # methods already measured are kept; the new ones are added
            dest.write_text(json.dumps({**done, **json.loads(part.read_text())}, indent=1))
            part.unlink()
        print(f"baselines/{table.name}: " + ("done" if res.returncode == 0 else f"FAILED {res.stderr[-300:]}"))


def cmd_snapshot(args) -> None:
    """The package as installed, from a commit (git archive), into a folder to run experiments from (--code)."""
    import tarfile
    import tempfile

    rev = subprocess.run(["git", "rev-parse", "--short", args.rev], capture_output=True, text=True).stdout.strip()
    dest = args.dest / rev
    if dest.exists():
        print(dest)
        return
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "src.tar"
        subprocess.run(["git", "archive", "-o", str(archive), args.rev], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "src")
        src = Path(tmp) / "src"
        (dest / "hhvaem").parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src / "hhvaem", dest / "hhvaem")
        for folder in ("model", "training", "app"):
            shutil.copytree(src / folder, dest / "hhvaem" / folder)
    (dest / "COMMIT").write_text(rev)
    print(dest)


def load_runs(root: Path) -> dict[str, dict[str, dict]]:
    """{run: {table: evaluate json}}; the baselines folder holds {method: summary} per table."""
    runs: dict[str, dict[str, dict]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.json")):
            runs.setdefault(folder.name, {})[f.stem] = json.loads(f.read_text())
    return runs


def cell(summary: dict | None, key: str) -> str:
    if not summary or key not in summary.get("metrics", {}):
        return "-"
    v = summary["metrics"][key]
    return f"{v['mean']:.3f} ± {v['std']:.3f}"


def cmd_render(args) -> None:
    runs = load_runs(args.out)
    names = args.runs.split(",") if args.runs else [r for r in runs if r != "baselines"]
    base = runs.get("baselines", {})
    methods = ("mean", "knn", "mice", "missforest", "miceforest", "constant", "hgb_nan")
    keys = args.metrics.split(",")
    print("| table | metric | " + " | ".join(names) + " | " + " | ".join(methods) + " |")
    print("|" + "---|" * (2 + len(names) + len(methods)))
    for table in sorted({t for n in names for t in runs.get(n, {})}):
        for key in keys:
            row = [cell(runs.get(n, {}).get(table), key) for n in names]
            row += [cell(base.get(table, {}).get(m), key) for m in methods]
            if any(c != "-" for c in row):
                print(f"| {table} | {key} | " + " | ".join(row) + " |")


def relative_change(run: dict, ref: dict, key: str) -> float | None:
    """Per cent change of `key` from `ref` to `run`, signed so that negative is better."""
    a, b = run.get("metrics", {}).get(key), ref.get("metrics", {}).get(key)
    if a is None or b is None:
        return None
    if key.startswith("nll") or key in DIFFERENCES:  # near zero or negative: the difference, not a ratio
        return a["mean"] - b["mean"]
    change = 100 * (a["mean"] - b["mean"]) / abs(b["mean"])
    return -change if key in HIGHER_IS_BETTER else change


def cmd_ablation(args) -> None:
    """One row per run: its change against the reference run, per table and averaged over tables."""
    runs = load_runs(args.out)
    ref = runs[args.ref]
    keys = ("rmse_xu", "acc_xu", "target", "nll_xu", "nll_y", *DIFFERENCES)
    print(f"Against `{args.ref}`; RMSE_xu, ACC_xu and target error in per cent (negative: better; ACC signed the same")
    print("way), NLL_xu and NLL_y as differences in nats, the observed-entry reconstruction (median over columns,")
    print("training/diagnosis.py) as a difference in sd (negative: better). Per table, then the mean over tables.\n")
    print("| run | metric | " + " | ".join(sorted(ref)) + " | mean |")
    print("|" + "---|" * (3 + len(ref)))
    for name in args.runs.split(","):
        if name not in runs:
            print(f"| {name} | (no results) |" + " |" * (len(ref) + 1))
            continue
        for key in keys:
            cells, found = [], []
            for table in sorted(ref):
                run = runs[name].get(table)
                k = key
                if key == "target" and run is not None:
                    k = "target_accuracy" if "target_accuracy" in run["metrics"] else "target_rmse"
                d = relative_change(run, ref[table], k) if run is not None else None
                diff = key.startswith("nll") or key in DIFFERENCES
                cells.append("-" if d is None else (f"{d:+.2f}" if diff else f"{d:+.1f} %"))
                if d is not None:
                    found.append(d)
            if found:
                avg = sum(found) / len(found)
                total = f"{avg:+.2f}" if key.startswith("nll") or key in DIFFERENCES else f"{avg:+.1f} %"
                print(f"| {name} | {key} | " + " | ".join(cells) + f" | **{total}** |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("tables_dir", type=Path)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--name", required=True)
    run.add_argument("--tables")
    run.add_argument("--splits", default="0,1,2")
    run.add_argument("--variant", default="hhvaem")
    run.add_argument("--steps", type=int)
    run.add_argument("--set", action="append")
    run.add_argument("--samples", type=int, default=1000)
    run.add_argument("--jobs", type=int, default=1)
    run.add_argument("--force", action="store_true")
    run.add_argument("--code", type=Path, help="run this package snapshot (see `snapshot`) instead of the checkout")
    snap = sub.add_parser("snapshot")
    snap.add_argument("rev", nargs="?", default="HEAD")
    snap.add_argument("--dest", type=Path, default=Path("/tmp/hhvaem-snapshots"))
    bl = sub.add_parser("baselines")
    bl.add_argument("tables_dir", type=Path)
    bl.add_argument("--out", type=Path, required=True)
    bl.add_argument("--tables")
    bl.add_argument("--splits", default="0,1,2")
    bl.add_argument("--methods", default="mean,knn,mice,missforest,miceforest,constant,hgb_nan")
    bl.add_argument("--force", action="store_true")
    rd = sub.add_parser("render")
    rd.add_argument("out", type=Path)
    rd.add_argument("--runs")
    rd.add_argument("--metrics", default="rmse_xu,acc_xu,target_rmse,target_accuracy")
    ab = sub.add_parser("ablation", help="each run's change against a reference run, per table")
    ab.add_argument("out", type=Path)
    ab.add_argument("--ref", required=True)
    ab.add_argument("--runs", required=True)
    args = ap.parse_args(argv)
    commands = {"run": cmd_run, "baselines": cmd_baselines, "render": cmd_render, "snapshot": cmd_snapshot}
    commands["ablation"] = cmd_ablation
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
