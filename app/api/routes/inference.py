"""Stateless inference: impute, predict, next-features."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from hhvaem.app.api.answer import answer, recommended, row_count
from hhvaem.app.api.deps import Inferrer, State, check_samples, input_problem
from hhvaem.app.api.json_body import StrictJSONRoute
from hhvaem.app.api.problems import problem_responses, unprocessable
from hhvaem.app.api.schemas import (
    MAX_VERSION,
    ImputeResponse,
    NextFeaturesRequest,
    NextFeaturesResponse,
    PredictResponse,
    RowsRequest,
)
from hhvaem.app.engine import ImputeQuery, InputError, NextFeaturesQuery, PredictQuery

router = APIRouter(prefix="/v1/models", tags=["inference"], route_class=StrictJSONRoute)
Version = Annotated[int | None, Query(ge=1, le=MAX_VERSION, description="Model version (default: the active one).")]
ERRORS = problem_responses(401, 403, 404, 410, 413, 422, 503)


def _check_rows(state, body: RowsRequest) -> int:
    if len(body.rows) > state.settings.max_rows:
        raise unprocessable([{"field": "rows", "reason": f"at most {state.settings.max_rows} rows per request"}])
    return check_samples(state.settings, body.samples)


def _rows_query(kind, state, body: RowsRequest):
    """The impute or predict query a rows request asks for (its row and sample limits checked)."""
    return kind(
        body.rows,
        _check_rows(state, body),
        body.quantiles,
        body.seed,
        body.return_samples,
        calibrated=body.calibrated,
        plausibility=body.plausibility,
        plausibility_threshold=body.plausibility_threshold,
    )


@router.post("/{name}/impute", response_model=ImputeResponse, responses=ERRORS, summary="Fill in the holes")
async def impute(name: str, body: RowsRequest, state: State, caller: Inferrer, version: Version = None):
    """Completes each row: observed values as given, each hole with its predictive mean/std/quantiles
    (numbers) or mode/probabilities (categories)."""
    query = _rows_query(ImputeQuery, state, body)
    m, rows = await answer(state, caller, query, name, version, "imputation.served", detail=row_count)
    return {"model": m.name, "version": m.version, "rows": rows}


@router.post("/{name}/predict", response_model=PredictResponse, responses=ERRORS, summary="Predict the target")
async def predict(name: str, body: RowsRequest, state: State, caller: Inferrer, version: Version = None):
    """The target's predictive distribution for each row, from whatever the row holds."""
    query = _rows_query(PredictQuery, state, body)
    m, rows = await answer(state, caller, query, name, version, "prediction.served", detail=row_count)
    return {"model": m.name, "version": m.version, "rows": rows}


@router.post(
    "/{name}/next-features", response_model=NextFeaturesResponse, responses=ERRORS, summary="What to measure next"
)
async def next_features(name: str, body: NextFeaturesRequest, state: State, caller: Inferrer, version: Version = None):
    """Ranks unobserved features by expected information gain about the target (gain per cost when costs
    are given), with the current prediction and a stopping hint."""
    query = NextFeaturesQuery(
        body.row,
        candidates=body.candidates,
        costs=body.costs,
        top_k=body.top_k,
        samples=check_samples(state.settings, body.samples),
        seed=body.seed,
        target=body.target,
        method=body.method,
        min_gain=body.min_gain,
        max_uncertainty=body.max_uncertainty,
        calibrated=body.calibrated,
    )
    m, out = await answer(
        state, caller, query, name, version, "recommendation.served", detail=recommended, problem=_rowless
    )
    return {"model": m.name, "version": m.version, **out}


def _rowless(e: InputError):
    """next-features takes one `row`: report its cells as row.<feature>, not rows.0.<feature>."""
    return input_problem(e, row_prefix="row.")
