"""Batch scoring of a whole table, in chunks: shared by `POST /v1/batch-jobs` and `hhvaem score`.

A bad row does not sink the job: its cells are reported with the 1-based data row number
(the row after the header) and the reason, the row is left unscored (its `error` column says
why), and the rest of its chunk is scored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from hhvaem.app.engine.engine import Engine
from hhvaem.app.engine.errors import InputError
from hhvaem.app.engine.queries import ImputeQuery, MultipleImputeQuery, PredictQuery
from hhvaem.model.io.contract import CHUNK_ROWS
from hhvaem.model.io.tables import TableError

OPERATIONS = ("impute", "predict", "both")


def passthrough(engine: Engine) -> Callable[[str], bool]:
    """The input columns a result carries as they came (`read_table(verbatim=...)`): those the model does not use."""
    known = {c.name for c in engine.schema.columns}
    return lambda name: name not in known


def check_columns(engine: Engine, df: pd.DataFrame) -> None:
    """TableError when `df` cannot be scored faithfully: none of the model's columns (a wrong file, or a separator
    other than the comma: every row would be "scored" from nothing), an input column named like a column the result
    adds (it would be overwritten), or TRUE/FALSE where the model expects numbers (read as 1/0 otherwise)."""
    _check_added_names(engine, df)
    numeric = {c.name for c in engine.schema.columns if not c.is_discrete}
    flags = [n for n in df.attrs.get("boolean_columns", ()) if n in numeric]
    if flags:
        raise TableError(
            f"column {flags[0]!r} holds TRUE/FALSE, but the model's {flags[0]!r} is a number: write it as numbers "
            "(e.g. 1 and 0) if that is what it means"
        )
    if set(df.columns) & {c.name for c in engine.schema.columns}:
        return
    expected = ", ".join(c.name for c in engine.schema.features[:20]) + (
        ", ..." if len(engine.schema.features) > 20 else ""
    )
    header = ", ".join(repr(str(c)[:40]) for c in list(df.columns)[:5])
    separator = next((s for s in (";", "\t", "|") if any(s in str(c) for c in df.columns)), None)
    hint = f"; is the file separated by {separator!r} instead of commas?" if separator else ""
    raise TableError(f"none of the columns ({header}) is one of the model's: expected {expected}{hint}")


# Columns a result may add besides `<column>__...`: the row's error, the imputation's number, its unusual values.
ADDED = ("error", "imputation", "unusual")


def _check_added_names(engine: Engine, df: pd.DataFrame) -> None:
    rank = {c.name: i for i, c in enumerate(engine.schema.columns)}
    for name in df.columns:
        if name in rank:
            continue
        if name in ADDED or _base(name, rank) is not None:
            raise TableError(
                f"column {name!r} has the name of a column the result adds ({', '.join(ADDED)}, and "
                "<model column>__<figure> such as fly_ash__std): rename it, or it would be overwritten"
            )


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    rows = df.astype(object).where(pd.notna(df), None).to_dict("records")
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


def _columns(engine: Engine, df: pd.DataFrame) -> list[str]:
    known = {c.name for c in engine.schema.columns}
    return [c for c in df.columns if c in known]


def score_frame(
    engine: Engine,
    df: pd.DataFrame,
    operation: str = "both",
    samples: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    seed: int = 0,
    progress: Callable[[int, int, list[dict]], None] | None = None,
    imputations: int | None = None,
    plausibility: bool = False,
    calibrated: bool = True,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Scores `df`; returns (result table, errors [{row, column, reason}]).

    The result keeps the input's columns (holes filled for impute) and adds, per imputed numeric
    column `<col>__std` (and `<col>__p_zero` for a zero_positive one), per discrete one `<col>__prob`; per target
    `<t>__mean/__std/__q05/__q50/__q95` (and `<t>__p_zero`) or `<t>__label` and `<t>__p_<category>`; and `error`
    for rows that could not be scored.
    `progress(done, total, new_errors)` is called after every chunk.

    `imputations=M` (impute or both): multiple imputation. The result then holds each input row M times in a row,
    with `imputation` (1..M) in front and its holes drawn from the posterior (`MultipleImputeQuery`, a proper draw
    per imputation); `groupby("imputation")` gives the M completed tables. No `__std` / `__prob` columns (the
    spread is between the imputations); the prediction columns and `error` are the same in each copy of a row.

    `plausibility`: each observed feature checked against the row's others (app/engine/plausibility.py): per
    feature `<col>__plausibility` (p; empty where the row has no value) and `unusual` (the features below the
    default threshold, comma-separated). `calibrated=False`: the model's raw quantiles, not its conformal
    correction (docs/calibration.md).
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r} (expected one of {', '.join(OPERATIONS)})")
    if imputations is not None and operation == "predict":
        raise ValueError("imputations: multiple imputation needs operation impute or both")
    if plausibility and imputations is not None and operation != "both":
        raise ValueError("plausibility: with multiple imputation it needs operation both (the prediction checks)")
    check_columns(engine, df)
    extra = sorted(set(df.columns) - {c.name for c in engine.schema.columns})
    errors: list[dict[str, Any]] = []
    if extra:
        errors.append({"row": None, "column": extra[0], "reason": "not a column of the model; ignored"})
    targets = {c.name for c in engine.schema.targets}
    given = [t for t in targets if t in df.columns]
    if given and operation in ("predict", "both"):
        why = "the model's target: passed through as it is; the predictions do not read it"
        errors.append({"row": None, "column": given[0], "reason": why})
    records = _records(df[_columns(engine, df)])
    out = df.copy()
    out["error"] = ""
    added: dict[str, list] = {}
    tables = [df.copy() for _ in range(imputations or 0)]  # one completed copy per imputation
    total = len(records)
    if plausibility:  # every feature's column, so that every chunk (and a Ray partition's schema) has them all
        for c in engine.schema.features:  # numbers (NaN where not observed), also in a probe with no values
            added[f"{c.name}__plausibility"] = [np.nan] * len(out)
        out["unusual"] = ""
    for start in range(0, total, chunk_rows):
        chunk = records[start : start + chunk_rows]
        good = list(range(len(chunk)))
        new_errors: list[dict[str, Any]] = []
        try:
            engine.encode_rows(chunk, strict=False)
        except InputError as e:
            bad = {err.row for err in e.errors}
            for err in e.errors:
                new_errors.append({"row": start + err.row + 1, "column": err.field, "reason": err.reason})
                out.iat[start + err.row, out.columns.get_loc("error")] = f"{err.field}: {err.reason}"
            good = [i for i in good if i not in bad]
        if good:
            rows = [chunk[i] for i in good]
            index = [start + i for i in good]
            prepared = []
            # the checks ride on the first plain impute or predict query (the multiple imputation has none)
            check_impute = plausibility and imputations is None and operation in ("impute", "both")
            check_predict = plausibility and not check_impute
            if imputations is not None:
                prepared.append(MultipleImputeQuery(rows, imputations, samples, seed, False).prepare(engine))
            elif operation in ("impute", "both"):
                query = ImputeQuery(
                    rows, samples, seed=seed, strict=False, calibrated=calibrated, plausibility=check_impute
                )
                prepared.append(query.prepare(engine))
            if operation in ("predict", "both"):  # a target column passes through; the prediction never reads it
                unknown = [{k: v for k, v in r.items() if k not in targets} for r in rows]
                query = PredictQuery(
                    unknown, samples, seed=seed, strict=False, calibrated=calibrated, plausibility=check_predict
                )
                prepared.append(query.prepare(engine))
            results = engine.run(prepared)
            if plausibility:
                _write_plausibility(out, added, index, results[0] if check_impute else results[-1])
            if imputations is not None:
                _write_draws(tables, index, results[0])
            elif operation in ("impute", "both"):
                _write_imputed(engine, out, added, index, results[0])
            if operation in ("predict", "both"):
                _write_predicted(engine, added, index, results[-1], len(out))
        errors.extend(new_errors)
        if progress:
            progress(min(start + chunk_rows, total), total, new_errors)
    for name, values in added.items():
        out[name] = values
    result = _long(tables, out, added) if imputations is not None else out
    return _integer_counts(engine, _arranged(engine, df, result)), errors


def _arranged(engine: Engine, df: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The result's columns in a fixed order: any leading bookkeeping (`imputation`), the input's columns as they
    came, the model's columns the input lacked (filled in; features, then targets), the added `<column>__...`
    columns (by their column's place in the schema, then `_SUFFIXES`), then `unusual` and `error`."""
    rank = {c.name: i for i, c in enumerate(engine.schema.columns)}
    names = list(table.columns)
    inputs = [c for c in df.columns if c in names]
    missing = [c.name for c in engine.schema.columns if c.name in names and c.name not in df.columns]
    bases = {c: _base(c, rank) for c in names if c not in df.columns and c not in rank}
    added = sorted(
        (c for c, b in bases.items() if b is not None),
        key=lambda c: (rank[bases[c]], _SUFFIXES.index(_suffix(c[len(bases[c]) + 2 :])), names.index(c)),
    )
    tail = [c for c in ("unusual", "error") if c in names]
    placed = {*inputs, *missing, *added, *tail}
    front = [c for c in names if c not in placed]
    return table.reindex(columns=front + inputs + missing + added + tail)


# The added columns of one schema column, in this order (quantiles and class probabilities as written: ascending
# quantiles, the categories' order).
_SUFFIXES = ("label", "mean", "std", "prob", "q", "p_", "plausibility")


def _suffix(suffix: str) -> str:
    return next((s for s in _SUFFIXES if suffix == s or (s in ("q", "p_") and suffix.startswith(s))), "p_")


def _base(name: str, rank: dict[str, int]) -> str | None:
    """The schema column an added column belongs to: the longest prefix before a `__` that names one."""
    parts = name.split("__")
    for i in range(len(parts) - 1, 0, -1):
        if "__".join(parts[:i]) in rank:
            return "__".join(parts[:i])
    return None


def _integer_counts(engine: Engine, table: pd.DataFrame) -> pd.DataFrame:
    """Count columns (and a count target's quantiles) as integers, as the user wrote them (7, not 7.0), where every
    value in them is whole (a rejected row may keep a bad 2.5)."""
    counts = [c.name for c in engine.schema.columns if c.type == "count"]
    quantiles = [q for q in table.columns if any(q.startswith(f"{t}__q") for t in counts)]
    for name in [c for c in counts if c in table.columns] + quantiles:
        values = pd.to_numeric(table[name], errors="coerce")
        given = table[name].notna()
        if given.any() and values[given].notna().all() and (values[given] == values[given].round()).all():
            table[name] = values.astype("Int64")
    return table


def _column(added: dict[str, list], name: str, n: int) -> list:
    return added.setdefault(name, [None] * n)


def _write_imputed(engine: Engine, out: pd.DataFrame, added, index: list[int], rows: list[dict]) -> None:
    n = len(out)
    for i, r in zip(index, rows):
        for name, summary in r["imputed"].items():
            _set_cell(out, i, name, r["values"][name])
            if "std" in summary and summary["std"] is not None:
                _column(added, f"{name}__std", n)[i] = summary["std"]
                if "probability_zero" in summary:
                    _column(added, f"{name}__p_zero", n)[i] = summary["probability_zero"]
            elif summary.get("probabilities"):
                _column(added, f"{name}__prob", n)[i] = summary["probabilities"][str(summary["mode"])]


def _write_plausibility(out: pd.DataFrame, added, index: list[int], rows: list[dict]) -> None:
    for i, r in zip(index, rows):
        for name, check in r["plausibility"].items():
            added[f"{name}__plausibility"][i] = check["p"]
        out.iat[i, out.columns.get_loc("unusual")] = ",".join(r["unusual"])


def _set_cell(out: pd.DataFrame, i: int, name: str, value: Any) -> None:
    if name not in out.columns:
        out[name] = np.nan
    numeric = pd.api.types.is_numeric_dtype(out[name])
    if out[name].dtype != object and not (numeric and isinstance(value, (int, float))):
        out[name] = out[name].astype(object)  # text columns (pandas' str dtype) take numbers this way
    out.iat[i, out.columns.get_loc(name)] = value


def _write_draws(tables: list[pd.DataFrame], index: list[int], rows: list[list[dict]]) -> None:
    """Fills the holes of row i of table m with imputation m's draw."""
    for i, draws in zip(index, rows):
        for table, values in zip(tables, draws):
            for name, value in values.items():
                if name not in table.columns or pd.isna(table.iat[i, table.columns.get_loc(name)]):
                    _set_cell(table, i, name, value)


def _long(tables: list[pd.DataFrame], out: pd.DataFrame, added: dict[str, list]) -> pd.DataFrame:
    """Each input row M times in a row, its imputations 1..M (`imputation` in front): row-major, so that the
    results of consecutive chunks of a table concatenate into the result of the whole table."""
    long = []
    for m, table in enumerate(tables):
        table = table.copy()
        table.insert(0, "imputation", m + 1)
        table["error"] = out["error"].to_numpy()
        for name, values in added.items():
            table[name] = values
        long.append(table)
    n, k = len(out), len(tables)
    order = (np.arange(k)[None, :] * n + np.arange(n)[:, None]).ravel()  # row 1 imputations 1..M, row 2 ...
    return pd.concat(long, ignore_index=True).iloc[order].reset_index(drop=True)


def _write_predicted(engine: Engine, added, index: list[int], rows: list[dict], n: int) -> None:
    for i, r in zip(index, rows):
        for name, s in r["targets"].items():
            if s.get("probabilities"):
                _column(added, f"{name}__label", n)[i] = s["mode"]
                for cat, p in s["probabilities"].items():
                    _column(added, f"{name}__p_{cat}", n)[i] = p
            else:
                _column(added, f"{name}__mean", n)[i] = s["mean"]
                _column(added, f"{name}__std", n)[i] = s["std"]
                for q, v in s["quantiles"].items():
                    _column(added, f"{name}__q{round(float(q) * 100):02d}", n)[i] = v
                if "probability_zero" in s:
                    _column(added, f"{name}__p_zero", n)[i] = s["probability_zero"]
