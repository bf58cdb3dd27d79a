"""Errors the engine reports about a request: every offending field, with the reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str
    row: int | None = None


class InputError(ValueError):
    """A request that does not fit the model; `errors` names every offending field and why."""

    def __init__(self, errors: Sequence[FieldError]):
        self.errors = list(errors)
        super().__init__(
            "; ".join((f"row {e.row}, " if e.row is not None else "") + f"{e.field}: {e.reason}" for e in self.errors)
        )
