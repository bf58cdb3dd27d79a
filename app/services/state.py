"""Everything a running service holds: settings, the database, loaded models, the session store, the batcher."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from hhvaem.app.core.config import Settings
from hhvaem.app.db import repository as repo
from hhvaem.app.db.database import Database
from hhvaem.app.services.batcher import DynamicBatcher
from hhvaem.app.services.metrics import Metrics
from hhvaem.app.services.registry import ModelRegistry
from hhvaem.app.sessions.store import SessionStore

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    database: Database
    registry: ModelRegistry
    store: SessionStore
    batcher: DynamicBatcher
    metrics: Metrics

    async def audit(
        self,
        kind: str,
        principal: Any,
        model: tuple[str, int] | None = None,
        session_id: str | None = None,
        detail: dict[str, Any] | None = None,
        values: dict[str, Any] | None = None,
    ) -> None:
        """Appends an audit event; raw values only when `audit_values` is on. Never fails the request."""
        detail = dict(detail or {})
        if values is not None:
            detail["features"] = sorted(values)
            if self.settings.audit_values:
                detail["values"] = values

        def write():
            with self.database.transaction() as tx:
                repo.record_event(
                    tx,
                    kind,
                    model_name=model[0] if model else None,
                    model_version=model[1] if model else None,
                    session_id=session_id,
                    api_key_id=principal.key_id,
                    detail=detail,
                )

        try:
            await run_in_threadpool(write)
        except Exception as e:  # auditing must not take the answer down with it
            log.error("audit event %s not recorded: %s", kind, type(e).__name__)
