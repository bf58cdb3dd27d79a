"""Per-feature predictive NLL of the unobserved entries: where NLL_xu comes from.

    python -m benchmarks.feature_nll ../shared/data/uci/boston --variant vaem --steps 2000 --split 0
    python -m benchmarks.feature_nll ../shared/data/uci/boston --min-scale 0.001 --logit-bound 1e6

Trains on split k (docs/protocol.md), then prints, per feature, the mean over hidden test entries of
-log p(x_d | x_O) (a single-feature mixture over K posterior samples) and the five worst entries.
--min-scale / --logit-bound replace the likelihoods' robustness constants for the run (1e-3 and
1e6 reproduce the unbounded likelihoods this project started with).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import hhvaem.model.likelihoods as lik
from hhvaem.training.evaluate import posterior_predictions, protocol_test_mask, split_indices
from hhvaem.training.fit import encode_rows, fit
from hhvaem.training.tabular import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", type=Path, help="folder with data.csv and schema.json")
    ap.add_argument("--variant", default="vaem")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--min-scale", type=float, default=lik.MIN_SCALE)
    ap.add_argument("--logit-bound", type=float, default=lik.LOGIT_BOUND)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lik.MIN_SCALE, lik.LOGIT_BOUND = args.min_scale, args.logit_bound
    df, schema = load_dataset(args.table / "data.csv", [], args.table / "schema.json")
    tr, te = split_indices(len(df), args.split)
    fitted = fit(df.iloc[tr].reset_index(drop=True), schema, args.variant, args.steps, 0)
    test = encode_rows(fitted.preprocessor, df.iloc[te].reset_index(drop=True))
    mask = torch.from_numpy(protocol_test_mask(len(te), len(schema.features), args.split)) & test.mx
    pred = posterior_predictions(fitted.model, test, mask, args.samples)
    hidden = test.mx & ~mask
    nll = -(torch.logsumexp(pred["lp_x"], 1) - math.log(args.samples))
    print(
        f"{args.table.name} split {args.split}, {args.variant}, {args.steps} steps, "
        f"min scale {args.min_scale:g}, logit bound {args.logit_bound:g}"
    )
    for d, col in enumerate(schema.features):
        h = hidden[:, d]
        if h.any():
            print(f"  {col.name:<28}{col.type:<12}{nll[h, d].mean().item():>8.2f}  ({int(h.sum())} hidden)")
    print("  worst entries:", ", ".join(f"{v:.1f}" for v in nll[hidden].topk(5).values.tolist()))


if __name__ == "__main__":
    main()
