"""From a validated table to a trained model: encode with training-row statistics, build, train."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from hhvaem.model.hhvaem import HHVAEM, ModelConfig
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Schema
from hhvaem.training.tabular import table_columns
from hhvaem.training.trainer import Progress, StageSteps, TrainConfig, TrainData, train

DEFAULT_STEPS = None  # None: default_steps(rows, features)


def default_steps(n_rows: int, n_features: int) -> int:
    """The default training budget for a table (dependency-VAE steps; see StageSteps.from_total).

    100 x sqrt(rows), at least 3,000 and at most 20,000 (the paper's recipe): sub-linear in rows, because early
    stopping picks the best checkpoint and the ablations (docs/accuracy.md) found 10,000 steps no better than
    3,000 on the open tables (a few hundred epochs); large tables get more steps but fewer epochs. The cost of
    a step does not depend on the rows (batches of 100).
    """
    return int(min(20_000, max(3_000, round(100 * n_rows**0.5))))


def planned_steps(variant: str, n_rows: int, n_features: int, steps: int | StageSteps | None = None) -> dict[str, int]:
    """{stage: steps} that `fit` will run: `steps` (default: `default_steps`) counts the dependency VAE's steps (VI,
    the last 10 % with HMC, or more VI for variants without it); the marginal VAEs train min(N / 4, 1000) steps
    before them (StageSteps.from_total)."""
    if steps is None:
        steps = default_steps(n_rows, n_features)
    s = steps if isinstance(steps, StageSteps) else StageSteps.from_total(steps)
    if ModelConfig.for_table(variant, n_features, n_rows).uses_hmc:
        return {"marginal": s.marginal, "vi": s.vi, "hmc": s.hmc}
    return {"marginal": s.marginal, "vi": s.vi + s.hmc}


@dataclass
class FittedModel:
    model: HHVAEM
    preprocessor: Preprocessor
    history: dict


def encode_rows(pp: Preprocessor, df: pd.DataFrame) -> TrainData:
    cols = table_columns(df)
    x, mx = pp.encode(cols, pp.schema.features, len(df))
    y, my = pp.encode(cols, pp.schema.targets, len(df))
    return TrainData(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (x, mx, y, my)))


def fit(
    df: pd.DataFrame,
    schema: Schema,
    variant: str = "hhvaem",
    steps: int | StageSteps | None = DEFAULT_STEPS,
    seed: int = 0,
    progress: Progress | None = None,
    config: ModelConfig | None = None,
    compile: bool | None = None,
    overrides: dict[str, Any] | None = None,
) -> FittedModel:
    """Trains a model on `df`. `overrides` sets ModelConfig or TrainConfig fields by name (ablations, tuning), and
    `warps` (false: no column gets a per-column warp, model.families.Warp)."""
    torch.manual_seed(seed)
    overrides = dict(overrides or {})
    warps = overrides.pop("warps", True)
    if not isinstance(warps, bool):
        raise ValueError(f"setting 'warps' must be true or false, not {warps!r}")
    pp = Preprocessor.fit(schema, table_columns(df), warps=warps)
    data = encode_rows(pp, df)
    model_kw, train_kw = split_overrides(overrides)
    cfg = config or ModelConfig.for_table(variant, len(schema.features), len(df))
    if model_kw:
        cfg = ModelConfig(**{**cfg.to_dict(), **model_kw})
    model = HHVAEM(schema, cfg)
    if steps is None:
        steps = default_steps(len(df), len(schema.features))
    stage_steps = steps if isinstance(steps, StageSteps) else StageSteps.from_total(steps)
    history = train(model, data, TrainConfig(stage_steps, seed=seed, compile=compile, **train_kw), progress)
    model.eval()
    return FittedModel(model, pp, history)


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """{field: value} -> (ModelConfig fields, TrainConfig fields); an unknown field is a ValueError naming it."""
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"steps", "seed", "compile"}
    model_kw, train_kw = {}, {}
    for key, value in overrides.items():
        if key in model_fields:
            model_kw[key] = value
        elif key in train_fields:
            train_kw[key] = value
        else:
            known = ", ".join(sorted(model_fields | train_fields | {"warps"}))
            raise ValueError(f"unknown setting {key!r} (known: {known})")
    return model_kw, train_kw
