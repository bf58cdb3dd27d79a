"""Column types and the table schema (numpy-free, torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hhvaem.model.families import FAMILIES, Family

FEATURE_TYPES = tuple(FAMILIES)
DISCRETE_TYPES = tuple(t for t, f in FAMILIES.items() if f.discrete)


class SchemaError(ValueError):
    """A schema that cannot be used; the message names the column and the reason."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    categories: tuple[Any, ...] | None = None
    unit: str | None = None
    # Categorical/binary columns: one display label per category, in the categories' order (e.g. codes 1, 2 shown
    # as "group 1", "group 2"). The codes stay the values; the API also takes a label in a code's place.
    labels: tuple[str, ...] | None = None
    description: str | None = None  # one plain sentence: what the column measures (shown by the questionnaire)

    def __post_init__(self) -> None:
        if self.type not in FEATURE_TYPES:
            raise SchemaError(
                f"column {self.name!r}: unknown type {self.type!r} (expected one of {', '.join(FEATURE_TYPES)})"
            )
        cats = tuple(self.categories or ())
        reason = self.family.check_categories(len(cats))
        if reason:
            what = reason if self.is_discrete else f"type {self.type} {reason}"
            raise SchemaError(f"column {self.name!r}: {what}")
        if self.is_discrete:
            if len(set(cats)) != len(cats):
                raise SchemaError(f"column {self.name!r}: duplicate categories")
            object.__setattr__(self, "categories", cats)
        if self.labels is not None:
            if not isinstance(self.labels, (list, tuple)):
                raise SchemaError(f"column {self.name!r}: labels must be a list, one per category")
            object.__setattr__(self, "labels", _checked_labels(self.name, tuple(self.labels), cats, self.is_discrete))
        if self.description is not None and not (isinstance(self.description, str) and self.description.strip()):
            raise SchemaError(f"column {self.name!r}: description must be non-empty text")

    @property
    def family(self) -> Family:
        return FAMILIES[self.type]

    @property
    def is_discrete(self) -> bool:
        return self.family.discrete

    @property
    def number_coded(self) -> bool:
        """A categorical column whose categories are all numbers (e.g. RAD's 1..24): the JSON API takes numbers."""
        return bool(self.categories) and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in self.categories
        )

    @property
    def n_categories(self) -> int:
        return len(self.categories) if self.categories else 0

    @property
    def n_params(self) -> int:
        """Width of the raw network output that parametrises this column's likelihood."""
        return self.family.raw_width(self.n_categories)

    @property
    def natural_width(self) -> int:
        """Width of the natural parameters the sampler graph reports for this column."""
        return self.family.natural_width(self.n_categories)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.categories is not None:
            d["categories"] = list(self.categories)
        if self.unit:
            d["unit"] = self.unit
        if self.labels is not None:
            d["labels"] = list(self.labels)
        if self.description:
            d["description"] = self.description
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Column:
        if "name" not in d or "type" not in d:
            raise SchemaError(f"schema entry {d!r}: needs 'name' and 'type'")
        cats, labels = d.get("categories"), d.get("labels")
        return cls(
            name=str(d["name"]),
            type=str(d["type"]),
            categories=tuple(cats) if cats is not None else None,
            unit=d.get("unit"),
            labels=tuple(labels) if isinstance(labels, list) else labels,
            description=d.get("description"),
        )


def _reads_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _checked_labels(name: str, labels: tuple[Any, ...], categories: tuple[Any, ...], discrete: bool) -> tuple[str, ...]:
    """`labels` if they can name `categories` one to one, else SchemaError. A label is matched as a value too, so
    none may read as a number (it would shadow a number code) or as another category's text."""
    if not discrete:
        raise SchemaError(f"column {name!r}: labels name categories; a numeric column has none")
    if len(labels) != len(categories):
        raise SchemaError(f"column {name!r}: {len(labels)} labels for {len(categories)} categories (one each)")
    texts = {str(c).strip(): i for i, c in enumerate(categories)}
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip() or not label.isprintable():
            raise SchemaError(f"column {name!r}: label {label!r} is not one line of non-empty text")
        if _reads_as_number(label):
            raise SchemaError(f"column {name!r}: label {label!r} reads as a number (a label must be a word)")
        if texts.get(label.strip(), i) != i:
            raise SchemaError(f"column {name!r}: label {label!r} is the value of another category")
    if len({label.strip() for label in labels}) != len(labels):
        raise SchemaError(f"column {name!r}: duplicate labels")
    return labels


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
