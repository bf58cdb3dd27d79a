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
from hhvaem.app.engine.queries import ImputeQuery, PredictQuery

OPERATIONS = ("impute", "predict", "both")


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
    chunk_rows: int = 128,
    seed: int = 0,
    progress: Callable[[int, int, list[dict]], None] | None = None,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Scores `df`; returns (result table, errors [{row, column, reason}]).

    The result keeps the input's columns (holes filled for impute) and adds, per imputed numeric
    column `<col>__std`, per discrete one `<col>__prob`; per target `<t>__mean/__std/__q05/__q50/__q95`
    or `<t>__label` and `<t>__p_<category>`; and `error` for rows that could not be scored.
    `progress(done, total, new_errors)` is called after every chunk.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r} (expected one of {', '.join(OPERATIONS)})")
    extra = sorted(set(df.columns) - {c.name for c in engine.schema.columns})
    errors: list[dict[str, Any]] = []
    if extra:
        errors.append({"row": None, "column": extra[0], "reason": "not a column of the model; ignored"})
    records = _records(df[_columns(engine, df)])
    out = df.copy()
    out["error"] = ""
    added: dict[str, list] = {}
    total = len(records)
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
            if operation in ("impute", "both"):
                prepared.append(ImputeQuery(rows, samples, seed=seed + start, strict=False).prepare(engine))
            if operation in ("predict", "both"):
                prepared.append(PredictQuery(rows, samples, seed=seed + start, strict=False).prepare(engine))
            results = engine.run(prepared)
            if operation in ("impute", "both"):
                _write_imputed(engine, out, added, index, results[0])
            if operation in ("predict", "both"):
                _write_predicted(engine, added, index, results[-1], len(out))
        errors.extend(new_errors)
        if progress:
            progress(min(start + chunk_rows, total), total, new_errors)
    for name, values in added.items():
        out[name] = values
    return out, errors


def _column(added: dict[str, list], name: str, n: int) -> list:
    return added.setdefault(name, [None] * n)


def _write_imputed(engine: Engine, out: pd.DataFrame, added, index: list[int], rows: list[dict]) -> None:
    n = len(out)
    for i, r in zip(index, rows):
        for name, summary in r["imputed"].items():
            if name not in out.columns:
                out[name] = np.nan
            numeric = pd.api.types.is_numeric_dtype(out[name])
            if out[name].dtype != object and not (numeric and isinstance(r["values"][name], (int, float))):
                out[name] = out[name].astype(object)  # text columns (pandas' str dtype) take numbers this way
            out.iat[i, out.columns.get_loc(name)] = r["values"][name]
            if "std" in summary and summary["std"] is not None:
                _column(added, f"{name}__std", n)[i] = summary["std"]
            elif summary.get("probabilities"):
                _column(added, f"{name}__prob", n)[i] = summary["probabilities"][str(summary["mode"])]


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
