"""The inference engine: ONNX Runtime (or torch) over an exported artifact, numpy around it.

A layer of its own below the web service: the service, the CLI, batch scoring and evaluation (SAIA)
all call it; it imports nothing from the service (docs/architecture.md).
"""

from hhvaem.app.engine.engine import Engine, Prepared
from hhvaem.app.engine.errors import FieldError, InputError
from hhvaem.app.engine.queries import (
    DEFAULT_QUANTILES,
    ImputeQuery,
    MultipleImputeQuery,
    NextFeaturesQuery,
    PredictQuery,
)

__all__ = [
    "DEFAULT_QUANTILES",
    "Engine",
    "FieldError",
    "ImputeQuery",
    "InputError",
    "MultipleImputeQuery",
    "NextFeaturesQuery",
    "PredictQuery",
    "Prepared",
]
