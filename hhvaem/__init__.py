"""hhvaem: imputation, prediction and feature acquisition for tables with missing values."""

__version__ = "0.1.0"

# The scikit-learn estimators load on first use, so that `import hhvaem` stays cheap (no scikit-learn, no torch).
_ESTIMATORS = ("HHVAEMClassifier", "HHVAEMImputer", "HHVAEMRegressor")
__all__ = ["__version__", *_ESTIMATORS]


def __getattr__(name: str):
    if name in _ESTIMATORS:
        from hhvaem import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'hhvaem' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ESTIMATORS))
