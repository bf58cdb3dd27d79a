"""Reading user tables (CSV / Parquet) into pandas: shared by training and the service's batch scoring.

Needs pandas (and pyarrow for Parquet) only. Every problem is a `TableError` with a one-line
message naming the file and, where it applies, the line or column.

Rows never move. pandas, given a line with more fields than the header, silently takes the first column as the
index (a trailing comma on every line, a common export format, shifts every value one column to the left), and
given fewer it fills the end with missing values. So a CSV is first scanned record by record (the csv module, with
the quoting rules pandas uses) and its shape checked against the header: a field beyond the header that is empty
on every line that has it (the trailing comma) is an empty unnamed column, dropped with a `TableWarning`; any other
line whose field count differs from the header's is refused with its line number. Only then does pandas parse the
file, told the exact columns and never to invent an index, and the two parsers must agree on the row count.

Limits (the service passes them; training does not): `max_bytes` bounds the decompressed size (a 200 KB .csv.gz
can hold gigabytes), `max_rows` the data rows, checked while scanning (CSV) or from the file's metadata (Parquet)
before anything is loaded.
"""

from __future__ import annotations

import csv
import gzip
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hhvaem.model.preprocessing import is_missing

# Cell texts read as missing; `is_missing` additionally ignores case and surrounding blanks.
MISSING_TOKENS = ("", "NA", "NaN", "nan", "null", "None")
MAX_COLUMNS = 10_000
MAX_FIELD_CHARS = 1 << 20  # one cell; the csv module's default (128 KiB) is smaller than some real cells


class TableError(ValueError):
    """A table or schema that cannot be used; the one-line message names the column (and row)."""


class TableWarning(UserWarning):
    """Something about a table that was read anyway (e.g. an empty trailing column dropped), in one line."""


def read_table(
    path: str | Path,
    max_rows: int | None = None,
    max_bytes: int | None = None,
    verbatim: Callable[[str], bool] | None = None,
) -> pd.DataFrame:
    """Read a .csv / .csv.gz / .parquet file; missing cells become NaN and column names str. See the module
    docstring for how ragged CSV lines and the limits are handled; notes come as `TableWarning`s.

    `verbatim(name)` true: that CSV column is kept as its text exactly as the file has it (`007` stays `007`,
    `NA` and an empty cell stay text, nothing is stripped): batch scoring passes the columns the model does not
    use through untouched this way. The header's names are stripped of surrounding blanks."""
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
        df = _read_csv(p, max_rows, max_bytes, verbatim) if kind == "csv" else _read_parquet(p, max_rows, max_bytes)
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
    return _normalise(df, verbatim)


def read_table_with_notes(path: str | Path, **limits: Any) -> tuple[pd.DataFrame, list[str]]:
    """`read_table`, with its `TableWarning`s returned as text instead of shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TableWarning)
        df = read_table(path, **limits)
    notes = [str(w.message) for w in caught if issubclass(w.category, TableWarning)]
    for w in caught:  # anything else goes on as it would have
        if not issubclass(w.category, TableWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return df, notes


def normalise_frame(df: pd.DataFrame) -> pd.DataFrame:
    """`read_table`'s normalisation (column names as str, plain float/int columns, stripped text with NaN for missing
    cells) of a frame read by other means: a slice of a Parquet file read by a distributed worker."""
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    return _normalise(df)


class _Counted(io.RawIOBase):
    """A binary stream that refuses to deliver more than `limit` bytes (decompressed, when over gzip)."""

    def __init__(self, raw: Any, limit: int | None, name: str):
        self.raw, self.limit, self.name, self.count = raw, limit, name, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise TableError(f"{self.name}: larger than {_human(self.limit)} once decompressed (the limit)")
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


def _open_text(p: Path, max_bytes: int | None) -> io.TextIOWrapper:
    raw = gzip.open(p, "rb") if p.name.lower().endswith(".gz") else open(p, "rb")  # noqa: SIM115 - wrapped below
    counted = io.BufferedReader(_Counted(raw, max_bytes, p.name))
    return io.TextIOWrapper(counted, encoding="utf-8-sig", newline="")


def _scan_csv(p: Path, max_rows: int | None, max_bytes: int | None) -> tuple[list[str], int, int, int, int]:
    """(header, fields per line of the widest line, data rows, lines with empty extra fields, blank lines at the
    end of a one-column table), or TableError. Blank lines at the end of a file are never rows; inside a one-column
    table a blank line is a missing cell."""
    csv.field_size_limit(MAX_FIELD_CHARS)
    with _open_text(p, max_bytes) as text:
        reader = csv.reader(text)  # RFC 4180: a blank before a field is part of it (a quote must open the field)
        header = next((r for r in reader if r), None)
        if header is None:
            raise pd.errors.EmptyDataError
        width = len(header)
        while width > 1 and not header[width - 1].strip():  # trailing empty names: checked like extra fields
            width -= 1
        if width > MAX_COLUMNS:
            raise TableError(f"{p.name}: {width} columns (at most {MAX_COLUMNS})")
        widest, rows, padded, trailing = len(header), 0, 0, 0
        for record in reader:
            if not record and width > 1:
                continue  # a blank line, skipped (pandas too); in a one-column table it is a missing cell
            trailing = trailing + 1 if not record else 0
            rows += 1
            if max_rows is not None and rows > max_rows:
                raise TableError(f"{p.name}: more than {max_rows:,} data rows (the limit)")
            if len(record) != width and record:
                _check_line(p.name, record, width, reader.line_num)
                padded += len(record) > width
            widest = max(widest, len(record))
    return [h.strip() for h in header[:width]], widest, rows - trailing, padded, trailing


def _check_line(name: str, record: list[str], width: int, line: int) -> None:
    """A line whose field count differs from the header's is fine only if what is beyond the header is empty."""
    if len(record) > width and all(not f.strip() for f in record[width:]):
        return
    unquoted = "; a value with a comma needs quotes" if len(record) > width else ""
    raise TableError(
        f"{name}: line {line} has {len(record)} field{'s' if len(record) != 1 else ''} but the header names "
        f"{width} columns{unquoted} "
        "(nothing was read: values would land in the wrong columns)"
    )


def _read_csv(p: Path, max_rows: int | None, max_bytes: int | None, verbatim=None) -> pd.DataFrame:
    header, widest, rows, padded, trailing = _scan_csv(p, max_rows, max_bytes)
    _check_unique([n for n in header if n], p.name)
    missing = [i + 1 for i, n in enumerate(header) if not n]
    if missing:
        raise TableError(f"{p.name}: column {missing[0]} has no name in the header")
    extra = [f"\0extra{i}" for i in range(widest - len(header))]  # names no header can have
    kept = [n for n in header if verbatim is not None and verbatim(n)]
    df = pd.read_csv(
        p,
        header=0,
        names=header + extra,
        usecols=range(len(header)),
        index_col=False,
        dtype=dict.fromkeys(kept, str) or None,
        na_values={n: list(MISSING_TOKENS) for n in header if n not in kept},
        keep_default_na=False,
        skipinitialspace=False,
        skip_blank_lines=len(header) > 1,
        encoding="utf-8-sig",
    )
    if trailing and len(df) == rows + trailing:
        df = df.iloc[:rows]  # blank lines at the end of a one-column table: not rows
    if len(df) != rows:  # the two parsers disagree (unusual quoting): refuse rather than guess
        raise TableError(f"{p.name}: the rows cannot be told apart reliably ({rows} lines, {len(df)} rows read)")
    if widest > len(header):
        lines = f"{padded} data line{'s' if padded != 1 else ''}"
        warnings.warn(
            TableWarning(
                f"{p.name}: {lines} end with empty fields beyond the header's {len(header)} columns "
                "(e.g. a trailing comma); they were dropped"
            ),
            stacklevel=3,
        )
    return df


def _read_parquet(p: Path, max_rows: int | None, max_bytes: int | None) -> pd.DataFrame:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(p).metadata
    if max_rows is not None and meta.num_rows > max_rows:
        raise TableError(f"{p.name}: {meta.num_rows:,} data rows, more than {max_rows:,} (the limit)")
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if max_bytes is not None and size > max_bytes:
        raise TableError(f"{p.name}: larger than {_human(max_bytes)} once decompressed (the limit)")
    if meta.num_columns > MAX_COLUMNS:
        raise TableError(f"{p.name}: {meta.num_columns} columns (at most {MAX_COLUMNS})")
    return pd.read_parquet(p)


def _check_unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise TableError(f"{where}: column {n!r} appears more than once in the header")
        seen.add(n)


def _normalise(df: pd.DataFrame, verbatim: Callable[[str], bool] | None = None) -> pd.DataFrame:
    """Plain float/int columns for numbers; the rest as stripped text with NaN for missing cells. A number too
    large for a float (a 400-digit integer) becomes infinity, which the engine refuses for that row. A column of
    TRUE/FALSE only becomes 1.0/0.0 and is listed in `attrs["boolean_columns"]` (a consumer that expects numbers
    there refuses it: `check_columns`). `verbatim` columns of text are left as they are."""
    out = {}
    booleans = []
    for name in df.columns:
        s = df[name]
        if verbatim is not None and verbatim(name) and not pd.api.types.is_numeric_dtype(s):
            out[name] = s.astype(object)
            continue
        if pd.api.types.is_bool_dtype(s):
            booleans.append(name)
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
            out[name] = _numeric_or_text(obj)
    # Positional, never by label: the cells stay on their rows whatever index the reader produced.
    table = pd.DataFrame({k: v.reset_index(drop=True) for k, v in out.items()})
    table.attrs["boolean_columns"] = booleans
    return table


def _numeric_or_text(obj: pd.Series) -> pd.Series:
    """A text column that is numbers only (e.g. " 3" or parquet strings) as float64, else the text itself."""
    try:
        numbers = pd.to_numeric(obj)
    except (TypeError, ValueError):
        return obj
    try:
        return numbers.astype("float64")
    except OverflowError:  # integers beyond float range: parse each as text (which gives +-inf)
        return obj.map(lambda v: v if pd.isna(v) else float(str(v)))


def _cell_missing(v: Any) -> bool:
    if isinstance(v, str):
        return is_missing(v)
    return v is None or (np.ndim(v) == 0 and bool(pd.isna(v)))


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
