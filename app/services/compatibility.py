"""Whether a new artifact can take over a model name without breaking its clients.

Clients of a name send the features of its active version and read its targets. A new version under that name
breaks them when a feature or target they use is gone or changes type, unit or role (their values would then be
refused with 422, or read in the wrong units), or when a category they send or read, or a category's label they
may send in its place, disappears. What a new version adds (a feature, a target, a category, a label, a
description) breaks no one. Order does not matter: rows are keyed by name.
"""

from __future__ import annotations

from typing import Any


def _columns(schema: dict[str, Any], part: str) -> dict[str, dict[str, Any]]:
    return {str(c["name"]): c for c in schema.get(part) or [] if isinstance(c, dict) and "name" in c}


def _column_changes(role: str, name: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    if old.get("type") != new.get("type"):
        return [f"{role} {name!r} changes from {old.get('type')} to {new.get('type')}"]
    changes = []
    lost = [c for c in old.get("categories") or [] if c not in (new.get("categories") or [])]
    if lost:
        listed = ", ".join(repr(c) for c in lost)
        changes.append(f"{role} {name!r} loses the categor{'y' if len(lost) == 1 else 'ies'} {listed}")
    gone = [label for label in old.get("labels") or [] if label not in (new.get("labels") or [])]
    if gone:  # its clients may send the label in the code's place
        listed = ", ".join(repr(label) for label in gone)
        changes.append(f"{role} {name!r} loses the label{'' if len(gone) == 1 else 's'} {listed}")
    if old.get("unit") and new.get("unit") and old["unit"] != new["unit"]:
        changes.append(f"{role} {name!r} changes unit from {old['unit']!r} to {new['unit']!r}")
    return changes


def schema_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What in the manifest schema `new` breaks the clients of `old` (both `{"features": [...], "targets": [...]}`),
    one sentence each; empty when `new` can serve them."""
    changes = []
    new_parts = {"feature": _columns(new, "features"), "target": _columns(new, "targets")}
    for role, part in (("feature", "features"), ("target", "targets")):
        other = "target" if role == "feature" else "feature"
        for name, column in _columns(old, part).items():
            if name in new_parts[role]:
                changes += _column_changes(role, name, column, new_parts[role][name])
            elif name in new_parts[other]:
                changes.append(f"{role} {name!r} becomes a {other}")
            else:
                changes.append(f"{role} {name!r} is missing")
    return changes
