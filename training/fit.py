"""From a validated table to a trained model: encode with training-row statistics, build, train."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from hhvaem.model.hhvaem import HHVAEM, ModelConfig
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Schema
from hhvaem.training.tabular import table_columns
from hhvaem.training.trainer import Progress, StageSteps, TrainConfig, TrainData, train

DEFAULT_STEPS = 20_000


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
    steps: int | StageSteps = DEFAULT_STEPS,
    seed: int = 0,
    progress: Progress | None = None,
    config: ModelConfig | None = None,
    compile: bool | None = None,
) -> FittedModel:
    torch.manual_seed(seed)
    pp = Preprocessor.fit(schema, table_columns(df))
    data = encode_rows(pp, df)
    cfg = config or ModelConfig.for_table(variant, len(schema.features), len(df))
    model = HHVAEM(schema, cfg)
    stage_steps = steps if isinstance(steps, StageSteps) else StageSteps.from_total(steps)
    history = train(model, data, TrainConfig(stage_steps, seed=seed, compile=compile), progress)
    model.eval()
    return FittedModel(model, pp, history)
