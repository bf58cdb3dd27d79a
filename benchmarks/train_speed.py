"""Training speed on one table: milliseconds per step in each stage, and the full recipe's wall time.

    python -m benchmarks.train_speed ../shared/data/uci/boston [--full] [--compile] [--threads 2]

Settings are the paper's: latent [10, 5], T=10, L=5, batch 100, 30 SKSD chains
(SKSD every 10 steps, as the paper's code backpropagates it). The paper's code on this
machine kind: stage 1 3.8 ms, stage 2 20.7 ms, stage 3 2.84 s per step, full recipe ~1 h 47 min;
those anchors are printed beside ours as ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from hhvaem.model.hhvaem import HHVAEM, ModelConfig
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.training.fit import encode_rows
from hhvaem.training.tabular import load_dataset, table_columns
from hhvaem.training.trainer import StageSteps, TrainConfig, Trainer

PAPER_MS = {"marginal": 3.8, "vi": 20.7, "hmc": 2840.0}
# The paper's stage-1 step trains one feature's VAE (1k steps per feature); ours trains all D at once.
PAPER_FULL_S = 107 * 60


def commit() -> str:
    """HEAD of the checkout run from, or the commit of the snapshot run from (`benchmarks.accuracy snapshot`)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        head = ""
    return head or snapshot_commit(Path("."))


def snapshot_commit(code: Path) -> str:
    """The commit a snapshot folder (`benchmarks.accuracy snapshot`) was taken from, or the folder's name."""
    f = Path(code) / "COMMIT"
    return f.read_text().strip() if f.exists() else "unknown" if str(code) == "." else str(code)


def time_steps(step, n: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", type=Path, help="folder with data.csv and schema.json")
    ap.add_argument("--full", action="store_true", help="also run the full recipe (1k + 18k + 2k steps)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile the sampler")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--measure", type=int, default=30, help="stage-3 steps to time (10x that for stages 1-2)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    df, schema = load_dataset(args.table / "data.csv", [], args.table / "schema.json")
    base = ModelConfig.for_table("hhvaem", len(schema.features), len(df))
    # The anchor's settings, whatever the table's size.
    config = ModelConfig(variant="hhvaem", latent_dims=(10, 5), hidden=base.hidden, hmc_steps=10, leapfrog_steps=5)
    data = encode_rows(Preprocessor.fit(schema, table_columns(df)), df)

    def trainer(steps: StageSteps) -> Trainer:
        torch.manual_seed(0)
        return Trainer(HHVAEM(schema, config), data, TrainConfig(steps, compile=args.compile))

    tr = trainer(StageSteps())
    ms = {"marginal": time_steps(tr.marginal_training_step, 10 * args.measure, 20)}
    tr.freeze_marginals()
    ms["vi"] = time_steps(tr.vi_training_step, 10 * args.measure, 20)
    t0 = time.perf_counter()
    tr.hmc_training_step()
    first = time.perf_counter() - t0  # includes compilation when --compile
    ms["hmc"] = time_steps(tr.hmc_training_step, args.measure, 2 * tr.config.sksd_every)
    out = {
        "commit": commit(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "compile": args.compile,
        "ms_per_step": ms,
        "first_hmc_step_s": first,
        "speedup_vs_paper": {k: PAPER_MS[k] / v for k, v in ms.items()},
    }
    d = len(schema.features)
    out["speedup_vs_paper"]["marginal"] = PAPER_MS["marginal"] * d / ms["marginal"]
    print(f"table {args.table.name}, commit {out['commit']}, {out['machine']}, compile={args.compile}")
    print(f"{'stage':<10}{'ours ms/step':>14}{'paper ms/step':>15}{'speed-up':>10}")
    for k, v in ms.items():
        print(f"{k:<10}{v:>14.2f}{PAPER_MS[k]:>15.1f}{out['speedup_vs_paper'][k]:>9.1f}x")
    print(f"(stage 1: one step of ours trains all {d} marginal VAEs, one of the paper's trains one of them)")
    projected = (1000 * ms["marginal"] + 18000 * ms["vi"] + 2000 * ms["hmc"]) / 1000
    out["projected_full_recipe_s"] = projected
    print(
        f"projected full recipe from these per-step times (not a run; --full runs it): {projected / 60:.1f} min "
        f"(paper: {PAPER_FULL_S / 60:.0f} min)"
    )
    if args.full:
        tr = trainer(StageSteps())
        t0 = time.perf_counter()
        history = tr.run()
        wall = time.perf_counter() - t0
        out["full_recipe_s"] = wall
        out["full_recipe_stages_s"] = {k: history[k]["seconds"] for k in ("marginal", "vi", "hmc")}
        out["full_recipe_acceptance"] = history["hmc"]["acceptance_rate"]
        print(
            f"full recipe (1k marginal, 18k VI, 2k HMC steps): {wall / 60:.1f} min "
            f"(paper: {PAPER_FULL_S / 60:.0f} min, {PAPER_FULL_S / wall:.1f}x); stages "
            + ", ".join(f"{k} {v:.0f} s" for k, v in out["full_recipe_stages_s"].items())
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
