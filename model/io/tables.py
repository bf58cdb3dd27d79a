"""Reading user tables (CSV / Parquet) into pandas: shared by training and the service's batch scoring.

Needs pandas (and pyarrow for Parquet) only. Every problem is a `TableError` with a one-line
message naming the file and, where it applies, the column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hhvaem.model.preprocessing import is_missing

# Cell texts read as missing; `is_missing` additionally ignores case and surrounding blanks.
MISSING_TOKENS = ("", "NA", "NaN", "nan", "null", "None")


class TableError(ValueError):
    """A table or schema that cannot be used; the one-line message names the column (and row)."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a .csv / .csv.gz / .parquet file; missing cells become NaN and column names str."""
    p = Path(path)
    lower = p.name.lower()
    if lower.endswith((".csv", ".csv.gz")):
        kind = "csv"
    elif lower.endswith((".parquet", ".pq")):
        kind = "parquet"
    else:
        raise TableError(f"{p.name}: unsupported file type (expected .csv, .csv.gz or .parquet)")
    if not p.exists():
        raise TableError(f"{p}: file not found")
    if not p.is_file():
        raise TableError(f"{p}: not a regular file")
    try:
        if kind == "csv":
            # header=None on the first line only: pandas silently renames duplicate headers ("a" -> "a.1").
            raw_header = pd.read_csv(p, nrows=1, header=None, keep_default_na=False, dtype=str)
            _check_unique([n for n in (str(v).strip() for v in raw_header.iloc[0].tolist()) if n], p.name)
            df = pd.read_csv(p, na_values=list(MISSING_TOKENS), keep_default_na=False, skipinitialspace=True)
        else:
            df = pd.read_parquet(p)
    except TableError:
        raise
    except pd.errors.EmptyDataError:
        raise TableError(f"{p.name}: file is empty") from None
    except Exception as e:  # noqa: BLE001 - any reader failure is the user's file, reported in one line
        raise TableError(f"{p.name}: cannot read {kind} file ({_one_line(e)})") from None
    df.columns = [str(c).strip() for c in df.columns]
    _check_unique(list(df.columns), p.name)
    if df.shape[1] == 0:
        raise TableError(f"{p.name}: no columns")
    if df.shape[0] == 0:
        raise TableError(f"{p.name}: no data rows (only a header)")
    return _normalise(df)


def _check_unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise TableError(f"{where}: column {n!r} appears more than once in the header")
        seen.add(n)


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Plain float/int columns for numbers; the rest as stripped text with NaN for missing cells."""
    out = {}
    for name in df.columns:
        s = df[name]
        if pd.api.types.is_bool_dtype(s) or (
            pd.api.types.is_numeric_dtype(s) and isinstance(s.dtype, pd.api.extensions.ExtensionDtype)
        ):
            # Nullable/boolean extension dtypes -> float64 so NaN is the only missing marker.
            out[name] = s.astype("float64")
        elif pd.api.types.is_numeric_dtype(s):
            out[name] = s
        else:
            obj = s.astype(object)
            obj = obj.map(lambda v: np.nan if _cell_missing(v) else (v.strip() if isinstance(v, str) else str(v)))
            try:
                # A text column that is numbers only (e.g. " 3" or parquet strings) is numeric.
                out[name] = pd.to_numeric(obj).astype("float64")
            except (TypeError, ValueError):
                out[name] = obj
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def _cell_missing(v: Any) -> bool:
    if isinstance(v, str):
        return is_missing(v)
    return v is None or (np.ndim(v) == 0 and bool(pd.isna(v)))


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
