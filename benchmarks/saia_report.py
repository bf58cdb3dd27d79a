"""Runs the SAIA protocol (training/saia.py) on the benchmark tables and renders docs/saia.md.

    python -m benchmarks.saia_report run ../shared/data/uci --out docs/saia \\
        --steps 2000 --max-rows 40 --splits 0,1,2
    python -m benchmarks.saia_report render docs/saia --out docs/saia.md

Tables: boston, energy, concrete, yacht from the UCI directory (data.csv + schema.json) and
scikit-learn's diabetes (load_diabetes(scaled=False), target "target", schema inferred by the
docs/protocol.md rule). One JSON per table (`hhvaem saia --json` format plus run metadata) and one
PNG of the curves per table in the output directory. `run` is sequential, torch and ONNX
Runtime on one thread each.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.train_speed import commit

UCI_TABLES = ("boston", "energy", "concrete", "yacht")
TABLES = (*UCI_TABLES, "diabetes")
METHOD_NAMES = {
    "random": "random (5 orders)",
    "kl": "EDDI KL",
    "kl-latent": "EDDI KL (latent only)",
    "histogram": "histogram MI (paper)",
    "mixture": "mixture MI (ours)",
}


def load_table(name: str, uci: Path, scratch: Path):
    """(data frame, schema) of a benchmark table, validated as `hhvaem saia` would."""
    from hhvaem.training.tabular import load_dataset

    if name == "diabetes":
        import pandas as pd
        from sklearn.datasets import load_diabetes

        bunch = load_diabetes(scaled=False)
        df = pd.DataFrame(bunch.data, columns=[str(c) for c in bunch.feature_names])
        df["target"] = bunch.target
        path = scratch / "diabetes.csv"
        df.to_csv(path, index=False)
        return load_dataset(path, ["target"])
    return load_dataset(uci / name / "data.csv", [], uci / name / "schema.json")


def cmd_run(args) -> None:
    import torch

    from hhvaem.training.saia import METHODS, SaiaSettings, plot_curves, run_saia, write_json

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    methods = tuple(m for m in args.methods.split(",") if m)
    if any(m not in METHODS for m in methods):
        sys.exit(f"unknown method in {args.methods!r} (expected some of {', '.join(METHODS)})")
    splits = [int(s) for s in args.splits.split(",") if s]
    settings = SaiaSettings(methods, args.samples, args.kl_draws, 5, args.max_rows, args.seed, 1)
    command = "python -m benchmarks.saia_report " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    started_at = commit()  # HEAD when the code was loaded (the checkout may move on during a long run)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="saia-tables-") as tmp:
        for name in args.tables.split(","):
            dest = args.out / f"{name}.json"
            if args.skip_done and dest.exists():
                print(f"{name}: already done, skipped", flush=True)
                continue
            df, schema = load_table(name, args.uci, Path(tmp))
            t0 = time.perf_counter()
            summary = run_saia(df, schema, splits, None, args.steps, settings, log=lambda m: print(m, flush=True))
            summary["table"] = name
            summary["shape"] = {"rows": len(df), "features": len(schema.features)}
            summary["run"] = {
                "command": command,
                "commit": started_at,
                "commit_at_end": commit(),
                "machine": f"{platform.machine()}, {_cores()} cores, torch and ONNX Runtime 1 thread",
                "torch": torch.__version__,
                "wall_seconds": time.perf_counter() - t0,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            write_json(summary, dest)
            plot_curves(summary, args.out / f"{name}.png", title=f"SAIA on {name} (target {summary['target']})")
            print(f"{name}: done in {summary['run']['wall_seconds']:.0f} s", flush=True)
    print(f"all tables: {time.perf_counter() - t_all:.0f} s", flush=True)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _commits(runs: dict) -> str:
    """The recorded commits (HEAD when each table's run started; older JSONs: when it ended), table by table."""
    seen: dict[str, list[str]] = {}
    for name, r in runs.items():
        seen.setdefault(r["run"]["commit"], []).append(name)
    if len(seen) == 1:
        return next(iter(seen))
    return ", ".join(f"{c} ({', '.join(names)})" for c, names in seen.items())


def _commit_kind(runs: dict) -> str:
    if all("commit_at_end" in r["run"] for r in runs.values()):
        return "HEAD when the run started"
    return "HEAD when the table finished; see the notes on provenance"


def _pm(stats: dict) -> str:
    return f"{stats['mean']:.4g} ± {stats['std']:.2g}"


def _paired(a: dict, b: dict) -> tuple[float, float, int, int]:
    """Mean and std over splits of the paired difference a - b, and how many splits a wins (lower) / loses."""
    d = np.array(a["per_split"]) - np.array(b["per_split"])
    return float(d.mean()), float(d.std()), int((d < 0).sum()), int((d > 0).sum())


def _budget(settings: dict, runs: list[dict]) -> str:
    if settings["steps"] is not None:
        return f"`--steps {settings['steps']}`"
    used = sorted({p["train_steps"] for r in runs for p in r.get("per_split", []) if "train_steps" in p})
    return "the default budget of `hhvaem train` (" + ", ".join(f"{n:,}" for n in used) + " steps)"


def render(results: Path, notes: Path | None) -> str:
    runs = {}
    for name in TABLES:
        f = results / f"{name}.json"
        if f.exists():
            runs[name] = json.loads(f.read_text())
    if not runs:
        raise SystemExit(f"no SAIA results in {results}")
    first = next(iter(runs.values()))
    s, run = first["settings"], first["run"]
    methods = list(first["methods"])
    rel = results.name
    lines = [
        "# Sequential active information acquisition (SAIA)",
        "",
        f"Generated by `python -m benchmarks.saia_report render {results}` from the JSON files in "
        f"`{results}/`. Protocol: docs/protocol.md, section SAIA; implementation `training/saia.py` "
        "(`hhvaem saia` runs the same code on any table).",
        "",
        "## How the figures were produced",
        "",
        _commands(runs),
        f"- Commit recorded per table ({_commit_kind(runs)}): {_commits(runs)}; {run['machine']}, "
        f"torch {run['torch']}.",
        f"- Splits {', '.join(map(str, first['splits']))} of the 10 docs/protocol.md splits (a quick run, as the "
        f"protocol allows); per split an HH-VAEM is trained on the training rows with "
        f"{_budget(s, list(runs.values()))} "
        f"(seed {s['seed']}), written as an artifact and served by the inference engine (ONNX Runtime, 1 thread): "
        "the evaluated code is the served `next_features`.",
        f"- Test rows: a seeded subset of {s['max_rows'] or 'all'} test rows per split; every row starts with "
        "nothing observed and acquires all D features one at a time.",
        f"- K = {s['samples']} posterior samples per sampler call for every method; the sampler call for (split, "
        "row, step) has one seed shared by all methods, so equal observations give the same predictions (step 0 "
        "and step D agree across methods up to float rounding in differently composed ONNX Runtime batches).",
        f"- Methods: random order (mean of {s['random_orders']} orders); EDDI's KL reward with the model's own "
        f"Gaussian encoder, {s['kl_draws']} joint draws (x_i, y) per candidate, target-conditioned form "
        "(training/saia.py explains why); the paper's 2-d histogram MI; our mixture MI. Same trained model for all.",
        "- AUC = mean of the curve over steps 0..D (lower is better). Target error = RMSE in the target's original "
        "units; NLL_y on the normalised scale. Mean ± std over splits.",
        "",
        "## AUC per table and method",
        "",
        "| table (rows, D) | metric | " + " | ".join(METHOD_NAMES.get(m, m) for m in methods) + " | best |",
        "|---|---|" + "---|" * len(methods) + "---|",
    ]
    wins: dict[str, list[str]] = {}
    for name, r in runs.items():
        shape = r.get("shape", {})
        label = f"{name} ({shape.get('rows', '?')}, {shape.get('features', '?')})"
        for key, metric in (("auc_error", f"target {r['target_error']}"), ("auc_nll_y", "NLL_y")):
            vals = {m: r["methods"][m][key] for m in methods}
            best = min(vals, key=lambda m: vals[m]["mean"])
            wins.setdefault(name, []).append(best)
            cells = [f"**{_pm(v)}**" if m == best else _pm(v) for m, v in vals.items()]
            lines.append(f"| {label} | {metric} | " + " | ".join(cells) + f" | {METHOD_NAMES.get(best, best)} |")
    lines += ["", "## Paired differences (same splits, same rows, same noise)", ""]
    pairs = [(a, b) for a, b in (("mixture", "histogram"), ("mixture", "random"), ("mixture", "kl")) if a in methods]
    pairs = [(a, b) for a, b in pairs if b in methods]
    if pairs:
        lines += [
            "AUC difference, mean ± std over splits of the per-split difference (negative: the first method is "
            "better), and on how many splits the first method is better / worse.",
            "",
            "| table | metric | " + " | ".join(f"{a} − {b}" for a, b in pairs) + " |",
            "|---|---|" + "---|" * len(pairs),
        ]
        for name, r in runs.items():
            for key, metric in (("auc_error", f"target {r['target_error']}"), ("auc_nll_y", "NLL_y")):
                cells = []
                for a, b in pairs:
                    mean, std, w, lose = _paired(r["methods"][a][key], r["methods"][b][key])
                    cells.append(f"{mean:+.3g} ± {std:.2g} ({w}/{lose})")
                lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", "## Curves", ""]
    for name, r in runs.items():
        lines.append(
            f"- [{name}]({rel}/{name}.png): target {r['target']}, "
            f"{r['run']['wall_seconds'] / 60:.1f} min for {len(r['splits'])} trainings + SAIA"
        )
    lines += ["", "## Diagnostics: the estimators' scores", ""]
    diag = [m for m in ("kl", "kl-latent", "histogram", "mixture") if m in methods]
    lines += [
        "Mean over test rows and splits of the chosen feature's score (nats) at step 0 / 1 / D-1, and the share of "
        "decisions where the best score was tied (ties are broken by feature name in the engine).",
        "",
        "| table | "
        + " | ".join(f"{m} score (step 0 / 1 / D-1)" for m in diag)
        + " | "
        + " | ".join(f"{m} ties" for m in diag)
        + " |",
        "|---|" + "---|" * (2 * len(diag)),
    ]
    for name, r in runs.items():
        cells, ties = [], []
        for m in diag:
            g = np.mean([sp["methods"][m]["mean_top_gain"] for sp in r["per_split"]], 0)
            t = np.mean([np.mean(sp["methods"][m]["tie_rate"]) for sp in r["per_split"]])
            cells.append(f"{g[0]:.3g} / {g[1]:.3g} / {g[-1]:.3g}")
            ties.append(f"{t:.1%}")
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ties) + " |")
    total = sum(r["run"]["wall_seconds"] for r in runs.values())
    lines += ["", f"Total run time: {total / 60:.1f} min (trainings + SAIA, summed over the tables)."]
    lines += _prototype_section(results, runs)
    if notes is not None and notes.exists():
        lines += ["", notes.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def _prototype_section(results: Path, runs: dict) -> list[str]:
    """The `mixture-xy` prototype (results/mixture_xy/, a second run on the same splits, seeds and settings)."""
    proto_dir = results / "mixture_xy"
    proto = {n: json.loads((proto_dir / f"{n}.json").read_text()) for n in runs if (proto_dir / f"{n}.json").exists()}
    if not proto:
        return []
    first = next(iter(proto.values()))
    lines = [
        "",
        "## Prototype: the mixture estimator with the predictor's direct path (`mixture-xy`, not served)",
        "",
        f"Second run: `{first['run']['command']}` (commit {_commits(proto)}). Training is deterministic, so "
        "it trains the same models; its `mixture` column reproduces the main run (last column: the largest "
        "absolute difference of the served mixture's AUCs between the two runs). `mixture-xy` pairs each "
        "posterior sample's p(x_i | z_ik) with p(y | eps_k, z_ik plugged into the predictor) "
        "(training/saia.py, `direct_target_params`).",
        "",
        "| table | metric | random | histogram | mixture (served) | mixture-xy | mixture-xy − histogram | "
        "mixture-xy − random | mixture run-to-run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in proto.items():
        main = runs[name]["methods"]
        for key, metric in (("auc_error", f"target {p['target_error']}"), ("auc_nll_y", "NLL_y")):
            xy = p["methods"]["mixture-xy"][key]
            cells = [_pm(main[m][key]) if m in main else "-" for m in ("random", "histogram", "mixture")]
            cells.append(_pm(xy))
            for b in ("histogram", "random"):
                if b in main:
                    mean, std, w, lose = _paired(xy, main[b][key])
                    cells.append(f"{mean:+.3g} ± {std:.2g} ({w}/{lose})")
                else:
                    cells.append("-")
            drift = np.abs(np.array(p["methods"]["mixture"][key]["per_split"]) - main["mixture"][key]["per_split"])
            cells.append(f"{drift.max():.1g}")
            lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    links = ", ".join(f"[{n}]({results.name}/mixture_xy/{n}.png)" for n in proto)
    lines += ["", f"Curves of the prototype run: {links}."]
    return lines


def cmd_render(args) -> None:
    text = render(args.results, args.notes)
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")


def _commands(runs: dict) -> str:
    """The command line(s) that produced the tables (tables may run in several processes, one per core)."""
    by_command: dict[str, list[str]] = {}
    for name, r in runs.items():
        by_command.setdefault(r["run"]["command"], []).append(name)
    if len(by_command) == 1:
        return f"- Command: `{next(iter(by_command))}`"
    return "- Commands (one process per group of tables): " + "; ".join(
        f"`{c}` ({', '.join(names)})" for c, names in by_command.items()
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train + SAIA on every table; one JSON and PNG per table")
    r.add_argument("uci", type=Path, help="directory with boston/, energy/, concrete/, yacht/ (data.csv + schema.json)")
    r.add_argument("--out", type=Path, default=Path("docs/saia"))
    r.add_argument("--tables", default=",".join(TABLES))
    r.add_argument("--methods", default="random,kl,histogram,mixture")
    r.add_argument("--splits", default="0,1,2")
    r.add_argument("--steps", type=int, default=None, help="training steps per split (default: hhvaem train's budget)")
    r.add_argument("--samples", type=int, default=100)
    r.add_argument("--max-rows", type=int, default=40)
    r.add_argument("--kl-draws", type=int, default=32)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--skip-done", action="store_true", help="leave tables whose JSON exists alone")
    r.set_defaults(func=cmd_run)
    d = sub.add_parser("render", help="write docs/saia.md from the JSON files")
    d.add_argument("results", type=Path, nargs="?", default=Path("docs/saia"))
    d.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")
    d.add_argument("--notes", type=Path, default=None, help="markdown appended at the end (e.g. docs/saia/notes.md)")
    d.set_defaults(func=cmd_render)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
