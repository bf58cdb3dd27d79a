"""Everything a running service holds: settings, the database, loaded models, the session store, the batcher, the
batch-job runner, the verified-key cache; and the audit trail's writer."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from hhvaem.app.core.config import Settings
from hhvaem.app.core.security import hash_api_key
from hhvaem.app.db import repository as repo
from hhvaem.app.db.database import Database
from hhvaem.app.services.batcher import DynamicBatcher
from hhvaem.app.services.jobs import BatchRunner
from hhvaem.app.services.metrics import Metrics
from hhvaem.app.services.registry import ModelRegistry
from hhvaem.app.sessions.store import SessionStore

log = logging.getLogger(__name__)

PENDING_AUDIT_EVENTS = 10_000  # kept in memory while the database is unreachable; beyond, the oldest are dropped
AUDIT_WAIT_SECONDS = 1.0  # the longest an answer waits for its audit event to be written (then it goes on)


class VerifiedKeys:
    """API keys the database confirmed recently, by their SHA-256 (never the key itself), so that most requests
    need no database round trip and stateless inference outlives a database outage.

    `get(key)` answers for `ttl` seconds after a verification (a revocation takes effect within that); with
    `stale_ok` (the database cannot be asked) it answers for `outage_grace` seconds. Bounded: the least recently
    verified keys are forgotten first."""

    def __init__(self, ttl: float, outage_grace: float = 3600.0, max_entries: int = 10_000):
        self.ttl, self.outage_grace, self.max_entries = ttl, outage_grace, max_entries
        self._entries: collections.OrderedDict[str, tuple[float, int, frozenset[str]]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, stale_ok: bool = False) -> tuple[int, frozenset[str]] | None:
        limit = self.outage_grace if stale_ok else self.ttl
        with self._lock:
            entry = self._entries.get(hash_api_key(key))
        if entry is None or time.monotonic() - entry[0] > limit:
            return None
        return entry[1], entry[2]

    def put(self, key: str, key_id: int, scopes: frozenset[str]) -> None:
        digest = hash_api_key(key)
        with self._lock:
            self._entries[digest] = (time.monotonic(), key_id, scopes)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(hash_api_key(key), None)


@dataclass
class AppState:
    settings: Settings
    database: Database
    registry: ModelRegistry
    store: SessionStore
    batcher: DynamicBatcher
    metrics: Metrics
    jobs: BatchRunner | None = None  # the batch-job runner, set once the service has started it
    keys: VerifiedKeys = field(default_factory=lambda: VerifiedKeys(60.0))
    _pending: collections.deque = field(default_factory=lambda: collections.deque(maxlen=PENDING_AUDIT_EVENTS))
    audit_dropped: int = 0
    _flushing: threading.Lock = field(default_factory=threading.Lock)

    async def audit(
        self,
        kind: str,
        principal: Any,
        model: tuple[str, int] | None = None,
        session_id: str | None = None,
        detail: dict[str, Any] | None = None,
        values: dict[str, Any] | None = None,
    ) -> None:
        """Appends an audit event; raw values only when `audit_values` is on. Never fails the request, and delays
        it by `AUDIT_WAIT_SECONDS` at most: an event that cannot be written now (the database is unreachable, or
        slow) waits in memory (bounded) and is written with the next one that gets through."""
        detail = dict(detail or {})
        if values is not None:
            detail["features"] = sorted(values)
            if self.settings.audit_values:
                detail["values"] = values
        event = {
            "kind": kind,
            "model_name": model[0] if model else None,
            "model_version": model[1] if model else None,
            "session_id": session_id,
            "api_key_id": principal.key_id,
            "detail": detail,
            "at": repo.utcnow(),
        }
        if len(self._pending) == self._pending.maxlen:
            self.audit_dropped += 1
        self._pending.append(event)
        try:
            await asyncio.wait_for(run_in_threadpool(self.flush_audit), AUDIT_WAIT_SECONDS)
        except Exception as e:  # auditing must not take the answer down with it (TimeoutError included)
            log.warning("audit event %s not recorded yet (%d waiting): %s", kind, len(self._pending), type(e).__name__)

    def flush_audit(self) -> None:
        """Writes the waiting audit events in one transaction (never as the database's recovery trial). One writer
        at a time, so that no event is written twice; while one writes, others return at once (what they added is
        written by the next flush)."""
        if not self._flushing.acquire(blocking=False):
            return
        try:
            events = list(self._pending)
            if not events:
                return
            with self.database.transaction(trial=False) as tx:
                for event in events:
                    repo.record_event(tx, event["kind"], **{k: v for k, v in event.items() if k != "kind"})
            for _ in events:
                self._pending.popleft()
        finally:
            self._flushing.release()
