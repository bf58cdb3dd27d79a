"""The FastAPI application: `create_app(settings)`; `uvicorn hhvaem.app.main:app --factory` reads the environment."""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.problems import BodySizeLimit, OneLineStartupFailure, install_problem_handlers, startup_failure
from hhvaem.app.api.routes import batch_jobs, health, inference, models, sessions, v2
from hhvaem.app.core.config import Settings, get_settings
from hhvaem.app.core.security import install_log_redaction
from hhvaem.app.db.database import Database, migrate
from hhvaem.app.services.batcher import DynamicBatcher
from hhvaem.app.services.jobs import BatchRunner
from hhvaem.app.services.metrics import Metrics, RequestMetrics
from hhvaem.app.services.registry import ModelRegistry
from hhvaem.app.services.state import AppState, VerifiedKeys
from hhvaem.app.sessions.store import make_store

log = logging.getLogger("hhvaem")
__version__ = version("hhvaem")
STATIC = Path(__file__).parent / "static"
# `import alembic` (the first migration of every start) logs seven "setup plugin ..." lines at INFO.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def start(settings: Settings, backend: str = "onnx") -> AppState:
    """Everything the service holds, from its settings: migrated database, registered and loaded models,
    session store, batcher."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    timeout = settings.database_timeout_seconds
    migrate(settings.database_url, timeout=timeout)
    database = Database(settings.database_url, timeout=timeout)
    registry = ModelRegistry(database, backend, settings.device, settings.threads, settings.registry_refresh_seconds)
    if settings.models_dir:
        registry.register_dir(settings.models_dir)
    registry.refresh()  # the registry's view, and every active version loaded (checksums verified) or marked broken
    metrics = Metrics()
    batcher = DynamicBatcher(
        settings.batch_window_ms,
        settings.max_batch_rows,
        metrics.on_batch,
        settings.inference_workers or os.cpu_count() or 1,
    )
    state = AppState(settings, database, registry, make_store(settings), batcher, metrics)
    state.keys = VerifiedKeys(settings.api_key_cache_seconds)
    state.jobs = BatchRunner(database, registry, settings)
    registry.start()
    state.jobs.start()  # resumes the jobs a stopped or crashed process left unfinished
    log.info(
        "hhvaem %s ready: models %s, database %s, sessions %s, auth %s",
        __version__,
        registry.loaded() or "none",
        settings.redacted()["database_url"],
        state.store.kind,
        "on" if settings.auth_enabled else "off",
    )
    return state


async def stop(state: AppState) -> None:
    await run_in_threadpool(state.jobs.stop)  # running jobs checkpoint and are handed back
    await run_in_threadpool(state.registry.stop)
    try:
        await run_in_threadpool(state.flush_audit)
    except Exception as e:  # the events still waiting are lost with the process: say how many
        log.error("%d audit events not recorded at shutdown: %s", len(state._pending), type(e).__name__)
    await state.batcher.close()
    await state.store.close()
    state.database.dispose()


def create_app(settings: Settings | None = None, backend: str = "onnx") -> FastAPI:
    settings = settings or get_settings()
    install_log_redaction()
    failure: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            app.state.hhvaem = state = start(settings, backend)
        except Exception as e:
            failure.append(startup_failure(e))
            raise
        try:
            yield
        finally:
            await stop(state)

    app = FastAPI(
        title="hhvaem",
        version=__version__,
        summary="Imputation, prediction and next-best-feature acquisition for tables with missing values (HH-VAEM).",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.add_middleware(RequestMetrics)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        upload_max_bytes=settings.max_upload_bytes,
        upload_paths=["/v1/batch-jobs"],
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(OneLineStartupFailure, failure=failure)
    for router in (health.router, models.router, inference.router, sessions.router, batch_jobs.router, v2.router):
        app.include_router(router)
    if STATIC.is_dir():
        app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")

        @app.get("/", include_in_schema=False)
        async def index(request: Request):
            query = request.url.query  # keep ?model=&costs=... for the page
            return RedirectResponse("/ui/" + (f"?{query}" if query else ""))

    for route in app.router.routes:
        if not isinstance(route, APIRoute) and hasattr(route, "app"):  # included routers label their own routes
            _label_for_metrics(route)
    return app


def _label_for_metrics(route) -> None:
    """Puts the route in the request's scope, as FastAPI's own routes do: the request metrics label requests by
    `scope["route"]`, which plain Starlette routes (/docs, /openapi.json) and mounts (/ui) leave unset, so they
    were counted as "unmatched"."""
    inner = route.app

    async def labelled(scope, receive, send) -> None:
        scope["route"] = route
        await inner(scope, receive, send)

    route.app = labelled


def app() -> FastAPI:  # uvicorn hhvaem.app.main:app --factory
    return create_app()
