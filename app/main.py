"""The FastAPI application: `create_app(settings)`; `uvicorn hhvaem.app.main:app --factory` reads the environment."""

from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from hhvaem.app.api.problems import BodySizeLimit, install_problem_handlers
from hhvaem.app.api.routes import batch_jobs, health, inference, models, sessions
from hhvaem.app.core.config import Settings, get_settings
from hhvaem.app.db.database import Database, migrate
from hhvaem.app.services.batcher import DynamicBatcher
from hhvaem.app.services.metrics import Metrics
from hhvaem.app.services.registry import ModelRegistry
from hhvaem.app.services.state import AppState
from hhvaem.app.sessions.store import make_store

log = logging.getLogger("hhvaem")
__version__ = version("hhvaem")
STATIC = Path(__file__).parent / "static"


def start(settings: Settings, backend: str = "onnx") -> AppState:
    """Everything the service holds, from its settings: migrated database, registered and loaded models,
    session store, batcher."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.database_url)
    database = Database(settings.database_url)
    registry = ModelRegistry(database, backend, settings.device, settings.threads)
    if settings.models_dir:
        registry.register_dir(settings.models_dir)
    for record in [r for r in registry.records() if r.active]:
        try:  # load what the registry says is active, checksums verified
            registry.resolve(record.name)
        except Exception as e:
            log.error("model %s version %d not loaded: %s", record.name, record.version, e)
    metrics = Metrics()
    batcher = DynamicBatcher(
        settings.batch_window_ms,
        settings.max_batch_rows,
        metrics.on_batch,
        settings.inference_workers or os.cpu_count() or 1,
    )
    state = AppState(settings, database, registry, make_store(settings), batcher, metrics)
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
    await batch_jobs.shutdown(state)
    await state.batcher.close()
    await state.store.close()
    state.database.dispose()


def create_app(settings: Settings | None = None, backend: str = "onnx") -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.hhvaem = state = start(settings, backend)
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
    app.middleware("http")(observe)
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
    for router in (health.router, models.router, inference.router, sessions.router, batch_jobs.router):
        app.include_router(router)
    if STATIC.is_dir():
        app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")

        @app.get("/", include_in_schema=False)
        async def index(request: Request):
            query = request.url.query  # keep ?model=&costs=... for the page
            return RedirectResponse("/ui/" + (f"?{query}" if query else ""))

    return app


async def observe(request: Request, call_next):
    """Counts and times every request by method, route and status (Prometheus)."""
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    path = getattr(route, "path", "unmatched")
    state = getattr(request.app.state, "hhvaem", None)
    if state is not None:
        state.metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        state.metrics.latency.labels(request.method, path).observe(time.perf_counter() - started)
    return response


def app() -> FastAPI:  # uvicorn hhvaem.app.main:app --factory
    return create_app()
