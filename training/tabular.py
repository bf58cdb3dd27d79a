"""User tables: read a CSV/parquet file, infer or apply a schema, and check the table before training.

Inference follows docs/protocol.md ("Data"): on the observed values of a column, text -> binary (2 levels) or
categorical; numeric with fewer than 10 distinct values -> binary (2) or categorical; otherwise all
values >= 0 -> positive, else real. Every problem is a `TableError` whose one-line message names the
column (and the 1-based data row, i.e. the row after the header) so it can be shown to the user as is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hhvaem.model.io.tables import TableError, _one_line, read_table
from hhvaem.model.preprocessing import category_key, is_missing
from hhvaem.model.schema import DISCRETE_TYPES, FEATURE_TYPES, Column, Schema, SchemaError

log = logging.getLogger(__name__)

# Numeric columns with fewer distinct observed values than this are discrete (the paper's rule).
DISCRETE_MAX_DISTINCT = 10


# ---- schema files and overrides ----------------------------------------------------------------


def load_schema_file(path: str | Path) -> dict[str, Any]:
    """Read an on-disk schema (JSON with "features" and optional "targets" lists of {name, type, categories?})."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TableError(f"schema file {p}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TableError(f"schema file {p}: cannot read ({_one_line(e)})") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise TableError(f"schema file {p.name}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    if not isinstance(d, dict):
        raise TableError(f"schema file {p.name}: expected a JSON object with 'features' and 'targets'")
    _parse_overrides(d, where=f"schema file {p.name}")  # structure errors now, with the file named
    return d


def _parse_overrides(
    overrides: Mapping[str, Any] | None, where: str = "schema"
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Normalise either override form to ({name: {type, categories?, unit?}}, targets listed in it)."""
    if not overrides:
        return {}, []
    entries: dict[str, dict[str, Any]] = {}
    file_targets: list[str] = []
    # On-disk form: "features"/"targets" hold lists. A flat mapping could have a column called
    # "features", but then its value is a dict, so the list test tells the two forms apart.
    if isinstance(overrides.get("features"), list) or isinstance(overrides.get("targets"), list):
        for key in ("features", "targets"):
            items = overrides.get(key, [])
            if not isinstance(items, list):
                raise TableError(f"{where}: '{key}' must be a list of {{name, type}} entries")
            for item in items:
                if not isinstance(item, Mapping) or "name" not in item or "type" not in item:
                    raise TableError(f"{where}: entry {item!r} in '{key}' needs 'name' and 'type'")
                name = str(item["name"])
                if name in entries:
                    raise TableError(f"{where}: column {name!r} is listed more than once")
                entries[name] = _entry(name, item, where)
                if key == "targets":
                    file_targets.append(name)
    else:
        for name, item in overrides.items():
            if isinstance(item, str):
                item = {"type": item}  # {"x": "real"} shorthand
            if not isinstance(item, Mapping) or "type" not in item:
                raise TableError(f"{where}: column {str(name)!r}: override needs a 'type'")
            entries[str(name)] = _entry(str(name), item, where)
    return entries, file_targets


def _entry(name: str, item: Mapping[str, Any], where: str) -> dict[str, Any]:
    typ = str(item["type"])
    if typ not in FEATURE_TYPES:
        raise TableError(f"{where}: column {name!r}: unknown type {typ!r} (expected one of {', '.join(FEATURE_TYPES)})")
    cats = item.get("categories")
    if cats is not None and not isinstance(cats, (list, tuple)):
        raise TableError(f"{where}: column {name!r}: 'categories' must be a list")
    return {"type": typ, "categories": None if cats is None else list(cats), "unit": item.get("unit")}


# ---- inference --------------------------------------------------------------------------------


def infer_schema(
    df: pd.DataFrame, targets: Sequence[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Schema:
    """Schema of `df` by the paper's rule; `overrides` (on-disk or flat {name: {type, categories?}}) wins.

    Targets keep the order given; when none are given, the targets listed in an on-disk `overrides`
    are used. Every other data column is a feature, in file order.
    """
    entries, file_targets = _parse_overrides(overrides)
    target_names = [str(t) for t in targets] if targets else list(file_targets)
    _check_names(df.columns, target_names, entries)
    cols = {name: _infer_column(name, df[name], entries.get(name)) for name in df.columns}
    features = tuple(c for n, c in cols.items() if n not in target_names)
    if not features:
        raise TableError("no feature columns: every column is a target")
    try:
        return Schema(features=features, targets=tuple(cols[t] for t in target_names))
    except SchemaError as e:
        raise TableError(str(e)) from None


def _check_names(columns: Sequence[str], target_names: Sequence[str], entries: Mapping[str, Any]) -> None:
    for t in target_names:
        if t not in columns:
            raise TableError(f"unknown target column {t!r} (columns: {_list(columns)})")
        if list(target_names).count(t) > 1:
            raise TableError(f"target column {t!r} is given more than once")
    for name in entries:
        if name not in columns:
            raise TableError(f"column {name!r}: listed in the schema but not in the data (columns: {_list(columns)})")


def _infer_column(name: str, s: pd.Series, entry: dict[str, Any] | None) -> Column:
    observed = s[~_missing_mask(s)]
    if entry is not None:
        cats = entry["categories"]
        if entry["type"] in DISCRETE_TYPES and cats is None:
            if observed.empty:
                raise TableError(f"column {name!r}: all values are missing")
            cats = _distinct(observed)  # the override names the type only; levels come from the data
        return _make_column(name, entry["type"], cats, entry["unit"])
    if observed.empty:
        raise TableError(f"column {name!r}: all values are missing")
    if pd.api.types.is_numeric_dtype(s):
        x = observed.to_numpy(dtype=np.float64)
        levels = _distinct(observed)
        if len(levels) == 1:
            raise TableError(f"column {name!r}: constant (every observed value is {_show(levels[0])})")
        if len(levels) < DISCRETE_MAX_DISTINCT:
            return _make_column(name, "binary" if len(levels) == 2 else "categorical", levels)
        return _make_column(name, "positive" if float(np.min(x)) >= 0 else "real", None)
    levels = _distinct(observed)
    if len(levels) == 1:
        raise TableError(f"column {name!r}: constant (every observed value is {_show(levels[0])})")
    return _make_column(name, "binary" if len(levels) == 2 else "categorical", levels)


def _make_column(name: str, typ: str, cats: Sequence[Any] | None, unit: str | None = None) -> Column:
    try:
        return Column(name=name, type=typ, categories=None if cats is None else tuple(cats), unit=unit)
    except SchemaError as e:
        raise TableError(str(e)) from None


def _distinct(observed: pd.Series) -> list[Any]:
    """Sorted distinct levels: floats for numeric columns, text otherwise (one per `category_key`)."""
    if pd.api.types.is_numeric_dtype(observed):
        return [float(v) for v in np.unique(observed.to_numpy(dtype=np.float64))]
    # "1" and "1.0" are the same category to the Preprocessor, so keep one spelling per key.
    by_key: dict[Any, str] = {}
    for v in observed:
        by_key.setdefault(category_key(v), str(v).strip())
    return sorted(by_key.values())


# ---- validation -------------------------------------------------------------------------------


def validate_table(
    df: pd.DataFrame, schema: Schema, min_rows: int = 20, ignore_extra: bool = False
) -> tuple[pd.DataFrame, int]:
    """Check `df` against `schema`; return (the table ready for training, number of rows dropped).

    Rows where every schema column is missing carry nothing to learn from and are dropped; other
    missing cells are allowed. Data columns not in the schema are an error unless `ignore_extra`,
    in which case they are left out. Row numbers in messages are 1-based data rows of `df`.
    """
    if not schema.targets:
        raise TableError("no target columns: name at least one target")
    for col in schema.targets:
        if col.name not in df.columns:
            raise TableError(f"unknown target column {col.name!r} (columns: {_list(df.columns)})")
    for col in schema.features:
        if col.name not in df.columns:
            raise TableError(
                f"column {col.name!r}: listed in the schema but not in the data (columns: {_list(df.columns)})"
            )
    known = {c.name for c in schema.columns}
    extra = [c for c in df.columns if c not in known]
    if extra and not ignore_extra:
        raise TableError(f"column {extra[0]!r}: in the data but not in the schema (drop it or ignore extra columns)")

    masks = {c.name: _missing_mask(df[c.name]) for c in schema.columns}
    feature_names = {c.name for c in schema.features}
    for col in schema.columns:
        _check_column(col, df[col.name], masks[col.name], is_feature=col.name in feature_names)

    empty_rows = np.logical_and.reduce([masks[c.name] for c in schema.columns])
    n_dropped = int(empty_rows.sum())
    n_rows = len(df) - n_dropped
    if n_rows < min_rows:
        raise TableError(f"only {n_rows} usable data rows (need at least {min_rows})")
    if n_dropped:
        log.info("dropped %d rows with every column missing", n_dropped)

    keep = [c for c in df.columns if c in known]
    out = df.loc[~empty_rows, keep].reset_index(drop=True)
    for col in schema.columns:
        if not col.is_discrete:
            out[col.name] = pd.to_numeric(out[col.name]).astype("float64")
    return out, n_dropped


def _check_column(col: Column, s: pd.Series, missing: np.ndarray, is_feature: bool) -> None:
    name = col.name
    if missing.all():
        raise TableError(f"column {name!r}: all values are missing")
    positions = np.flatnonzero(~missing)
    values = s.to_numpy(dtype=object)
    if not col.is_discrete:
        x = np.empty(len(positions), dtype=np.float64)
        for k, i in enumerate(positions):
            try:
                x[k] = float(values[i])
            except (TypeError, ValueError):
                raise TableError(
                    f"column {name!r}, row {i + 1}: non-numeric value {_show(values[i])} in a {col.type} column"
                ) from None
        bad = ~np.isfinite(x)
        if bad.any():
            i = positions[np.argmax(bad)]
            raise TableError(f"column {name!r}, row {i + 1}: value {_show(values[i])} is not finite")
        bad = col.family.invalid(x)
        if bad.any():
            k = int(np.argmax(bad))
            raise TableError(f"column {name!r}, row {positions[k] + 1}: {col.family.check(x[k])}")
        distinct = np.unique(x)
    else:
        index = {category_key(c) for c in col.categories or ()}
        keys = []
        for i in positions:
            key = category_key(values[i])
            if key not in index:
                raise TableError(
                    f"column {name!r}, row {i + 1}: value {_show(values[i])} is not one of its categories "
                    f"({_list(col.categories or ())})"
                )
            keys.append(key)
        distinct = list(dict.fromkeys(keys))
    # A feature that never varies cannot inform the model (targets are left to the caller).
    if is_feature and len(distinct) == 1:
        raise TableError(f"column {name!r}: constant (every observed value is {_show(values[positions[0]])})")


def _missing_mask(s: pd.Series) -> np.ndarray:
    mask = s.isna().to_numpy(dtype=bool, copy=True)  # pandas 3 hands out read-only views
    if not pd.api.types.is_numeric_dtype(s):
        mask |= np.fromiter((is_missing(v) for v in s.to_numpy(dtype=object)), dtype=bool, count=len(s))
    return mask


# ---- feeding the model ------------------------------------------------------------------------


def table_columns(df: pd.DataFrame, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """{name: object array} for Preprocessor.fit/encode, with missing cells as None."""
    out: dict[str, np.ndarray] = {}
    for name in names if names is not None else df.columns:
        s = df[name]
        values = s.to_numpy(dtype=object).copy()
        values[_missing_mask(s)] = None
        out[str(name)] = values
    return out


def load_dataset(
    path: str | Path,
    targets: Sequence[str] | None = None,
    schema_path: str | Path | None = None,
    min_rows: int = 20,
    ignore_extra: bool = False,
) -> tuple[pd.DataFrame, Schema]:
    """Read, infer (a schema file acting as overrides) and validate a table; returns (clean table, schema).

    With a schema file, data columns it does not list (and that are not targets) are an error unless
    `ignore_extra`, which leaves them out. Targets may be empty when the schema file names them.
    """
    df = read_table(path)
    if schema_path is None:
        schema = infer_schema(df, targets)
    else:
        overrides = load_schema_file(schema_path)
        entries, file_targets = _parse_overrides(overrides)
        target_names = [str(t) for t in targets] if targets else file_targets
        _check_names(df.columns, target_names, entries)  # against all columns, so the message lists them all
        listed = set(entries) | set(target_names)
        # Infer on the listed columns only, so unlisted ones surface as extras in validate_table.
        schema = infer_schema(df[[c for c in df.columns if c in listed]], targets, overrides)
    out, _ = validate_table(df, schema, min_rows=min_rows, ignore_extra=ignore_extra)
    return out, schema


# ---- messages ---------------------------------------------------------------------------------


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v if len(v) <= 40 else v[:37] + "...")
    try:
        x = float(v)
    except (TypeError, ValueError):
        return repr(v)[:40]
    return f"{x:g}"


def _list(items: Any, limit: int = 20) -> str:
    items = [str(i) for i in items]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
