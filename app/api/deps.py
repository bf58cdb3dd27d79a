"""Dependencies injected into the routes (`Annotated[...]`): app state, the caller, loaded models."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.problems import Problem, forbidden, not_found, unauthorized, unavailable, unprocessable
from hhvaem.app.core.config import Settings
from hhvaem.app.core.security import ADMIN, INFER, check_scopes
from hhvaem.app.db import repository as repo
from hhvaem.app.engine import InputError
from hhvaem.app.services.registry import LoadedModel, ModelNotFound, ModelRegistry
from hhvaem.model.io.artifact import ArtifactError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key (id and scopes), or anyone when authentication is off."""

    key_id: int | None
    scopes: frozenset[str] = field(default_factory=lambda: frozenset({ADMIN, INFER}))

    @property
    def owner(self) -> str | None:
        return None if self.key_id is None else str(self.key_id)


def get_state(request: Request) -> Any:
    return request.app.state.hhvaem


State = Annotated[Any, Depends(get_state)]


def _key_from(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


async def get_principal(request: Request, state: State) -> Principal:
    settings: Settings = state.settings
    if not settings.auth_enabled:
        return Principal(None)
    key = _key_from(request)
    if key is None:
        raise unauthorized("An API key is required (Authorization: Bearer <key> or X-API-Key).")

    def verify():
        with state.database.read() as tx:
            rec = repo.verify_api_key(tx, key)
            return None if rec is None else (rec.id, frozenset(rec.scopes))

    found = await run_in_threadpool(verify)
    if found is None:
        raise unauthorized("The API key is not valid or was revoked.")
    return Principal(found[0], found[1])


def require(scope: str):
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not check_scopes(principal.scopes, scope):
            raise forbidden(f"This API key lacks the {scope!r} scope.")
        return principal

    return check


Inferrer = Annotated[Principal, Depends(require(INFER))]
Admin = Annotated[Principal, Depends(require(ADMIN))]


def resolve_model(registry: ModelRegistry, name: str, version: int | None = None) -> LoadedModel:
    try:
        return registry.resolve(name, version)
    except ModelNotFound as e:
        raise not_found("model", name if version is None else f"{name} version {version}", str(e)) from None
    except ArtifactError as e:  # registered, but its files changed or vanished since
        what = f"model {name!r}" + (f" version {version}" if version is not None else "")
        raise unavailable(f"{what} cannot be loaded: {e}", retry_after=60) from None


def input_problem(e: InputError) -> Problem:
    """The engine's per-cell errors as a 422 problem naming each field (rows.<i>.<feature>)."""
    errors = []
    for err in e.errors:
        where = err.field if err.row is None else f"rows.{err.row}.{err.field}"
        errors.append({"field": where, "reason": err.reason})
    return unprocessable(errors)


def check_samples(settings: Settings, samples: int | None) -> int:
    """The request's sample count (the configured default when it gives none), within the limit."""
    if samples is not None and samples > settings.max_samples:
        raise unprocessable([{"field": "samples", "reason": f"at most {settings.max_samples} samples per request"}])
    return settings.default_samples if samples is None else samples
