"""User tables: read a CSV/parquet file, infer or apply a schema, and check the table before training.

Inference follows docs/protocol.md ("Data") on the observed values of a column, with two additions (counts, and
refusing what would be modelled the wrong way):

* text -> binary (2 levels) or categorical, unless the evidence for its levels is too thin (`too_many_levels`:
  from `DISCRETE_MAX_DISTINCT` levels on, most levels must be seen at least `MIN_ROWS_PER_LEVEL` times, and there
  are at most `MAX_CATEGORIES`; an identifier or free text fails), which is refused; a text column that is mostly
  numbers (more than half of its observed cells, with at least `DISCRETE_MAX_DISTINCT` distinct numbers) is a
  numeric column with a few bad cells, refused with those cells named (or, when asked, read with them missing);
* numeric with fewer than `DISCRETE_MAX_DISTINCT` distinct values -> binary (2) or categorical;
* otherwise count when the values are whole numbers >= 0 that look like a tally (`is_count_like`), else, if all
  values are >= 0, zero_positive when at least `ZERO_INFLATED_SHARE` of them are exact zeros (a point mass at 0
  plus the positive family), positive otherwise; else real.

A schema (file or mapping) overrides inference column by column and may name only some columns. Every problem is
a `TableError` whose one-line message names the column (and the 1-based data row, i.e. the row after the header)
so it can be shown to the user as is; what is read anyway but changed (cells read as missing) is a `TableWarning`.
A message that suggests a way out names it the way its reader gives it (`Remedies`: the CLI's flags by default,
the estimators' arguments with `PYTHON`).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hhvaem.model.io.tables import TableError, TableWarning, _one_line, read_table
from hhvaem.model.preprocessing import category_key, is_missing
from hhvaem.model.schema import DISCRETE_TYPES, FEATURE_TYPES, Column, Schema, SchemaError

log = logging.getLogger(__name__)

# Numeric columns with fewer distinct observed values than this are discrete (the paper's rule).
DISCRETE_MAX_DISTINCT = 10
# A categorical level is one input of the encoder's one-hot and one logit of the decoder's softmax, each learnt from
# the rows that show it. From DISCRETE_MAX_DISTINCT levels on, an inferred categorical is refused unless most of its
# levels (the median level) are seen at least this often: so the levels allowed grow with the rows (54 US regions in
# 18,249 rows: median 338), while an identifier or free text (most values seen once) is refused. docs/how-to/
# columns.md has the measurement (benchmarks/categorical_levels.py).
MIN_ROWS_PER_LEVEL = 5
# And never more levels than this, whatever the rows: the model's width (and a step's time) grows with the levels,
# and beyond this a column is more likely a code to leave out or group than a category (declared, it is modelled).
MAX_CATEGORIES = 1000
# A non-negative column with at least this share of exact zeros is zero_positive (a point mass at 0 plus the
# positive family): a log-normal alone almost never puts a hidden true zero near zero.
ZERO_INFLATED_SHARE = 0.10
# Cells named in a message (the rest are counted).
SHOWN_CELLS = 5


@dataclass(frozen=True)
class Remedies:
    """How the reader of a message leaves a column out, declares its type, or reads non-numeric cells as missing:
    the CLI's flags (`CLI`) or the estimators' arguments (`PYTHON`). Templates take {name} and {type}."""

    drop: str
    declare: str
    non_numeric: str


CLI = Remedies(
    drop="leave it out (--drop {name})",
    declare="declare it {type} in --schema",
    non_numeric="read such cells as missing (--non-numeric-as-missing)",
)
PYTHON = Remedies(
    drop="leave it out of X",
    declare="declare it with types={{{name!r}: {type!r}}}",
    non_numeric="set such cells to NaN (missing)",
)


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
    df: pd.DataFrame,
    targets: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    remedies: Remedies = CLI,
) -> Schema:
    """Schema of `df` by the paper's rule; `overrides` (on-disk or flat {name: {type, categories?}}) wins.

    Targets keep the order given; when none are given, the targets listed in an on-disk `overrides`
    are used. Every other data column is a feature, in file order. A refusal suggests `remedies`.
    """
    entries, file_targets = _parse_overrides(overrides)
    target_names = [str(t) for t in targets] if targets else list(file_targets)
    _check_names(df.columns, target_names, entries)
    cols = {name: _infer_column(name, df[name], entries.get(name), remedies) for name in df.columns}
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


def _infer_column(name: str, s: pd.Series, entry: dict[str, Any] | None, remedies: Remedies = CLI) -> Column:
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
        if is_count_like(x):
            return _make_column(name, "count", None)
        if float(np.min(x)) < 0:
            return _make_column(name, "real", None)
        zeros = float(np.mean(x == 0))
        return _make_column(name, "zero_positive" if zeros >= ZERO_INFLATED_SHARE else "positive", None)
    bad = _mostly_numeric_bad_cells(s)
    if bad is not None:
        raise TableError(
            f"column {name!r}: {len(bad)} of {len(observed)} values {'is' if len(bad) == 1 else 'are'} not a number "
            f"in an otherwise numeric column ({_cells(s, bad)}); correct {'it' if len(bad) == 1 else 'them'}, or "
            f"{remedies.non_numeric}"
        )
    levels = _distinct(observed)
    if len(levels) == 1:
        raise TableError(f"column {name!r}: constant (every observed value is {_show(levels[0])})")
    counts = observed.map(category_key).value_counts().to_numpy()
    why = too_many_levels(counts)
    if why:
        drop, declare = remedies.drop.format(name=name), remedies.declare.format(name=name, type="categorical")
        raise TableError(
            f"column {name!r}: {len(levels):,} distinct text values in {len(observed):,} observed rows, too many for "
            f"a categorical: {why}; an identifier or free text: {drop}; a category with this many levels: {declare}"
        )
    return _make_column(name, "binary" if len(levels) == 2 else "categorical", levels)


def is_count_like(x: np.ndarray) -> bool:
    """Whole numbers >= 0 that fill at least half of the integers between their minimum and maximum (a tally such
    as visits or age in years; sparse integer codes such as tax rates or test days stay positive), with a variance
    at least half their mean: a Poisson mixture cannot be narrower than a Poisson (a sample of one scatters around
    its mean, hence the half), so a calendar year is no count."""
    if x.size == 0 or float(x.min()) < 0 or not np.all(x == np.round(x)):
        return False
    span = float(x.max() - x.min()) + 1.0
    return len(np.unique(x)) >= span / 2 and float(np.var(x)) >= float(np.mean(x)) / 2


def too_many_levels(counts: Sequence[int] | np.ndarray) -> str | None:
    """Why a text column whose levels are seen `counts` times each is no inferred categorical (None: it is one):
    from DISCRETE_MAX_DISTINCT levels on, its median level must be seen MIN_ROWS_PER_LEVEL times, and it may have
    at most MAX_CATEGORIES levels."""
    levels = len(counts)
    if levels < DISCRETE_MAX_DISTINCT:
        return None
    median = float(np.median(counts))
    if median < MIN_ROWS_PER_LEVEL:
        seen_once = int(np.sum(np.asarray(counts) == 1))
        return (
            f"most levels are seen fewer than {MIN_ROWS_PER_LEVEL} times (median {median:g}, {seen_once:,} seen once)"
        )
    if levels > MAX_CATEGORIES:
        return f"more than {MAX_CATEGORIES:,} levels (the most an inferred categorical may have)"
    return None


def _mostly_numeric_bad_cells(s: pd.Series) -> np.ndarray | None:
    """Positions of the non-numeric cells of a text column that is mostly numbers (more than half its observed
    cells, at least DISCRETE_MAX_DISTINCT distinct numbers); None for any other column."""
    if pd.api.types.is_numeric_dtype(s):
        return None
    observed, numbers = _numbers(s)
    is_number = observed & ~np.isnan(numbers)
    if is_number.sum() * 2 <= observed.sum() or len(np.unique(numbers[is_number])) < DISCRETE_MAX_DISTINCT:
        return None
    return np.flatnonzero(observed & ~is_number)


def _non_numeric_cells(s: pd.Series) -> np.ndarray:
    """Positions of observed cells that do not read as a number."""
    observed, numbers = _numbers(s)
    return np.flatnonzero(observed & np.isnan(numbers))


def _numbers(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(observed mask, each cell as a number, NaN where missing or not a number)."""
    observed = ~_missing_mask(s)
    return observed, pd.to_numeric(s.where(observed), errors="coerce").to_numpy(dtype=np.float64)


def read_non_numeric_as_missing(df: pd.DataFrame, overrides: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """`df` with the non-numeric cells of its numeric columns missing, each column so changed in a `TableWarning`
    naming the cells. Numeric columns: those the overrides give a numeric type, and text columns that are mostly
    numbers (the ones inference refuses); categorical text is left alone."""
    entries, _ = _parse_overrides(overrides)
    out = df.copy()
    for name in df.columns:
        entry = entries.get(name)
        s = df[name]
        if entry is not None:
            if entry["type"] in DISCRETE_TYPES or pd.api.types.is_numeric_dtype(s):
                continue
            bad = _non_numeric_cells(s)
        else:
            bad = _mostly_numeric_bad_cells(s)
        if bad is None or not len(bad):
            continue
        warnings.warn(
            TableWarning(
                f"column {name!r}: {len(bad)} non-numeric cell{'s' if len(bad) > 1 else ''} read as missing "
                f"({_cells(s, bad)})"
            ),
            stacklevel=2,
        )
        column = s.astype(object).copy()
        column.iloc[bad] = np.nan
        out[name] = pd.to_numeric(column).astype("float64")
    return out


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
    df: pd.DataFrame, schema: Schema, min_rows: int = 20, ignore_extra: bool = False, remedies: Remedies = CLI
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
        _check_column(col, df[col.name], masks[col.name], col.name in feature_names, remedies)

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


def _check_column(col: Column, s: pd.Series, missing: np.ndarray, is_feature: bool, remedies: Remedies) -> None:
    name = col.name
    if missing.all():
        raise TableError(f"column {name!r}: all values are missing")
    positions = np.flatnonzero(~missing)
    values = s.to_numpy(dtype=object)
    if not col.is_discrete:
        x = np.full(len(positions), np.nan)
        bad = []
        for k, i in enumerate(positions):
            try:
                x[k] = float(values[i])
            except (TypeError, ValueError):
                bad.append(i)
        if bad:
            more = f"; {len(bad) - 1} more ({_cells(s, bad[1:])})" if len(bad) > 1 else ""
            raise TableError(
                f"column {name!r}, row {bad[0] + 1}: non-numeric value {_show(values[bad[0]])} in a {col.type} "
                f"column{more}; correct {'it' if len(bad) == 1 else 'them'}, or {remedies.non_numeric}"
            )
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
    drop: Sequence[str] = (),
    non_numeric_as_missing: bool = False,
) -> tuple[pd.DataFrame, Schema]:
    """Read, infer (a schema file acting as overrides) and validate a table; returns (clean table, schema).

    A schema file may list only the columns it overrides: the others are inferred, unless `ignore_extra`, which
    keeps only the columns it lists (and the targets). `drop` leaves columns out before anything else;
    `non_numeric_as_missing` reads the non-numeric cells of numeric columns as missing (with a `TableWarning`
    naming them) instead of refusing the table. Targets may be empty when the schema file names them.
    """
    df = read_table(path)
    overrides = load_schema_file(schema_path) if schema_path is not None else None
    entries, file_targets = _parse_overrides(overrides)
    target_names = [str(t) for t in targets] if targets else file_targets
    df = _drop_columns(df, drop, target_names, entries)
    _check_names(df.columns, target_names, entries)  # against all columns, so the message lists them all
    if ignore_extra:
        if overrides is None:
            raise TableError("ignoring extra columns needs a schema file (--schema) that lists the columns to keep")
        listed = set(entries) | set(target_names)
        df = df[[c for c in df.columns if c in listed]]
    if non_numeric_as_missing:
        df = read_non_numeric_as_missing(df, overrides)
    schema = infer_schema(df, targets, overrides)
    out, _ = validate_table(df, schema, min_rows=min_rows)
    return out, schema


def _drop_columns(
    df: pd.DataFrame, drop: Sequence[str], targets: Sequence[str], entries: Mapping[str, Any]
) -> pd.DataFrame:
    for name in drop:
        if name not in df.columns:
            raise TableError(f"cannot drop column {name!r}: not in the data (columns: {_list(df.columns)})")
        if name in targets:
            raise TableError(f"cannot drop column {name!r}: it is a target")
        if name in entries:
            raise TableError(f"cannot drop column {name!r}: it is listed in the schema")
    return df.drop(columns=list(drop))


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


def _cells(s: pd.Series, positions: Sequence[int]) -> str:
    """1-based data rows with their values: "row 17: 'heavy'", or "rows 17 ('heavy'), 40 ('?') and 3 more"."""
    values = s.to_numpy(dtype=object)
    if len(positions) == 1:
        return f"row {positions[0] + 1}: {_show(values[positions[0]])}"
    shown = ", ".join(f"{i + 1} ({_show(values[i])})" for i in positions[:SHOWN_CELLS])
    more = f" and {len(positions) - SHOWN_CELLS} more" if len(positions) > SHOWN_CELLS else ""
    return f"rows {shown}{more}"
