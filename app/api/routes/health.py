"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.deps import State, get_principal
from hhvaem.app.api.problems import Problem, problem_responses
from hhvaem.app.core.security import ADMIN, check_scopes
from hhvaem.app.db.availability import DatabaseUnavailable
from hhvaem.app.sessions.store import StoreUnavailable

router = APIRouter(tags=["health"])
RETIRED = "retired "  # how a retired version's status begins (`Registered.retirement`)


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readiness(state) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(database and session checks, each active model's status and each retired version's, what fails): what
    `/readyz` and the OIP's `/v2/health/ready` both answer from. A retired version is listed (when and why) but
    never fails readiness: it is meant not to be served. Quick whatever is down: the database check is refused at
    once while the database is known to be unreachable, and every check has a time limit."""
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
    return checks, {**models, **state.registry.retired()}, failing


async def _sees_details(request: Request, state) -> bool:
    """Whether the caller may see model names, versions, server paths and error texts: an admin key, or anyone
    when authentication is off (a development set-up)."""
    if not state.settings.auth_enabled:
        return True
    try:
        principal = await get_principal(request, state)
    except (Problem, DatabaseUnavailable):
        return False
    return check_scopes(principal.scopes, ADMIN)


@router.get(
    "/readyz",
    summary="Readiness: database and session store reachable, every active model intact and loaded",
    responses=problem_responses(503),
)
async def readyz(request: Request, state: State) -> dict:
    """200 when everything answers; else 503 naming each failing check. With authentication on, only an admin key
    sees which models, versions and paths; other callers get the states alone (e.g. "models": "2 of 3 ok")."""
    checks, models, failing = await readiness(state)
    if await _sees_details(request, state):
        checks_out: dict[str, object] = {**checks, "models": models}
        detail = "Not ready: " + "; ".join(failing)
    else:
        plain = {k: v if v.startswith("ok") else "unreachable" for k, v in checks.items()}
        served = [status for status in models.values() if not status.startswith(RETIRED)]
        ok = served.count("ok")
        checks_out = {**plain, "models": f"{ok} of {len(served)} ok"}
        broken = [f"{k} unreachable" for k, v in plain.items() if v == "unreachable"]
        broken += [f"models {ok} of {len(served)} ok"] if ok < len(served) or not served else []
        detail = "Not ready: " + "; ".join(broken)
    if failing:
        raise Problem(503, "Not ready", detail, "not-ready", checks=checks_out, headers={"Retry-After": "5"})
    return {"status": "ready", "checks": checks_out}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
