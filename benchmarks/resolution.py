"""How stable the first question of next-features is, and what resolving it costs (docs/how-to/next-features.md).

For each model and each of ROWS rows of its table (a random half of each row's features shown, the target hidden),
next-features is asked SEEDS times with different seeds, at 100 samples and each resolution budget in BUDGETS
(`max_samples`: 100 is no resolution, the behaviour before it existed). A call agrees when its first question is
the row's most frequent first question at that budget, or when it declares a tie whose candidates include it (it
then says that the two cannot be told apart, which is the honest answer). Reported per budget: the share of calls
that agree, how often the answer was `resolved`, the mean tie size, and the latency of one call through the engine
(prepare, sampler, finish) on one thread: p50 and p99.

    python -m benchmarks.resolution /tmp/rmodels --tables /tmp/tables --out docs/resolution.json

`/tmp/rmodels/<table>` are artifacts (`hhvaem train /tmp/tables/<table>/data.csv --schema ... --out ...`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.train_speed import commit

ROWS = 12
SEEDS = 12
BUDGETS = (100, 400, 800)


def study(artifact: Path, table: Path, seed: int = 0) -> dict:
    from hhvaem.app.engine import Engine
    from hhvaem.app.engine.queries import NextFeaturesQuery
    from hhvaem.training.tabular import load_dataset

    engine = Engine(artifact, threads=1)
    df, _ = load_dataset(table / "data.csv", [], table / "schema.json")
    rng = np.random.default_rng(seed)
    features = [c.name for c in engine.schema.features]
    rows = []
    for i in rng.choice(len(df), ROWS, replace=False):
        shown = [f for f in features if rng.random() < 0.5 and not _missing(df.at[i, f])]
        rows.append({f: _plain(df.at[i, f]) for f in shown})
    out: dict = {}
    for budget in BUDGETS:
        agree, resolved, ties, times, samples = [], [], [], [], []
        for row in rows:
            answers = []
            for s in range(SEEDS):
                t = time.perf_counter()
                prepared = NextFeaturesQuery(row, samples=100, seed=1000 + s, max_samples=budget).prepare(engine)
                a = prepared.finish(engine.run_graph(prepared.graph, prepared.feeds))
                times.append(1000 * (time.perf_counter() - t))
                answers.append(a)
            modal = Counter(a["ranking"][0]["feature"] for a in answers).most_common(1)[0][0]
            for a in answers:
                r = a["resolution"]
                agree.append(a["ranking"][0]["feature"] == modal or (r["status"] == "tie" and modal in r["candidates"]))
                resolved.append(r["status"] == "resolved")
                ties.append(len(r["candidates"]))
                samples.append(r["samples"])
        out[str(budget)] = {
            "agree": float(np.mean(agree)),
            "resolved": float(np.mean(resolved)),
            "mean_candidates": float(np.mean(ties)),
            "mean_samples": float(np.mean(samples)),
            "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99)),
            "calls": len(times),
        }
    return out


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path)
    ap.add_argument("--tables", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/resolution.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = {"commit": commit(), "machine": f"{platform.node()} ({os.cpu_count()} cores)", "tables": {}}
    result["load_before"] = round(os.getloadavg()[0], 2)
    for model in sorted(p for p in args.models.iterdir() if (p / "manifest.json").exists()):
        result["tables"][model.name] = study(model, args.tables / model.name)
        print(model.name, json.dumps(result["tables"][model.name]), flush=True)
    result["load_after"] = round(os.getloadavg()[0], 2)
    args.out.write_text(json.dumps(result, indent=1))
    lines = ["| table | max_samples | agree | resolved | mean tie size | mean samples | p50 ms | p99 ms |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, per in result["tables"].items():
        for budget, f in per.items():
            lines.append(
                f"| {name} | {budget} | {f['agree']:.1%} | {f['resolved']:.0%} | {f['mean_candidates']:.1f} | "
                f"{f['mean_samples']:.0f} | {f['p50_ms']:.0f} | {f['p99_ms']:.0f} |"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
