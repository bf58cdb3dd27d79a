"""How well each column's marginal VAE reconstructs it: stage 1 only, with and without the per-column warps.

    python -m benchmarks.marginal_fit ../shared/data/uci/boston --steps 1000
    python -m benchmarks.marginal_fit ../shared/data/uci/concrete --type blast_furnace_slag=zero_positive

Fits the Preprocessor on all rows (with warps, the default, and with `warps=False`), trains the marginal VAEs
alone (`Trainer.marginal_training_step`, the stage-1 schedule), then prints per numeric column the RMSE of the
reconstruction (the decoder's predictive mean at the encoder's mean, taken on the protocol's scale of
docs/protocol.md, in training standard deviations; counts divided by theirs) over the observed training rows,
and for categories the share reconstructed as their mode.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np
import torch

from hhvaem.model.hhvaem import HHVAEM, ModelConfig
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Column, Schema
from hhvaem.training.diagnosis import marginal_means, protocol_values
from hhvaem.training.fit import encode_rows
from hhvaem.training.tabular import infer_schema, load_dataset, table_columns
from hhvaem.training.trainer import StageSteps, TrainConfig, Trainer


def reconstruction(
    df, schema, warps: bool, steps: int, seed: int, kl_weight: float = 1.0
) -> dict[str, tuple[float, bool]]:
    """{column: (error, warped)}: RMSE in sd units (numeric) or the error rate (categories)."""
    torch.manual_seed(seed)
    pp = Preprocessor.fit(schema, table_columns(df), warps=warps)
    data = encode_rows(pp, df)
    model = HHVAEM(schema, ModelConfig.for_table("hhvaem", len(schema.features), len(df)))
    trainer = Trainer(
        model,
        data,
        TrainConfig(StageSteps(marginal=steps, vi=0, hmc=0), seed=seed, compile=False, marginal_kl_weight=kl_weight),
    )
    for _ in range(steps):
        trainer.marginal_training_step()
    x, mx = data.x.numpy(), data.mx.numpy()
    recon, truth = marginal_means(model, pp, x), protocol_values(model, pp, x)
    out = {}
    for d, col in enumerate(schema.features):
        seen = mx[:, d]
        stats = pp.stats.get(col.name)
        if col.is_discrete:
            out[col.name] = (float(np.mean(recon[seen, d] != x[seen, d])), False)
            continue
        err = math.sqrt(float(np.mean((recon[seen, d] - truth[seen, d]) ** 2))) / col.family.metric_scale(stats)
        out[col.name] = (err, stats is not None and getattr(stats, "warp", None) is not None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", type=Path, help="folder with data.csv and schema.json")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--type", action="append", default=[], metavar="COLUMN=TYPE", help="override a column's type")
    ap.add_argument("--kl-weight", type=float, default=1.0, help="TrainConfig.marginal_kl_weight")
    ap.add_argument("--infer", action="store_true", help="infer the features' types (the schema file: targets only)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    schema_path = args.table / "schema.json"
    df, schema = load_dataset(args.table / "data.csv", schema_path=schema_path if schema_path.exists() else None)
    if args.infer:
        inferred = infer_schema(df, targets=[c.name for c in schema.targets])
        schema = Schema(inferred.features, schema.targets)
    overrides = dict(item.split("=", 1) for item in args.type)
    if overrides:
        retype = lambda c: Column(c.name, overrides[c.name], c.categories, c.unit) if c.name in overrides else c  # noqa: E731
        schema = Schema(tuple(map(retype, schema.features)), schema.targets)
    plain = reconstruction(df, schema, False, args.steps, args.seed, args.kl_weight)
    warped = reconstruction(df, schema, True, args.steps, args.seed, args.kl_weight)
    print(f"{args.table.name}: marginal VAE reconstruction, {args.steps} steps (sd units; categories: error rate)")
    print(f"{'column':<24} {'type':<12} {'no warp':>8} {'warps':>8}")
    for col in schema.features:
        mark = " (warped)" if warped[col.name][1] else ""
        print(f"{col.name:<24} {col.type:<12} {plain[col.name][0]:8.3f} {warped[col.name][0]:8.3f}{mark}")


if __name__ == "__main__":
    main()
