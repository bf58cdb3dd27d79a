"""A table cut into fixed row ranges (partitions) for distributed batch scoring, and their results on disk.

No Ray here (numpy, pandas, pyarrow): `app/engine/distributed.py` runs the partitions on a Ray cluster; this module
plans them, reads one, turns one's scored frame into Arrow with the output's fixed schema, and tells which
partitions an output directory already holds.

Why fixed row ranges rather than whatever blocks a reader produces: every row is scored from its own seed (the
job's seed and the row's content, `app.engine.seeds`), so a row's numbers are those it gets scored in one process,
whatever the partition or chunk it falls in, the cluster's size or the order in which workers take partitions; the
fixed ranges make resumption and reports exact. The same ranges name the partitions a rerun skips and the ones
a failure report lists. Every result row carries `row`, its 1-based data row number in the whole input (files in
sorted order), so the input's row identity survives the shuffle of partitions across files and workers.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hhvaem.app.engine.engine import Engine
from hhvaem.app.engine.scoring import score_frame
from hhvaem.model.io.tables import MAX_COLUMNS, TableError, normalise_frame, read_table

ROW = "row"  # the 1-based data row number of the whole input, first column of every result
IMPUTATION = "imputation"
PARQUET = (".parquet", ".pq")
JOB_FILE = "_hhvaem_job.json"  # readers of the directory skip names starting with "_"


@dataclass(frozen=True)
class Partition:
    """Rows `first` .. `first + rows - 1` (0-based) of the input; for Parquet, where they lie: (file, start, rows)."""

    index: int
    first: int
    rows: int
    pieces: tuple[tuple[str, int, int], ...] = ()

    def describe(self) -> str:
        return f"partition {self.index} (rows {self.first + 1}-{self.first + self.rows})"


@dataclass
class TablePlan:
    """The input, cut into partitions. `frame` holds a CSV input (read whole, by the project's reader)."""

    files: list[str]
    total_rows: int
    schema: pa.Schema
    partitions: list[Partition]
    frame: pd.DataFrame | None = None

    spans: list[tuple[str, int]] = field(default_factory=list)  # (file, data rows)

    def fingerprint(self) -> list[list[Any]]:
        """What the partitions depend on: the files and their row counts (a file repaired in place still fits)."""
        return [[f, n] for f, n in self.spans]


def input_files(source: str | Path) -> list[str]:
    """A CSV or Parquet file, a directory of Parquet files (recursively) or a glob of them; sorted, absolute."""
    text = str(source)
    if any(ch in text for ch in "*?["):
        files = sorted(str(Path(p).resolve()) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise TableError(f"{text}: no file matches")
    elif Path(text).is_dir():
        files = sorted(
            str(p.resolve()) for p in Path(text).rglob("*") if p.is_file() and p.name.lower().endswith(PARQUET)
        )
        if not files:
            raise TableError(f"{text}: no .parquet file in this directory")
    elif Path(text).is_file():
        return [str(Path(text).resolve())]
    else:
        raise TableError(f"{text}: file not found")
    other = [f for f in files if not f.lower().endswith(PARQUET)]
    if other:
        raise TableError(f"{Path(other[0]).name}: a directory or glob must hold Parquet files only (one CSV: name it)")
    return files


def plan_table(
    source: str | Path,
    partition_rows: int,
    max_rows: int | None = None,
    verbatim: Callable[[str], bool] | None = None,
) -> TablePlan:
    """Cuts the input into partitions of `partition_rows` rows (the last one shorter), reading Parquet metadata only;
    a CSV file is read whole by `read_table` (its checks: ragged lines, trailing commas, limits), the columns
    `verbatim` names kept as the file's text (an id `007` stays `007`). TableError names the file and the
    problem."""
    files = input_files(source)
    if len(files) == 1 and not files[0].lower().endswith(PARQUET):
        frame = read_table(files[0], max_rows=max_rows, verbatim=verbatim)
        spans = [(files[0], len(frame))]
        schema = pa.Schema.from_pandas(frame, preserve_index=False)
    else:
        frame, spans, schemas = None, [], []
        for f in files:
            try:
                meta = pq.read_metadata(f)
                schemas.append(meta.schema.to_arrow_schema())
            except Exception as e:  # noqa: BLE001 - any unreadable footer is the user's file, in one line
                raise TableError(f"{Path(f).name}: cannot read parquet file ({str(e).splitlines()[0][:200]})") from None
            if meta.num_columns > MAX_COLUMNS:
                raise TableError(f"{Path(f).name}: {meta.num_columns} columns (at most {MAX_COLUMNS})")
            spans.append((f, meta.num_rows))
        try:
            schema = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise TableError(f"{Path(source).name}: the files' columns do not agree ({e})") from None
    total = sum(n for _, n in spans)
    if total == 0:
        raise TableError(f"{Path(str(source)).name}: no data rows")
    if max_rows is not None and total > max_rows:
        raise TableError(f"{Path(str(source)).name}: {total:,} data rows, more than {max_rows:,} (the limit)")
    if ROW in schema.names:
        raise TableError(f"{Path(str(source)).name}: has a column named {ROW!r}, which the results use for row numbers")
    return TablePlan(files, total, schema, _cut(spans, partition_rows, total), frame, spans)


def _cut(spans: list[tuple[str, int]], size: int, total: int) -> list[Partition]:
    """Global row ranges [k*size, (k+1)*size), each with the (file, start, rows) pieces it covers."""
    starts = np.cumsum([0] + [n for _, n in spans])
    partitions = []
    for index, first in enumerate(range(0, total, size)):
        last = min(first + size, total)
        pieces = []
        for (f, n), begin in zip(spans, starts[:-1]):
            lo, hi = max(first, int(begin)), min(last, int(begin) + n)
            if lo < hi:
                pieces.append((f, lo - int(begin), hi - lo))
        partitions.append(Partition(index, first, last - first, tuple(pieces)))
    return partitions


def read_partition(plan_schema: pa.Schema, partition: Partition) -> pa.Table:
    """A Parquet partition's rows (only the row groups it covers are read), in the plan's schema, `row` in front."""
    tables = []
    for f, start, rows in partition.pieces:
        pf = pq.ParquetFile(f)
        groups, offset, skip = [], 0, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset + n > start and offset < start + rows:
                if not groups:
                    skip = start - offset  # rows of the first group read that lie before the piece
                groups.append(g)
            offset += n
        piece = pf.read_row_groups(groups).slice(skip, rows)
        tables.append(_conform(piece, plan_schema))
    table = pa.concat_tables(tables)
    return with_rows(table, partition)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def with_rows(table: pa.Table, partition: Partition) -> pa.Table:
    rows = np.arange(partition.first + 1, partition.first + partition.rows + 1, dtype=np.int64)
    return table.add_column(0, ROW, pa.array(rows))


def frame_partition(plan: TablePlan, partition: Partition) -> pa.Table:
    """A CSV input's partition, from the frame `read_table` produced."""
    assert plan.frame is not None
    part = plan.frame.iloc[partition.first : partition.first + partition.rows]
    return with_rows(pa.Table.from_pandas(part, schema=plan.schema, preserve_index=False), partition)


# ---- scoring one partition -------------------------------------------------------------------------------------
def output_schema(
    engine: Engine, input_schema: pa.Schema, operation: str, imputations: int | None = None, plausibility: bool = False
) -> tuple[pa.Schema, list[dict]]:
    """The result's columns and types, found by scoring one row with every cell missing (every hole filled, every
    added column present), and the notes about the table (columns the model does not know). Columns the model does
    not know keep the input's type; numbers are float64, anything else text."""
    probe = pa.Table.from_pylist([{}], schema=input_schema)
    frame = normalise_frame(probe.to_pandas())
    samples = max(2, imputations or 2)
    out, errors = score_frame(
        engine, frame, operation, samples, 1, 0, imputations=imputations, plausibility=plausibility
    )
    if any(e["row"] is not None for e in errors):
        raise RuntimeError(f"the model cannot score an empty row: {errors[0]}")
    known = {c.name for c in engine.schema.columns}
    fields = [pa.field(ROW, pa.int64())]
    for name in out.columns:
        if name == IMPUTATION:
            fields.append(pa.field(name, pa.int64()))
        elif name in input_schema.names and name not in known:
            fields.append(input_schema.field(name))
        elif name != "error" and pd.api.types.is_numeric_dtype(out[name]):
            fields.append(pa.field(name, pa.float64()))
        else:
            fields.append(pa.field(name, pa.string()))
    return pa.schema(fields), [e for e in errors if e["row"] is None]


def score_partition(
    engine: Engine, table: pa.Table, schema: pa.Schema, options: dict[str, Any]
) -> tuple[pa.Table, list[dict]]:
    """Scores one whole partition (`table`: `row` first, consecutive rows) with `score_frame` (each row seeded by
    the job's seed and its own content); (the result in `schema`, its errors with the whole input's row numbers)."""
    rows = table.column(ROW).to_numpy()
    first = int(rows[0]) - 1
    if not np.array_equal(rows, np.arange(first + 1, first + 1 + len(rows))):
        raise ValueError(f"rows {rows[0]}..{rows[-1]} are not one partition's consecutive rows")
    data = table.drop_columns([ROW])
    out, errors = score_frame(
        engine,
        normalise_frame(data.to_pandas()),
        options["operation"],
        options.get("samples"),
        options["chunk_rows"],
        int(options.get("seed", 0)),
        imputations=options.get("imputations"),
        plausibility=bool(options.get("plausibility", False)),
        calibrated=bool(options.get("calibrated", True)),
    )
    errors = [{**e, "row": e["row"] + first} for e in errors if e["row"] is not None]
    copies = len(out) // len(rows)  # the imputations, row-major
    passthrough = set(options.get("passthrough", ()))
    arrays = []
    for column in schema:
        if column.name == ROW:
            arrays.append(pa.array(np.repeat(rows, copies)))
        elif column.name in passthrough:  # the input's own cells, untouched (an identifier keeps its type)
            arrays.append(data.column(column.name).take(np.repeat(np.arange(len(rows)), copies)).cast(column.type))
        else:
            arrays.append(_arrow_column(out[column.name] if column.name in out else None, column, len(out)))
    return pa.Table.from_arrays(arrays, schema=schema), errors


def _arrow_column(values: pd.Series | None, field: pa.Field, n: int) -> pa.Array:
    if values is None:
        return pa.nulls(n, field.type)
    if pa.types.is_string(field.type):
        return pa.array([None if _missing(v) else str(v) for v in values], type=field.type)
    if pa.types.is_floating(field.type) or field.name == IMPUTATION:
        return pa.array(pd.to_numeric(values).astype("float64"), type=pa.float64(), from_pandas=True).cast(field.type)
    return pa.Array.from_pandas(values, type=field.type)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA


# ---- what an output directory holds ----------------------------------------------------------------------------
def claim_output(output: Path, job: dict[str, Any]) -> None:
    """Records what `output` holds the results of (`job`: model, input, options), or refuses an output that holds
    another job's results: a rerun may only add the partitions that the same job has not written yet."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / JOB_FILE
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in set(before) | set(job) if before.get(k) != job.get(k))
        if changed:
            raise TableError(
                f"{output}: holds the results of another job (it differs in {', '.join(changed)}); "
                "choose another output, or delete this one"
            )
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job, indent=1))
    tmp.replace(path)


def result_files(output: str | Path) -> list[Path]:
    return sorted(p for p in Path(output).glob("*.parquet") if not p.name.startswith(("_", ".")))


def written_partitions(output: Path, plan: TablePlan, partition_rows: int, copies: int = 1) -> set[int]:
    """The partitions `output` holds in full. A file whose footer cannot be read (a write cut short) is deleted: its
    partition is scored again."""
    counts: dict[int, int] = {}
    for path in result_files(output):
        try:
            rows = pq.read_table(path, columns=[ROW]).column(ROW).to_numpy()
        except Exception:  # noqa: BLE001 - a torn file is not a result
            path.unlink(missing_ok=True)
            continue
        for k, n in zip(*np.unique((rows - 1) // partition_rows, return_counts=True)):
            counts[int(k)] = counts.get(int(k), 0) + int(n)
    expected = {p.index: p.rows * copies for p in plan.partitions}
    doubled = [k for k, n in counts.items() if n > expected.get(k, 0)]
    if doubled:
        raise TableError(f"{output}: partition {doubled[0]} is there more than once (not this job's files?)")
    return {k for k, n in counts.items() if n == expected.get(k)}


def read_results(output: str | Path) -> pd.DataFrame:
    """Every result file, in row order (imputations of a row stay together, in order)."""
    tables = [pq.read_table(p) for p in result_files(output)]
    if not tables:
        raise TableError(f"{output}: no results")
    table = pa.concat_tables(tables).sort_by(
        [(ROW, "ascending")] + ([(IMPUTATION, "ascending")] if IMPUTATION in tables[0].column_names else [])
    )
    return table.to_pandas()
