"""The inference engine: ONNX Runtime (or torch) over an exported artifact, numpy around it."""

from hhvaem.app.engine.engine import DEFAULT_QUANTILES, Engine, FieldError, InputError, Prepared

__all__ = ["DEFAULT_QUANTILES", "Engine", "FieldError", "InputError", "Prepared"]
