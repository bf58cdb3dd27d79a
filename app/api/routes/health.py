"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.deps import State
from hhvaem.app.api.problems import Problem
from hhvaem.app.sessions.store import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: models loaded, database and session store reachable")
async def readyz(state: State) -> dict:
    checks: dict[str, str] = {}

    try:
        await run_in_threadpool(state.database.ping)
        checks["database"] = "ok"
    except Exception as e:
        checks["database"] = f"unreachable ({type(e).__name__})"
    try:
        await state.store.ping()
        checks["sessions"] = f"ok ({state.store.kind})"
    except StoreUnavailable:
        checks["sessions"] = f"unreachable ({state.store.kind})"
    loaded = state.registry.loaded()
    checks["models"] = f"{len(loaded)} loaded" if loaded else "none loaded"
    failing = [k for k, v in checks.items() if not (v.startswith("ok") or v.endswith("loaded") and loaded)]
    if failing:
        raise Problem(
            503,
            "Not ready",
            "Not ready: " + ", ".join(f"{k} {checks[k]}" for k in failing),
            "not-ready",
            checks=checks,
            headers={"Retry-After": "5"},
        )
    return {"status": "ready", "checks": checks}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
