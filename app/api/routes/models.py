"""The model registry: list, describe, register (admin), activate (admin), retire (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.deps import Admin, Inferrer, State, resolve_model
from hhvaem.app.api.json_body import StrictJSONRoute
from hhvaem.app.api.problems import conflict, field_error, not_found, problem_responses, unprocessable
from hhvaem.app.api.schemas import (
    MAX_VERSION,
    ModelDetail,
    ModelInfo,
    RegisteredModel,
    RegisterModelRequest,
    RetireModelRequest,
)
from hhvaem.app.db.repository import StateConflict
from hhvaem.app.services.registry import IncompatibleSchema, VersionRetired
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
        "retired_at": r.retired_at.isoformat() if r.retired_at else None,
        "retired_reason": r.retired_reason,
    }


@router.get("", response_model=list[ModelInfo], responses=problem_responses(401, 403), summary="Registered models")
async def list_models(state: State, caller: Inferrer):
    """Every registered version, as this process last read the registry (see `registry_refresh_seconds`)."""
    return [_info(r) for r in state.registry.records()]


@router.get("/{name}", response_model=ModelDetail, responses=problem_responses(401, 403, 404, 410), summary="One model")
async def get_model(
    name: str, state: State, caller: Inferrer, version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None
):
    """Schema (features and targets: types, categories and their labels, units, descriptions), sampler settings,
    metrics and versions."""
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
        "versions": sorted(r.version for r in records if not r.retired),  # the versions it may be asked for
    }


@router.post(
    "",
    status_code=201,
    response_model=RegisteredModel,
    responses=problem_responses(401, 403, 409, 422, 503),
    summary="Register",
)
async def register_model(body: RegisterModelRequest, state: State, caller: Admin):
    """Registers an artifact directory on the server as a new version: the manifest's shape and name, every
    checksum, and one tiny run of each question through the graphs are checked first. Under a name that has an
    active version, its schema must serve that version's clients, unless `force` (422 lists the differences); a
    retired version's artifact is refused (409)."""
    try:
        done = await run_in_threadpool(
            lambda: state.registry.register(body.path, body.name, body.activate, force=body.force)
        )
    except IncompatibleSchema as e:
        raise unprocessable(
            [field_error("path", change) for change in e.changes],
            detail=f"{e}. Register it under another name, or set `force` to register it anyway.",
        ) from None
    except VersionRetired as e:
        raise conflict(f"This artifact is the version that {e}; it is not served again.") from None
    except ArtifactError as e:
        raise unprocessable([{"field": "path", "reason": str(e)}]) from None
    except OSError as e:
        raise unprocessable([{"field": "path", "reason": f"cannot read the directory ({e.strerror})"}]) from None
    except ValueError as e:  # e.g. a NUL byte in the path
        raise unprocessable([{"field": "path", "reason": f"not a usable path ({e})"}]) from None
    record, changes = done.record, list(done.schema_changes)
    detail = {"path": record.path, **({"forced_schema_changes": changes} if changes else {})}
    await state.audit("model.registered", caller, (record.name, record.version), detail=detail)
    return {**_info(record), "schema_changes": changes}


@router.post(
    "/{name}/versions/{version}/activate",
    response_model=ModelInfo,
    responses=problem_responses(401, 403, 404, 409, 503),
    summary="Make a version the active one",
)
async def activate(name: str, version: Annotated[int, Path(ge=1, le=MAX_VERSION)], state: State, caller: Admin):
    """Serves `version` from now on: here at once, in the service's other processes within the registry's refresh
    delay (`registry_refresh_seconds`). A retired version is refused (409)."""
    try:
        record = None if name_problem(name) else await run_in_threadpool(state.registry.activate, name, version)
    except StateConflict as e:
        raise conflict(str(e)) from None
    if record is None:
        raise not_found("model", f"{name} version {version}")
    return _info(record)


@router.post(
    "/{name}/versions/{version}/retire",
    response_model=ModelInfo,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
    summary="Retire a version for good",
)
async def retire(
    name: str,
    version: Annotated[int, Path(ge=1, le=MAX_VERSION)],
    state: State,
    caller: Admin,
    body: RetireModelRequest | None = None,
):
    """Never serves `version` again: requests for it (`?version=`, sessions pinned to it, OIP v2) get 410 naming
    the retirement, here at once and in the other processes within the registry's refresh delay; a restart does
    not bring it back. The active version is refused (409): activate another one first. Retiring a retired version
    answers 200 with its first retirement unchanged."""
    reason = body.reason if body is not None else None
    try:
        record = None if name_problem(name) else await run_in_threadpool(state.registry.retire, name, version, reason)
    except StateConflict as e:
        raise conflict(str(e)) from None
    if record is None:
        raise not_found("model", f"{name} version {version}")
    await state.audit("model.retired", caller, (record.name, record.version), detail={"reason": record.retired_reason})
    return _info(record)
