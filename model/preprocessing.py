"""Maps table values to the model's normalised scale and back (numpy only).

Normalised scale (docs/protocol.md): real -> standardised; positive -> log(1 + x),
standardised; count -> the raw count (its likelihood is a probability mass);
binary / categorical -> the category's index. Missing cells are encoded as 0
with mask 0. Statistics come from the training rows only.

A real or positive column whose standardised values are strongly skewed (|skewness| > SKEW_THRESHOLD) is
warped on top (`families.Warp`, chosen at fit time and stored with its Stats): the model works on the warped
scale, and the families map it back to the protocol's scale (`Family.to_protocol`) and to the user's units.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from hhvaem.model.families import Stats, Warp
from hhvaem.model.schema import Column, Schema


class EncodingError(ValueError):
    """A value that does not fit its column; `column` and `row` say where."""

    def __init__(self, column: str, reason: str, row: int | None = None):
        self.column, self.reason, self.row = column, reason, row
        where = f"row {row}, " if row is not None else ""
        super().__init__(f"{where}column {column!r}: {reason}")


def category_key(value: Any) -> Any:
    """Key under which a category value is matched: numbers by value, the rest as text."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return str(value).strip()


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and value.strip().lower() in ("", "na", "nan", "null", "none"):
        return True
    return False


class Preprocessor:
    """Encodes columns of a schema to (values, mask) arrays and decodes them back."""

    def __init__(self, schema: Schema, stats: Mapping[str, Stats]):
        self.schema = schema
        self.stats = dict(stats)
        self._cat_index = {
            c.name: {category_key(v): i for i, v in enumerate(c.categories)} for c in schema.columns if c.is_discrete
        }
        # A label stands for its category wherever a value is read (schema.Column.labels).
        self._label_index = {
            c.name: {label.strip(): i for i, label in enumerate(c.labels)} for c in schema.columns if c.labels
        }

    # ---- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(cls, schema: Schema, columns: Mapping[str, np.ndarray], warps: bool = True) -> Preprocessor:
        """Statistics from the training rows; `warps=False` keeps every column on the protocol's scale (what the
        classical baselines work on)."""
        stats: dict[str, Stats] = {}
        bare = cls(schema, {})
        for col in schema.columns:
            if not col.family.uses_stats:
                continue
            values, mask = bare.encode_column(col, columns[col.name], transform_only=True)
            v = values[mask]
            if v.size == 0:
                raise EncodingError(col.name, "no observed values to fit on")
            std = float(v.std())
            mean, std = float(v.mean()), std if std > 1e-8 else 1.0
            warp = Warp.fit((v - mean) / std) if warps and col.family.warpable else None
            stats[col.name] = Stats(mean=mean, std=std, warp=warp)
        return cls(schema, stats)

    # ---- encoding ------------------------------------------------------------------------
    def encode_column(
        self, col: Column, raw: Iterable[Any], transform_only: bool = False, row_offset: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Values on the normalised scale and the observed mask (`transform_only`: before standardisation)."""
        raw = list(raw)
        values = np.zeros(len(raw), dtype=np.float64)
        mask = np.zeros(len(raw), dtype=bool)
        for i, v in enumerate(raw):
            if is_missing(v):
                continue
            values[i] = self.encode_value(col, v, row_offset + i, transform=False)
            mask[i] = True
        if transform_only:
            values[mask] = col.family.transform(values[mask])
        else:
            values[mask] = col.family.normalise(values[mask], self.stats.get(col.name))
        return values, mask

    def encode_value(self, col: Column, v: Any, row: int | None = None, strict: bool = False, transform: bool = True):
        """One present value on the normalised scale; EncodingError says why it does not fit.

        `strict` (the JSON API) refuses text and booleans in numeric columns, and in categorical columns whose
        categories are numbers, instead of parsing them. `transform=False` stops after validation and the category
        lookup (numbers stay in user units).
        """
        index = self._cat_index.get(col.name)
        if index is not None:
            labelled = self._label_index.get(col.name, {})
            if isinstance(v, str) and v.strip() in labelled:
                return float(labelled[v.strip()])
            known = ", ".join(repr(c) for c in col.categories[:10])
            named = f" or labels ({', '.join(repr(label) for label in col.labels[:10])})" if col.labels else ""
            if strict and isinstance(v, (bool, str)) and col.number_coded:
                what = "a boolean" if isinstance(v, bool) else f"text {v!r}"
                raise EncodingError(col.name, f"expected one of the category numbers ({known}){named}, got {what}", row)
            key = category_key(v)
            if key not in index:
                raise EncodingError(col.name, f"unknown category {v!r} (expected one of {known}{named})", row)
            return float(index[key])
        if strict and (isinstance(v, (bool, str)) or not isinstance(v, (int, float))):
            raise EncodingError(col.name, f"expected a number for a {col.type} column, got {type(v).__name__}", row)
        x = self._numeric(col, v, row)
        if not transform:
            return x
        with np.errstate(over="ignore"):  # a value far out becomes inf here and is refused as implausible
            return float(col.family.normalise(np.float64(x), self.stats.get(col.name)))

    @staticmethod
    def _numeric(col: Column, v: Any, row: int | None) -> float:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise EncodingError(col.name, f"non-numeric value {v!r} in a {col.type} column", row) from None
        if not math.isfinite(x):
            raise EncodingError(col.name, f"value {v!r} is not finite", row)
        reason = col.family.check(x)
        if reason:
            raise EncodingError(col.name, reason, row)
        return x

    def encode(
        self, columns: Mapping[str, Iterable[Any]], which: tuple[Column, ...], n_rows: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode the given columns; a column absent from `columns` is all missing."""
        values = np.zeros((n_rows, len(which)), dtype=np.float32)
        mask = np.zeros((n_rows, len(which)), dtype=bool)
        for j, col in enumerate(which):
            if col.name in columns:
                values[:, j], mask[:, j] = self.encode_column(col, columns[col.name])
        return values, mask

    # ---- decoding ------------------------------------------------------------------------
    def to_original(self, col: Column, normalised: np.ndarray) -> np.ndarray:
        """Normalised numeric values back to the user's units (elementwise)."""
        return col.family.to_user(normalised, self.stats.get(col.name))

    def category(self, col: Column, index: int) -> Any:
        return col.categories[int(index)]

    def to_protocol(self, col: Column, normalised: np.ndarray) -> np.ndarray:
        """Normalised numeric values on the protocol's scale (docs/protocol.md; differs for warped columns)."""
        return col.family.to_protocol(normalised, self.stats.get(col.name))

    def to_dict(self) -> dict[str, Any]:
        return {name: s.to_dict() for name, s in self.stats.items()}

    @classmethod
    def from_dict(cls, schema: Schema, d: Mapping[str, Mapping[str, Any]]) -> Preprocessor:
        """Reads `to_dict`'s output (artifacts from before warps carry none: their columns stay unwarped)."""
        return cls(schema, {k: Stats.from_dict(v) for k, v in d.items()})
