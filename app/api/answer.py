"""The one request path of every inference route: resolve the model, prepare the query, batch it, audit it.

Model lookup (SQL), row encoding and noise generation run in the threadpool, never on the event loop; the
sampler call itself runs in the dynamic batcher's worker threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.deps import Principal, check_work, input_problem, resolve_model
from hhvaem.app.api.problems import Problem
from hhvaem.app.engine import InputError
from hhvaem.app.engine.queries import ImputeQuery, NextFeaturesQuery, PredictQuery
from hhvaem.app.services.registry import LoadedModel

Query = ImputeQuery | PredictQuery | NextFeaturesQuery


async def answer(
    state: Any,
    caller: Principal,
    query: Query,
    model: str,
    version: int | None,
    event: str,
    session_id: str | None = None,
    detail: Callable[[Any], dict[str, Any]] | None = None,
    problem: Callable[[InputError], Problem] = input_problem,
) -> tuple[LoadedModel, Any]:
    """Answers `query` with `model` (at `version`, None: the active one); records the audit `event`.

    `detail(answer)` adds to the audit record; `problem` turns the engine's input errors into the 4xx answer.
    """

    def prepare():
        m = resolve_model(state.registry, model, version)
        check_work(state.settings, query, m.engine)
        try:
            return m, query.prepare(m.engine)
        except InputError as e:
            raise problem(e) from None

    m, prepared = await run_in_threadpool(prepare)
    out = await state.batcher.submit((m.name, m.version), m.engine, prepared)
    await state.audit(event, caller, (m.name, m.version), session_id, detail=detail(out) if detail else None)
    return m, out


def recommended(out: dict[str, Any]) -> dict[str, Any]:
    """The audit detail of a next-features answer: the feature it recommends."""
    return {"recommended": out["ranking"][0]["feature"] if out["ranking"] else None}


def row_count(out: list[Any]) -> dict[str, Any]:
    """The audit detail of rows answered: how many, and how many values were called unusual (a count, never the
    values: app/engine/plausibility.py)."""
    unusual = sum(len(r.get("unusual", ())) for r in out if isinstance(r, dict))
    return {"rows": len(out), **({"unusual": unusual} if any("unusual" in r for r in out) else {})}
