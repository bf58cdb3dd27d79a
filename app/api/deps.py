"""Dependencies injected into the routes (`Annotated[...]`): app state, the caller, loaded models, request limits."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.problems import (
    Problem,
    field_error,
    forbidden,
    not_found,
    unauthorized,
    unavailable,
    unprocessable,
)
from hhvaem.app.core.config import Settings
from hhvaem.app.core.security import ADMIN, INFER, check_scopes, looks_like_api_key
from hhvaem.app.db import repository as repo
from hhvaem.app.db.availability import DatabaseUnavailable
from hhvaem.app.engine import InputError
from hhvaem.app.services.registry import LoadedModel, ModelNotFound, ModelRegistry, VersionRetired
from hhvaem.app.services.state import AppState
from hhvaem.model.io.artifact import ArtifactError

log = logging.getLogger(__name__)
# Query parameters that would carry a credential: refused with a hint (URLs end up in access logs).
CREDENTIAL_PARAMETERS = ("api_key", "apikey", "key", "token", "access_token")


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key (id and scopes), or anyone when authentication is off."""

    key_id: int | None
    scopes: frozenset[str] = field(default_factory=lambda: frozenset({ADMIN, INFER}))

    @property
    def owner(self) -> str | None:
        return None if self.key_id is None else str(self.key_id)


def get_state(request: Request) -> AppState:
    return request.app.state.hhvaem


State = Annotated[AppState, Depends(get_state)]


def _key_from(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


async def get_principal(request: Request, state: State) -> Principal:
    """The caller's key, verified: from the cache of recently verified keys, else the database. While the database
    is unreachable, keys verified in the last hour keep working and others get 503 (not 401: the key may be
    fine)."""
    settings: Settings = state.settings
    if not settings.auth_enabled:
        return Principal(None)
    key = _key_from(request)
    if key is None:
        if any(name in request.query_params for name in CREDENTIAL_PARAMETERS):
            raise unauthorized(
                "API keys are accepted only in the Authorization (Bearer) or X-API-Key header, never in the URL."
            )
        raise unauthorized("An API key is required (Authorization: Bearer <key> or X-API-Key).")
    if not looks_like_api_key(key):
        raise unauthorized("The API key is not valid or was revoked.")
    cached = state.keys.get(key)
    if cached is None:

        def verify():
            with state.database.read() as tx:
                rec = repo.verify_api_key(tx, key)
                return None if rec is None else (rec.id, frozenset(rec.scopes))

        try:
            cached = await run_in_threadpool(verify)
        except DatabaseUnavailable:
            cached = state.keys.get(key, stale_ok=True)
            if cached is None:
                raise
        else:
            if cached is None:
                state.keys.forget(key)
                raise unauthorized("The API key is not valid or was revoked.")
            state.keys.put(key, *cached)
    return Principal(cached[0], cached[1])


def require(scope: str):
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not check_scopes(principal.scopes, scope):
            raise forbidden(f"This API key lacks the {scope!r} scope.")
        return principal

    return check


Inferrer = Annotated[Principal, Depends(require(INFER))]
Admin = Annotated[Principal, Depends(require(ADMIN))]


def retired(e: VersionRetired) -> Problem:
    """410: an admin retired the version, for good (unlike a 503, retrying never helps): the client moves on."""
    return Problem(
        410,
        "Gone",
        f"{e}: it is not served any more. Use another version (without `version`, the active one); a session pinned "
        "to it must be started again.",
        "version-retired",
        model=e.name,
        version=e.version,
        retired_at=e.retired_at.isoformat() if e.retired_at else None,
        reason=e.reason,
    )


def resolve_model(registry: ModelRegistry, name: str, version: int | None = None) -> LoadedModel:
    try:
        return registry.resolve(name, version)
    except VersionRetired as e:  # before ModelNotFound, its base: a retired version is not an unknown one
        raise retired(e) from None
    except ModelNotFound as e:
        raise not_found("model", name if version is None else f"{name} version {version}", str(e)) from None
    except ArtifactError as e:  # registered, but its files changed or vanished since
        what = f"model {name!r}" + (f" version {version}" if version is not None else "")
        log.error("%s cannot be served: %s", what, e)  # the server's paths stay in its log
        raise unavailable(
            f"{what} cannot be served: its files changed or are missing since registration (the service log names "
            "the file; an admin's /readyz too when it is the active version)",
            retry_after=60,
        ) from None


def input_problem(e: InputError, row_prefix: str = "rows.{row}.") -> Problem:
    """The engine's per-cell errors as a 422 problem naming each field (`rows.<i>.<feature>`; a one-row request
    passes `row_prefix="row."`)."""
    errors = []
    for err in e.errors:
        where = err.field if err.row is None else row_prefix.format(row=err.row) + err.field
        errors.append({"field": where, "reason": err.reason})
    return unprocessable(errors)


def check_samples(settings: Settings, samples: int | None) -> int:
    """The request's sample count (the configured default when it gives none), within the limit."""
    if samples is not None and samples > settings.max_samples:
        raise unprocessable([{"field": "samples", "reason": f"at most {settings.max_samples} samples per request"}])
    return settings.default_samples if samples is None else samples


def work_factors(query: Any, engine: Any) -> dict[str, int]:
    """What a query costs, factor by factor: rows and samples, and for next-features the candidates ranked."""
    samples = getattr(query, "samples", None) or engine.default_samples
    if hasattr(query, "rows"):
        factors = {"rows": len(query.rows), "samples": int(samples)}
        if getattr(query, "plausibility", False):  # a leave-one-out copy of the row per observed feature
            rows = [r for r in query.rows if isinstance(r, dict)]
            factors["plausibility copies"] = 1 + max((sum(v is not None for v in r.values()) for r in rows), default=0)
        return factors
    if not hasattr(query, "row"):
        return {"samples": int(samples)}
    row = query.row if isinstance(query.row, dict) else {}
    observed = {k for k, v in row.items() if v is not None}
    candidates_asked = getattr(query, "candidates", None)
    pool = candidates_asked if candidates_asked is not None else engine.feature_index
    candidates = {c for c in pool if c not in observed and c not in set(getattr(query, "exclude", None) or ())}
    return {"samples": int(samples), "candidates": max(1, len(candidates))}


def check_work(settings: Settings, query: Any, engine: Any) -> None:
    """422 naming the factors when a request's work (their product) exceeds `max_work`: each factor may be within
    its own limit while the product is not (1000 rows x 1000 samples)."""
    factors = work_factors(query, engine)
    work = 1
    for value in factors.values():
        work *= value
    if work <= settings.max_work:
        return
    product = " x ".join(f"{v:,} {k}" for k, v in factors.items())
    reason = f"{product} = {work:,} units of work; at most {settings.max_work:,} per request"
    raise unprocessable(
        [field_error(name, reason) for name in factors],
        detail=f"This request is too much work: {reason}. Ask for fewer {' or '.join(factors)}, or use a batch job.",
    )
