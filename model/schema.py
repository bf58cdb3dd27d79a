"""Column types and the table schema (numpy-free, torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FEATURE_TYPES = ("real", "positive", "count", "binary", "categorical")
DISCRETE_TYPES = ("binary", "categorical")


class SchemaError(ValueError):
    """A schema that cannot be used; the message names the column and the reason."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    categories: tuple[Any, ...] | None = None
    unit: str | None = None

    def __post_init__(self) -> None:
        if self.type not in FEATURE_TYPES:
            raise SchemaError(
                f"column {self.name!r}: unknown type {self.type!r} (expected one of {', '.join(FEATURE_TYPES)})"
            )
        if self.type in DISCRETE_TYPES:
            cats = tuple(self.categories or ())
            if self.type == "binary" and len(cats) != 2:
                raise SchemaError(f"column {self.name!r}: binary needs exactly 2 categories, got {len(cats)}")
            if self.type == "categorical" and len(cats) < 2:
                raise SchemaError(f"column {self.name!r}: categorical needs at least 2 categories")
            if len(set(cats)) != len(cats):
                raise SchemaError(f"column {self.name!r}: duplicate categories")
            object.__setattr__(self, "categories", cats)
        elif self.categories:
            raise SchemaError(f"column {self.name!r}: type {self.type} takes no categories")

    @property
    def is_discrete(self) -> bool:
        return self.type in DISCRETE_TYPES

    @property
    def n_categories(self) -> int:
        return len(self.categories) if self.categories else 0

    @property
    def n_params(self) -> int:
        """Width of the raw network output that parametrises this column's likelihood."""
        if self.type in ("real", "positive"):
            return 2
        if self.type in ("count", "binary"):
            return 1
        return self.n_categories

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.categories is not None:
            d["categories"] = list(self.categories)
        if self.unit:
            d["unit"] = self.unit
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Column:
        if "name" not in d or "type" not in d:
            raise SchemaError(f"schema entry {d!r}: needs 'name' and 'type'")
        cats = d.get("categories")
        return cls(
            name=str(d["name"]),
            type=str(d["type"]),
            categories=tuple(cats) if cats is not None else None,
            unit=d.get("unit"),
        )


@dataclass(frozen=True)
class Schema:
    features: tuple[Column, ...]
    targets: tuple[Column, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [c.name for c in self.features + self.targets]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SchemaError(f"column {sorted(dup)[0]!r}: appears more than once in the schema")
        if not self.features:
            raise SchemaError("schema: no feature columns")

    @property
    def columns(self) -> tuple[Column, ...]:
        return self.features + self.targets

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": [c.to_dict() for c in self.features],
            "targets": [c.to_dict() for c in self.targets],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        if "features" not in d:
            raise SchemaError("schema: missing 'features' list")
        return cls(
            features=tuple(Column.from_dict(c) for c in d["features"]),
            targets=tuple(Column.from_dict(c) for c in d.get("targets", [])),
        )
