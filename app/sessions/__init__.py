"""Questionnaire sessions: state pinned to a model version, with the order and time of every observation."""

from hhvaem.app.sessions.store import (
    MemorySessionStore,
    Observation,
    RedisSessionStore,
    SessionNotFound,
    SessionState,
    SessionStore,
    StoreUnavailable,
    make_store,
)

__all__ = [
    "MemorySessionStore",
    "Observation",
    "RedisSessionStore",
    "SessionNotFound",
    "SessionState",
    "SessionStore",
    "StoreUnavailable",
    "make_store",
]
