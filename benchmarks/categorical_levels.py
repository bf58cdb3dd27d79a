"""Does a categorical with many levels train, and what does its width cost? (issue #23, item 5)

    python -m benchmarks.categorical_levels [--levels 54] [--rows-per-level 340] [--steps 400] [--held-out 300]

A synthetic table shaped like the user's report (54 US regions in 18,249 rows): `region` (text, LEVELS levels,
ROWS_PER_LEVEL rows each), four numeric columns whose means depend on the region, a binary `organic`, and the
target `price`. The schema is inferred (the region must be accepted as a categorical). The
model trains STEPS steps (a quarter on the marginal VAEs, the rest on the dependency VAE, no HMC: a quick check,
not the full recipe), then the region of HELD_OUT rows not used for training is hidden and imputed (the posterior
mode). Printed: the inferred type, the encoder/decoder width of the region, seconds per dependency-VAE step, the
imputation accuracy and the majority-class accuracy (the baseline a model that ignores the other columns gets).
`--levels 10 --levels 54 --levels 1000` compares widths and step times across level counts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def synthetic_table(levels: int, rows_per_level: int, seed: int = 0) -> pd.DataFrame:
    """Each region has its own mean for each of four numeric columns (drawn once), so the numbers tell the regions
    apart up to noise: a model that learns the joint imputes the region well, one that does not guesses."""
    rng = np.random.default_rng(seed)
    region = np.repeat(np.arange(levels), rows_per_level)
    rng.shuffle(region)
    means = rng.normal(0.0, 1.0, (levels, 4))
    noise = rng.normal(0.0, 0.15, (len(region), 4))
    x = means[region] + noise
    organic = rng.integers(0, 2, len(region))
    return pd.DataFrame(
        {
            "region": [f"region_{r:04d}" for r in region],
            "log_volume": 10.0 + x[:, 0] - 0.6 * organic,
            "bags_small": x[:, 1],
            "bags_large": x[:, 2],
            "organic": np.where(organic == 1, "organic", "conventional"),
            "price": 1.5 + 0.3 * x[:, 3] + 0.3 * organic,
        }
    )


def run(levels: int, rows_per_level: int, steps: int, held_out: int, seed: int, target: str = "price") -> dict:
    import torch

    from hhvaem.app.engine import Engine, ImputeQuery
    from hhvaem.training.artifact import data_fingerprint, write_artifact
    from hhvaem.training.fit import fit
    from hhvaem.training.tabular import infer_schema, validate_table
    from hhvaem.training.trainer import StageSteps

    torch.set_num_threads(1)
    df = synthetic_table(levels, rows_per_level, seed)
    test, train_df = df.iloc[:held_out].reset_index(drop=True), df.iloc[held_out:].reset_index(drop=True)
    schema = infer_schema(train_df, [target])
    table, _ = validate_table(train_df, schema)
    region = schema.column("region")
    stages = StageSteps(marginal=max(steps // 4, 10), vi=steps - max(steps // 4, 10), hmc=0)
    started = time.perf_counter()
    fitted = fit(table, schema, "hhvaem", stages, seed)
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        write_artifact(out, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(table))
        engine = Engine(out, threads=1)
        rows = [{k: v for k, v in r.items() if k != "region"} for r in records(test, schema)]
        answers = engine.answer(ImputeQuery(rows, 50, seed=seed))
    guessed = np.array([a["values"]["region"] for a in answers])
    truth = test["region"].to_numpy()
    majority = train_df["region"].value_counts().index[0]
    params = sum(p.numel() for p in fitted.model.parameters())
    return {
        "levels": levels,
        "rows": len(df),
        "train_rows": len(train_df),
        "inferred_type": region.type,
        "region_width": {"encoder_input": region.n_categories, "decoder_output": region.n_params},
        "model_parameters": int(params),
        "steps": {"marginal": stages.marginal, "vi": stages.vi, "hmc": 0},
        "train_seconds": round(seconds, 1),
        "ms_per_vi_step": round(1000 * fitted.history["vi"]["seconds"] / stages.vi, 1),
        "held_out": held_out,
        "target": target,
        "imputed_accuracy": round(float(np.mean(guessed == truth)), 3),
        "distinct_guesses": len(set(guessed)),
        "majority_accuracy": round(float(np.mean(truth == majority)), 3),
    }


def records(test: pd.DataFrame, schema) -> list[dict]:
    """Held-out rows as the engine's input records (numbers as floats, categories as text)."""
    from hhvaem.training.tabular import table_columns

    cols = table_columns(test, [c.name for c in schema.columns])
    return [{name: cols[name][i] for name in cols if cols[name][i] is not None} for i in range(len(test))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, action="append")
    ap.add_argument("--rows-per-level", type=int, default=340)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--held-out", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", default="price", help="the model's target column: price (default) or region")
    args = ap.parse_args()
    for levels in args.levels or [54]:
        print(
            json.dumps(run(levels, args.rows_per_level, args.steps, args.held_out, args.seed, args.target)), flush=True
        )


if __name__ == "__main__":
    main()
