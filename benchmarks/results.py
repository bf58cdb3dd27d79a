"""Renders docs/results.md from accuracy runs (benchmarks/accuracy.py): our variants beside the in-project baselines.

    python -m benchmarks.results docs/accuracy/runs --runs vaem=final_vaem,hhvaem=final_hhvaem > docs/results.md

Every number comes from the runs' JSON (`hhvaem evaluate --json` and `hhvaem baselines --json`, same protocol,
splits and transforms); the paper's figures are quoted beside them as anchors, never compared as ours.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.accuracy import load_runs

# docs/protocol.md: the paper's Table 1 (NLL_xu) and Table 2 (NLL_y), HH-VAEM / VAEM.
PAPER = {
    "boston": {"nll_xu": (1.83, 2.01), "nll_y": (0.55, 0.85)},
    "concrete": {"nll_xu": (2.28, 2.45), "nll_y": (0.95, 1.07)},
    "energy": {"nll_xu": (1.71, 2.09), "nll_y": (0.32, 0.61)},
    "yacht": {"nll_xu": (2.47, 3.15), "nll_y": (0.56, 0.61)},
    "diabetes": {"nll_xu": (2.54, 2.78), "nll_y": (1.38, 1.59)},
    "wine": {"nll_xu": (1.90, 3.01), "nll_y": (0.20, 0.28)},
}
# The classical imputers our RMSE_xu / ACC_xu are held against (`best_imputer`: the best of those a table has run).
IMPUTERS = ("knn", "mice", "missforest", "miceforest")
IMPUTER_NAMES = "KNN / MICE / MissForest / miceforest"
HIGHER_IS_BETTER = {"acc_xu", "target_accuracy"}
METRICS = ("nll_xu", "nll_y", "rmse_xu", "acc_xu", "target_rmse", "target_accuracy")
CALIBRATION = ("xu_coverage50", "xu_coverage90", "xu_crps", "xu_brier")
TARGET_CALIBRATION = ("target_coverage50", "target_coverage90", "target_crps", "target_brier")


def mean(summary: dict | None, key: str) -> float | None:
    m = (summary or {}).get("metrics", {}).get(key)
    return None if m is None else m["mean"]


def fmt(summary: dict | None, key: str, digits: int = 3) -> str:
    m = (summary or {}).get("metrics", {}).get(key)
    return "-" if m is None else f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


def better(a: float, b: float, key: str) -> bool:
    """a at least as good as b."""
    return a >= b if key in HIGHER_IS_BETTER else a <= b


def target_key(summary: dict) -> str:
    return "target_accuracy" if "target_accuracy" in summary.get("metrics", {}) else "target_rmse"


def best_imputer(base: dict, key: str) -> tuple[str, float] | None:
    found = [(m, mean(base.get(m), key)) for m in IMPUTERS]
    found = [(m, v) for m, v in found if v is not None]
    if not found:
        return None
    return max(found, key=lambda mv: mv[1]) if key in HIGHER_IS_BETTER else min(found, key=lambda mv: mv[1])


def summary_lines(runs: dict, variants: dict[str, str], tables: list[str]) -> list[str]:
    ours, ref = variants.get("hhvaem"), variants.get("vaem")
    base = runs.get("baselines", {})
    lines = [
        f"| table | RMSE_xu HH-VAEM | best of {IMPUTER_NAMES} | ACC_xu HH-VAEM | best imputer | "
        "target error HH-VAEM | hgb_nan | NLL_xu HH-VAEM / VAEM | NLL_y HH-VAEM / VAEM |",
        "|" + "---|" * 9,
    ]
    counts = {"rmse": [0, 0], "within3": [0, 0], "target": [0, 0], "nll": [0, 0], "mean": [0, 0], "constant": [0, 0]}
    coverage_misses: list[str] = []
    for table in tables:
        h, v, b = runs[ours].get(table), runs.get(ref, {}).get(table) if ref else None, base.get(table, {})
        if h is None:
            continue
        cells = [table]
        for key in ("rmse_xu", "acc_xu"):
            ours_v, best = mean(h, key), best_imputer(b, key)
            cells.append(
                "-"
                if ours_v is None
                else f"**{ours_v:.3f}**"
                if best and better(ours_v, best[1], key)
                else f"{ours_v:.3f}"
            )
            cells.append(f"{best[0]} {best[1]:.3f}" if best else "-")
            if key == "rmse_xu" and best and ours_v is not None:
                counts["rmse"][0 if better(ours_v, best[1], key) else 1] += 1
                counts["within3"][0 if ours_v <= 1.03 * best[1] else 1] += 1
        tk = target_key(h)
        t_ours, t_hgb = mean(h, tk), mean(b.get("hgb_nan"), tk)
        win = t_hgb is not None and better(t_ours, t_hgb, tk)
        cells.append(f"**{t_ours:.3f}**" if win else f"{t_ours:.3f}")
        cells.append("-" if t_hgb is None else f"{t_hgb:.3f}")
        if t_hgb is not None:
            counts["target"][0 if win else 1] += 1
        for key in ("nll_xu", "nll_y"):
            a, c = mean(h, key), mean(v, key)
            cells.append(f"{a:.3f} / {c:.3f}" if c is not None else f"{a:.3f} / -")
        floor, t_const = mean(b.get("mean"), "rmse_xu"), mean(b.get("constant"), tk)
        if floor is not None:
            counts["mean"][0 if mean(h, "rmse_xu") < 0.9 * floor else 1] += 1
        if t_const is not None:
            margin = 0.02 if tk in HIGHER_IS_BETTER else -0.1 * t_const  # accuracy points / a tenth of the error
            counts["constant"][0 if better(t_ours, t_const + margin, tk) else 1] += 1
        if v is not None:
            ahead = all(mean(h, k) <= mean(v, k) for k in ("nll_xu", "nll_y"))
            counts["nll"][0 if ahead else 1] += 1
        for key in ("xu_coverage90", "target_coverage90"):
            c90 = mean(h, key)
            if c90 is not None and not 0.85 <= c90 <= 0.95:
                coverage_misses.append(f"{table} {key.split('_')[0]} {c90:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Bold: at or better than the comparison. Counts over the tables above:",
        f"- RMSE_xu at or below the best of {IMPUTER_NAMES}: {counts['rmse'][0]} of {sum(counts['rmse'])}",
        f"- RMSE_xu within 3 % of that best: {counts['within3'][0]} of {sum(counts['within3'])}",
        f"- target error at or below hgb_nan (RMSE; accuracy at or above): {counts['target'][0]} of "
        f"{sum(counts['target'])}",
        f"- HH-VAEM ahead of VAEM on both NLL_xu and NLL_y: {counts['nll'][0]} of {sum(counts['nll'])}",
        f"- RMSE_xu at least 10 % below mean imputation: {counts['mean'][0]} of {sum(counts['mean'])}",
        f"- target error at least 10 % below the constant predictor's (accuracy 2 points above the majority "
        f"class): {counts['constant'][0]} of {sum(counts['constant'])}",
        "- 90 % intervals covering 85-95 % of hidden entries and of targets: "
        + ("every table" if not coverage_misses else "missed on " + ", ".join(coverage_misses)),
    ]
    return lines


def per_variant(runs: dict, variants: dict[str, str], tables: list[str]):
    """(table, label, summary) for every table each variant has a run of."""
    for table in tables:
        for label, run in variants.items():
            s = runs[run].get(table)
            if s is not None:
                yield table, label, s


def calibration_lines(runs: dict, variants: dict[str, str], tables: list[str]) -> list[str]:
    names = {k: k.replace("xu_", "").replace("target_", "") for k in CALIBRATION + TARGET_CALIBRATION}
    lines = [
        "| table | variant | hidden entries: "
        + " / ".join(names[k] for k in CALIBRATION)
        + " | target: "
        + " / ".join(names[k] for k in TARGET_CALIBRATION)
        + " |",
        "|---|---|---|---|",
    ]
    for table, label, s in per_variant(runs, variants, tables):

        def part(keys: tuple[str, ...], s: dict = s) -> str:
            return " / ".join("-" if mean(s, k) is None else f"{mean(s, k):.3f}" for k in keys)

        lines.append(f"| {table} | {label} | {part(CALIBRATION)} | {part(TARGET_CALIBRATION)} |")
    return lines


def full_lines(runs: dict, variants: dict[str, str], tables: list[str]) -> list[str]:
    base = runs.get("baselines", {})
    methods = ("mean", *IMPUTERS, "constant", "hgb_nan")
    lines = [
        "| table | metric | " + " | ".join(variants) + " | " + " | ".join(methods) + " | paper HH-VAEM / VAEM |",
        "|" + "---|" * (3 + len(variants) + len(methods)),
    ]
    for table in tables:
        for key in METRICS:
            row = [fmt(runs[r].get(table), key) for r in variants.values()]
            row += [fmt(base.get(table, {}).get(m), key) for m in methods]
            if all(c == "-" for c in row):
                continue
            paper = PAPER.get(table, {}).get(key)
            lines.append(
                f"| {table} | {key} | " + " | ".join(row) + f" | {f'{paper[0]} / {paper[1]}' if paper else ''} |"
            )
    return lines


def cost_lines(runs: dict, variants: dict[str, str], tables: list[str]) -> list[str]:
    lines = [
        "| table | variant | splits | steps | train s per split | eval ms per test row (K samples) |",
        "|---|---|---|---|---|---|",
    ]
    for table, label, s in per_variant(runs, variants, tables):
        samples = s.get("run", {}).get("samples", "")
        lines.append(
            f"| {table} | {label} | {len(s['splits'])} | {mean(s, 'train_steps'):.0f} | "
            f"{fmt(s, 'train_seconds', 0)} | {fmt(s, 'eval_ms_per_row', 1)} (K = {samples}) |"
        )
    return lines


def columns(summary: dict) -> list[str]:
    """The feature names a run's per-column diagnosis covers (training/diagnosis.py), in first-seen order."""
    names: dict[str, None] = {}
    for key in summary.get("metrics", {}):
        if key.startswith("col/"):
            names[key.split("/")[1]] = None
    return list(names)


def diagnosis_lines(runs: dict, variants: dict[str, str], tables: list[str]) -> list[str]:
    """Per table and variant: the copyable split and the targets' aggregates, then one row per column."""
    lines = [
        "| table | variant | RMSE_xu copyable / other (share copyable) | observed-entry RMSE median / max | "
        "marginal RMSE max | accuracy minus majority, worst column |",
        "|---|---|---|---|---|---|",
    ]

    def v(s: dict, key: str) -> str:
        return "-" if mean(s, key) is None else f"{mean(s, key):.3f}"

    details = []
    for table, label, s in per_variant(runs, variants, tables):
        lines.append(
            f"| {table} | {label} | {v(s, 'rmse_xu_copyable')} / {v(s, 'rmse_xu_other')} "
            f"({v(s, 'copyable_fraction')}) | {v(s, 'observed_rmse_median')} / {v(s, 'observed_rmse_max')} | "
            f"{v(s, 'marginal_rmse_max')} | {v(s, 'accuracy_over_majority_min')} |"
        )
        for name in columns(s):
            c = f"col/{name}/"
            if mean(s, c + "hidden_accuracy") is not None or mean(s, c + "observed_accuracy") is not None:
                cells = f"acc {v(s, c + 'hidden_accuracy')} (majority {v(s, c + 'majority_accuracy')}) | " + (
                    f"acc {v(s, c + 'observed_accuracy')} | - | -"
                )
            else:
                cells = (
                    f"{v(s, c + 'hidden_rmse')} | {v(s, c + 'observed_rmse')} | {v(s, c + 'marginal_rmse')} | "
                    f"{v(s, c + 'share')}"
                )
            details.append(f"| {table} | {label} | {name} | {cells} |")
    if not details:
        return []
    return [
        *lines,
        "",
        "Per column: hidden entries (RMSE, or accuracy beside the training rows' majority class), the "
        "observed-entry reconstruction (the predictive at the entries the row showed the model), the column's "
        "own marginal VAE, and its share of the hidden numeric entries' squared error.",
        "",
        "| table | variant | column | hidden | observed-entry | marginal VAE | share of squared error |",
        "|---|---|---|---|---|---|---|",
        *details,
    ]


def provenance(runs: dict, variants: dict[str, str]) -> list[str]:
    lines = []
    for label, run in variants.items():
        any_table = next(iter(runs[run].values()))
        r = any_table.get("run", {})
        loads = [t.get("run", {}).get("load_before", [0])[0] for t in runs[run].values()]
        loads += [t.get("run", {}).get("load_after", [0])[0] for t in runs[run].values()]
        lines.append(
            f"- {label}: run `{run}`, commit {r.get('commit')}, `{r.get('command', '').split(' --json')[0]} ...`, "
            f"settings {r.get('set') or 'the defaults'}; 1-minute load average {min(loads):.2f}-{max(loads):.2f}"
        )
    return lines


def render(root: Path, variants: dict[str, str], notes: Path | None) -> str:
    runs = load_runs(root)
    missing = [r for r in variants.values() if r not in runs]
    if missing:
        raise SystemExit(f"no runs named {', '.join(missing)} in {root}")
    tables = sorted({t for r in variants.values() for t in runs[r]})
    spec = ",".join(f"{k}={v}" for k, v in variants.items())
    out = [
        "# Results under docs/protocol.md",
        "",
        f"Generated by `python -m benchmarks.results {root} --runs {spec}` from the runs' JSON (the runs: "
        f"`python -m benchmarks.accuracy`, see docs/accuracy.md). NLLs, RMSE_xu and the hidden entries' CRPS on "
        "the normalised scale (positive columns through log1p, PROTOCOL.md); target error in original units "
        "(RMSE; accuracy for classification targets, higher is better). Baselines: `hhvaem baselines`, same "
        "splits, masks and transforms. The paper's figures use its own normalisation: they anchor, they do not "
        "bind. Mean ± std over splits.",
        "",
        *provenance(runs, variants),
        "",
        "## Against the classical tools",
        "",
        *summary_lines(runs, variants, tables),
        "",
        "## Calibration",
        "",
        "Coverage of the 50 % and 90 % central predictive intervals (real, positive and count entries), CRPS "
        "(a proper score, lower is better), Brier score for categorical and binary entries.",
        "",
        *calibration_lines(runs, variants, tables),
        "",
        "## Every metric",
        "",
        *full_lines(runs, variants, tables),
        "",
        "## Per column: where the error comes from",
        "",
        "`hhvaem evaluate`'s diagnosis (training/diagnosis.py): RMSE_xu on hidden entries a training row could "
        "have supplied (it holds the value and agrees with the test row on all but at most one shown column) "
        "and on the rest; the observed-entry reconstruction (near 0: the latent carries the column; near 1: "
        "the model explains it as noise even when shown it); the marginal VAEs' own reconstruction.",
        "",
        *diagnosis_lines(runs, variants, tables),
        "",
        "## Cost",
        "",
        "One torch and one ONNX Runtime thread per run, two runs at a time on the 2 cores.",
        "",
        *cost_lines(runs, variants, tables),
    ]
    if notes and notes.exists():
        out += ["", notes.read_text().rstrip()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs_dir", type=Path, help="benchmarks.accuracy's --out folder (with baselines/)")
    ap.add_argument("--runs", default="vaem=final_vaem,hhvaem=final_hhvaem", help="LABEL=RUN,...")
    ap.add_argument("--notes", type=Path, help="markdown appended after the tables (the analysis)")
    args = ap.parse_args(argv)
    variants = dict(pair.split("=", 1) for pair in args.runs.split(","))
    print(render(args.runs_dir, variants, args.notes), end="")


if __name__ == "__main__":
    main()
