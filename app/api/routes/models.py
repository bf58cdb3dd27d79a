"""The model registry: list, describe, register (admin), activate (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.deps import Admin, Inferrer, State, resolve_model
from hhvaem.app.api.json_body import StrictJSONRoute
from hhvaem.app.api.problems import not_found, problem_responses, unprocessable
from hhvaem.app.api.schemas import MAX_VERSION, ModelDetail, ModelInfo, RegisterModelRequest
from hhvaem.model.io.artifact import ArtifactError, name_problem

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=StrictJSONRoute)


def _info(r) -> dict:
    return {
        "name": r.name,
        "version": r.version,
        "active": r.active,
        "checksum": r.checksum,
        "created_at": r.created_at.isoformat() if r.created_at else None,
        "summary": r.summary or {},
        "metrics": r.metrics or {},
    }


@router.get("", response_model=list[ModelInfo], responses=problem_responses(401, 403), summary="Registered models")
async def list_models(state: State, caller: Inferrer):
    """Every registered version, as this process last read the registry (see `registry_refresh_seconds`)."""
    return [_info(r) for r in state.registry.records()]


@router.get("/{name}", response_model=ModelDetail, responses=problem_responses(401, 403, 404), summary="One model")
async def get_model(
    name: str, state: State, caller: Inferrer, version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None
):
    """Schema (features, types, categories, units), targets, sampler settings, metrics and versions."""
    m = await run_in_threadpool(resolve_model, state.registry, name, version)
    records = [r for r in state.registry.records() if r.name == name]
    record = next((r for r in records if r.version == m.version), None)
    if record is None:  # unregistered between the two reads
        raise not_found("model", name if version is None else f"{name} version {version}")
    d = m.engine.describe()
    return {
        **_info(record),
        "schema": d["schema"],
        "sampler": d["sampler"],
        "backend": d["backend"],
        "versions": sorted(r.version for r in records),
    }


@router.post(
    "", status_code=201, response_model=ModelInfo, responses=problem_responses(401, 403, 422, 503), summary="Register"
)
async def register_model(body: RegisterModelRequest, state: State, caller: Admin):
    """Registers an artifact directory on the server as a new version: the manifest's shape and name, every
    checksum, and one tiny run of each question through the graphs are checked first."""
    try:
        record, _ = await run_in_threadpool(state.registry.register, body.path, body.name, body.activate)
    except ArtifactError as e:
        raise unprocessable([{"field": "path", "reason": str(e)}]) from None
    except OSError as e:
        raise unprocessable([{"field": "path", "reason": f"cannot read the directory ({e.strerror})"}]) from None
    except ValueError as e:  # e.g. a NUL byte in the path
        raise unprocessable([{"field": "path", "reason": f"not a usable path ({e})"}]) from None
    await state.audit("model.registered", caller, (record.name, record.version), detail={"path": record.path})
    return _info(record)


@router.post(
    "/{name}/versions/{version}/activate",
    response_model=ModelInfo,
    responses=problem_responses(401, 403, 404, 503),
    summary="Make a version the active one",
)
async def activate(name: str, version: Annotated[int, Path(ge=1, le=MAX_VERSION)], state: State, caller: Admin):
    """Serves `version` from now on: here at once, in the service's other processes within the registry's refresh
    delay (`registry_refresh_seconds`)."""
    record = None if name_problem(name) else await run_in_threadpool(state.registry.activate, name, version)
    if record is None:
        raise not_found("model", f"{name} version {version}")
    return _info(record)
