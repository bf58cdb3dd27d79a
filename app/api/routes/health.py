"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.deps import State
from hhvaem.app.api.problems import Problem, problem_responses
from hhvaem.app.db.availability import DatabaseUnavailable
from hhvaem.app.sessions.store import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database and session store reachable, every active model intact and loaded",
    responses=problem_responses(503),
)
async def readyz(state: State) -> dict:
    """200 when everything answers; else 503 naming each failing check. Quick whatever is down: the database check
    is refused at once while the database is known to be unreachable, and every check has a time limit."""
    checks: dict[str, str] = {}
    limit = state.settings.database_timeout_seconds
    try:
        await asyncio.wait_for(run_in_threadpool(state.database.ping), limit + 1)
        checks["database"] = "ok"
    except DatabaseUnavailable as e:
        checks["database"] = f"unreachable ({e.reason})"
    except TimeoutError:
        checks["database"] = f"unreachable (no answer within {limit + 1:g} s)"
    try:
        await asyncio.wait_for(state.store.ping(), limit + 1)
        checks["sessions"] = f"ok ({state.store.kind})"
    except (StoreUnavailable, TimeoutError):
        checks["sessions"] = f"unreachable ({state.store.kind})"
    models = state.registry.health()
    failing = [f"{k} {checks[k]}" for k in ("database", "sessions") if not checks[k].startswith("ok")]
    failing += [f"model {label} {status}" for label, status in models.items() if status != "ok"]
    if not models:
        failing.append("models: none active")
    checks_out: dict[str, object] = {**checks, "models": models}
    if failing:
        raise Problem(
            503,
            "Not ready",
            "Not ready: " + "; ".join(failing),
            "not-ready",
            checks=checks_out,
            headers={"Retry-After": "5"},
        )
    return {"status": "ready", "checks": checks_out}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
