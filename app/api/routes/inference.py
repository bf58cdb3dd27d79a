"""Stateless inference: impute, predict, next-features."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from hhvaem.app.api.deps import Inferrer, State, check_samples, input_problem, resolve_model
from hhvaem.app.api.problems import problem_responses, unprocessable
from hhvaem.app.api.schemas import (
    MAX_VERSION,
    ImputeResponse,
    NextFeaturesRequest,
    NextFeaturesResponse,
    PredictResponse,
    RowsRequest,
)
from hhvaem.app.engine import InputError

router = APIRouter(prefix="/v1/models", tags=["inference"])
Version = Annotated[int | None, Query(ge=1, le=MAX_VERSION, description="Model version (default: the active one).")]
ERRORS = problem_responses(401, 403, 404, 413, 422, 503)


def _check_rows(state, body: RowsRequest) -> int:
    if len(body.rows) > state.settings.max_rows:
        raise unprocessable([{"field": "rows", "reason": f"at most {state.settings.max_rows} rows per request"}])
    return check_samples(state.settings, body.samples)


@router.post("/{name}/impute", response_model=ImputeResponse, responses=ERRORS, summary="Fill in the holes")
async def impute(name: str, body: RowsRequest, state: State, caller: Inferrer, version: Version = None):
    """Completes each row: observed values as given, each hole with its predictive mean/std/quantiles
    (numbers) or mode/probabilities (categories)."""
    samples = _check_rows(state, body)
    m = resolve_model(state.registry, name, version)
    try:
        prep = m.engine.prepare_impute(body.rows, samples, body.quantiles, body.seed, body.return_samples)
    except InputError as e:
        raise input_problem(e) from None
    rows = await state.batcher.submit((m.name, m.version), m.engine, prep)
    await state.audit("imputation.served", caller, (m.name, m.version), detail={"rows": len(rows)})
    return {"model": m.name, "version": m.version, "rows": rows}


@router.post("/{name}/predict", response_model=PredictResponse, responses=ERRORS, summary="Predict the target")
async def predict(name: str, body: RowsRequest, state: State, caller: Inferrer, version: Version = None):
    """The target's predictive distribution for each row, from whatever the row holds."""
    samples = _check_rows(state, body)
    m = resolve_model(state.registry, name, version)
    try:
        prep = m.engine.prepare_predict(body.rows, samples, body.quantiles, body.seed, body.return_samples)
    except InputError as e:
        raise input_problem(e) from None
    rows = await state.batcher.submit((m.name, m.version), m.engine, prep)
    await state.audit("prediction.served", caller, (m.name, m.version), detail={"rows": len(rows)})
    return {"model": m.name, "version": m.version, "rows": rows}


@router.post(
    "/{name}/next-features", response_model=NextFeaturesResponse, responses=ERRORS, summary="What to measure next"
)
async def next_features(name: str, body: NextFeaturesRequest, state: State, caller: Inferrer, version: Version = None):
    """Ranks unobserved features by expected information gain about the target (gain per cost when costs
    are given), with the current prediction and a stopping hint."""
    samples = check_samples(state.settings, body.samples)
    m = resolve_model(state.registry, name, version)
    try:
        prep = m.engine.prepare_next_features(
            body.row,
            body.candidates,
            body.costs,
            body.top_k,
            samples,
            body.seed,
            body.target,
            body.method,
            body.min_gain,
            body.max_uncertainty,
        )
    except InputError as e:
        raise _rowless(input_problem(e)) from None
    out = await state.batcher.submit((m.name, m.version), m.engine, prep)
    best = out["ranking"][0]["feature"] if out["ranking"] else None
    await state.audit("recommendation.served", caller, (m.name, m.version), detail={"recommended": best})
    return {"model": m.name, "version": m.version, **out}


def _rowless(problem):
    """next-features takes one `row`: report its cells as row.<feature>, not rows.0.<feature>."""
    errors = [
        {**err, "field": "row." + err["field"][len("rows.0.") :]} if err["field"].startswith("rows.0.") else err
        for err in problem.errors or []
    ]
    return unprocessable(errors)
