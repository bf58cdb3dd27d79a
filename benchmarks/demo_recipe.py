"""Demo models side by side: their recipe and training time, and what they serve on the demo table.

    python -m benchmarks.demo_recipe ARTIFACT [ARTIFACT ...] [--train DIR --steps N]

For each artifact (e.g. one from `hhvaem demo --train-only --models DIR`, or `--train DIR` to train the recipe, or
N total steps, into DIR first, on one torch thread): the stage steps and seconds, the graphs' export seconds, and,
through the served engine (ONNX Runtime, 100 posterior samples, seed 0), the target's RMSE, mean predictive standard
deviation and 90 % interval coverage on the diabetes table with every feature given and with every other feature
given. In-sample (the demo model trains on all 442 rows): a check that a recipe serves as well as another, not a
benchmark of accuracy (docs/results.md has those).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def served(path: Path) -> dict:
    from hhvaem.app.engine import Engine
    from hhvaem.app.engine.queries import PredictQuery
    from hhvaem.training.demo import demo_table

    df, schema = demo_table()
    target = schema.targets[0].name
    y = df[target].to_numpy()
    rows = df.drop(columns=target).to_dict("records")
    given = {"all": rows, "half": [{k: v for i, (k, v) in enumerate(r.items()) if i % 2 == 0} for r in rows]}
    engine = Engine(path, threads=1)
    out = {}
    for name, batch in given.items():
        res = [r["targets"][target] for r in engine.run([PredictQuery(batch, 100, seed=0).prepare(engine)])[0]]
        mean, std = np.array([r["mean"] for r in res]), np.array([r["std"] for r in res])
        lo, hi = np.array([r["quantiles"]["0.05"] for r in res]), np.array([r["quantiles"]["0.95"] for r in res])
        out[f"given_{name}"] = {
            "rmse": round(float(np.sqrt(np.mean((mean - y) ** 2))), 2),
            "mean_std": round(float(std.mean()), 2),
            "coverage_90": round(float(np.mean((y >= lo) & (y <= hi))), 3),
        }
    return out


def describe(path: Path) -> dict:
    manifest = json.loads((path / "manifest.json").read_text())
    h = manifest["training"]
    return {
        "artifact": str(path),
        "steps": {k: v for k, v in h["steps"].items() if k != "total"},
        "seconds": {stage: round(h[stage]["seconds"], 1) for stage in ("marginal", "vi", "hmc") if stage in h},
        "best_step": {stage: h[stage].get("best_step") for stage in ("vi", "hmc") if stage in h},
        "export_seconds": round(sum(g["export_seconds"] for g in manifest["graphs"].values()), 1),
        **served(path),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="*", type=Path)
    ap.add_argument("--train", type=Path, help="Train a demo model into this folder first (and include it).")
    ap.add_argument("--steps", type=int, help="With --train: total steps instead of the demo recipe.")
    args = ap.parse_args(argv)
    artifacts = list(args.artifacts)
    if args.train:
        import torch

        from hhvaem.training.demo import build_demo

        torch.set_num_threads(1)
        build_demo(args.train, steps=args.steps)
        artifacts.append(args.train)
    report = {
        "command": "python -m benchmarks.demo_recipe " + " ".join(argv if argv is not None else sys.argv[1:]),
        "load_average": os.getloadavg(),
        "models": [describe(p) for p in artifacts],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
