"""Questionnaire sessions: state in Redis (or in-process), pinned to the model version they started on."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.answer import answer, recommended, row_count
from hhvaem.app.api.deps import Inferrer, Principal, State, check_samples, resolve_model
from hhvaem.app.api.json_body import StrictJSONRoute
from hhvaem.app.api.problems import Problem, field_error, not_found, problem_responses, unprocessable
from hhvaem.app.api.schemas import (
    CALIBRATED_DESCRIPTION,
    PLAUSIBILITY_DESCRIPTION,
    SEED_DESCRIPTION,
    SESSION_LINKS,
    CreateSessionRequest,
    NextFeaturesResponse,
    ObservationsRequest,
    SessionOut,
    SessionPrediction,
)
from hhvaem.app.engine import InputError, NextFeaturesQuery, PredictQuery
from hhvaem.app.sessions.store import SessionFull, SessionNotFound, SessionState

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], route_class=StrictJSONRoute)
ERRORS = problem_responses(401, 403, 404, 422, 503)
# A session pinned to a version that an admin retired since gets 410 where the model answers.
MODEL_ERRORS = problem_responses(401, 403, 404, 410, 422, 503)
WRITE_ERRORS = problem_responses(401, 403, 404, 409, 410, 422, 503)
# A session with more answers than this is rendered in a worker thread: a long history (up to the cap,
# `session_max_observations`) must not hold the event loop, and every other caller, while it is encoded.
_RENDER_INLINE = 64


def _out(state, s: SessionState) -> dict[str, Any]:
    return {
        "session_id": s.id,
        "model": s.model_name,
        "version": s.model_version,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "expires_in": int(s.ttl_seconds or state.store.ttl_seconds),  # the session's own idle TTL
        "observations": [o.to_dict() for o in s.observations],
        "current": s.current,
    }


async def _render(state, s: SessionState, status: int = 200) -> Response:
    def render() -> bytes:  # SessionOut's JSON; every value was validated on the way in, so no second pass
        return json.dumps(_out(state, s), separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    body = render() if len(s.observations) <= _RENDER_INLINE else await run_in_threadpool(render)
    return Response(body, status_code=status, media_type="application/json")


def _full(e: SessionFull) -> Problem:
    return Problem(
        409,
        "Session Full",
        str(e),
        "session-full",
        errors=[field_error("observations", f"{e.adding} more answers would pass the session's cap of {e.cap}")],
        cap=e.cap,
    )


def _gone(session_id: str) -> Problem:
    return not_found("session", session_id, f"There is no session {session_id!r}: it never existed or it expired.")


async def _session(state, session_id: str, caller: Principal) -> SessionState:
    try:
        s = await state.store.get(session_id)
    except SessionNotFound:
        raise _gone(session_id) from None
    if s.owner is not None and s.owner != caller.owner:
        raise _gone(session_id)  # another key's session: indistinguishable from a missing one
    return s


async def _checked_model(state, name: str, version: int | None, observations: dict[str, Any]):
    """The session's model, with `observations` checked against its schema (in the threadpool: SQL, encoding)."""

    def run():
        m = resolve_model(state.registry, name, version)
        _validate(m.engine, observations)
        return m

    return await run_in_threadpool(run)


def _validate(engine, observations: dict[str, Any]) -> None:
    """Checks answers against the schema before anything is stored (null retracts an answer)."""
    targets = {c.name for c in engine.schema.targets}
    errors = [
        {"field": f"observations.{k}", "reason": "is the model's target: a session predicts it, it does not take it"}
        for k in observations
        if k in targets
    ]
    if errors:
        raise unprocessable(errors)
    try:
        engine.encode_rows([observations])
    except InputError as e:
        raise unprocessable(
            [{"field": f"observations.{err.field}", "reason": err.reason} for err in e.errors]
        ) from None


@router.post(
    "",
    status_code=201,
    response_model=SessionOut,
    responses={201: {"description": "Created", "links": SESSION_LINKS}, **WRITE_ERRORS},
    summary="Start a questionnaire",
)
async def create_session(body: CreateSessionRequest, state: State, caller: Inferrer):
    m = await _checked_model(state, body.model, body.version, body.observations)
    try:
        s = await state.store.create(m.name, m.version, caller.owner, body.observations)
    except SessionFull as e:
        raise _full(e) from None
    await state.audit("session.created", caller, (m.name, m.version), s.id, values=body.observations)
    out = await _render(state, s, 201)
    out.headers["Location"] = f"/v1/sessions/{s.id}"
    return out


@router.get("/{session_id}", response_model=SessionOut, responses=ERRORS, summary="A session's answers")
async def get_session(session_id: str, state: State, caller: Inferrer):
    return await _render(state, await _session(state, session_id, caller))


@router.post("/{session_id}/observations", response_model=SessionOut, responses=WRITE_ERRORS, summary="Record answers")
async def add_observations(session_id: str, body: ObservationsRequest, state: State, caller: Inferrer):
    """Adds answers atomically (concurrent writers lose nothing); answering a feature again corrects it,
    null retracts it. A rejected request stores nothing; 409 when the session holds its cap of answers
    (`session_max_observations`, corrections and retractions included)."""
    s = await _session(state, session_id, caller)
    m = await _checked_model(state, s.model_name, s.model_version, body.observations)
    try:
        s = await state.store.add_observations(session_id, body.observations)
    except SessionNotFound:
        raise _gone(session_id) from None
    except SessionFull as e:
        raise _full(e) from None
    await state.audit("session.observation", caller, (m.name, m.version), s.id, values=body.observations)
    return await _render(state, s)


@router.delete("/{session_id}", status_code=204, responses=ERRORS, summary="End a session")
async def delete_session(session_id: str, state: State, caller: Inferrer) -> Response:
    await _session(state, session_id, caller)
    try:
        await state.store.delete(session_id)
    except SessionNotFound:
        raise _gone(session_id) from None
    return Response(status_code=204)


def _parse_costs(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    costs = {}
    for part in text.split(","):
        name, sep, value = part.partition(":")
        try:
            costs[name.strip()] = float(value)
        except ValueError:
            raise unprocessable([{"field": "costs", "reason": f"{part!r} is not feature:cost"}]) from None
        if not sep:
            raise unprocessable([{"field": "costs", "reason": f"{part!r} is not feature:cost"}])
    return costs


@router.get(
    "/{session_id}/next-features", response_model=NextFeaturesResponse, responses=MODEL_ERRORS, summary="Next question"
)
async def session_next_features(
    session_id: str,
    state: State,
    caller: Inferrer,
    top_k: Annotated[int | None, Query(ge=1)] = None,
    method: Annotated[str, Query(pattern="^(mixture|histogram)$")] = "mixture",
    costs: Annotated[str | None, Query(description="feature:cost pairs, comma-separated, e.g. ldl:5,hdl:5")] = None,
    exclude: Annotated[str | None, Query(description="Comma-separated features not to ask (e.g. skipped).")] = None,
    min_gain: Annotated[float, Query(ge=0, allow_inf_nan=False)] = 0.01,
    max_uncertainty: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
    samples: Annotated[int | None, Query(ge=2)] = None,
    seed: Annotated[int | None, Query(ge=0, description=SEED_DESCRIPTION)] = None,
    calibrated: Annotated[bool, Query(description=CALIBRATED_DESCRIPTION)] = True,
):
    samples = check_samples(state.settings, samples)
    s = await _session(state, session_id, caller)
    current = s.current
    query = NextFeaturesQuery(
        current,
        exclude=tuple(x.strip() for x in (exclude or "").split(",") if x.strip()),
        costs=_parse_costs(costs),
        top_k=top_k,
        samples=samples,
        seed=seed,
        method=method,
        min_gain=min_gain,
        max_uncertainty=max_uncertainty,
        calibrated=calibrated,
    )
    m, out = await answer(
        state, caller, query, s.model_name, s.model_version, "recommendation.served", s.id, detail=recommended
    )
    return {"model": m.name, "version": m.version, **out}


@router.get(
    "/{session_id}/prediction", response_model=SessionPrediction, responses=MODEL_ERRORS, summary="Current prediction"
)
async def session_prediction(
    session_id: str,
    state: State,
    caller: Inferrer,
    samples: Annotated[int | None, Query(ge=2)] = None,
    seed: Annotated[int | None, Query(ge=0, description=SEED_DESCRIPTION)] = None,
    calibrated: Annotated[bool, Query(description=CALIBRATED_DESCRIPTION)] = True,
    plausibility: Annotated[bool, Query(description=PLAUSIBILITY_DESCRIPTION)] = False,
    plausibility_threshold: Annotated[float, Query(gt=0, lt=1, allow_inf_nan=False)] = 0.01,
):
    samples = check_samples(state.settings, samples)
    s = await _session(state, session_id, caller)
    query = PredictQuery(
        [s.current],
        samples,
        seed=seed,
        calibrated=calibrated,
        plausibility=plausibility,
        plausibility_threshold=plausibility_threshold,
    )
    m, (row,) = await answer(
        state, caller, query, s.model_name, s.model_version, "prediction.served", s.id, detail=row_count
    )
    return {"session_id": s.id, "model": m.name, "version": m.version, **row}
