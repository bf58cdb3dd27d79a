"""Questionnaire session state: who asked what, in which order, pinned to one model version.

Two implementations of one async protocol:

- `RedisSessionStore`: one Redis hash per session, `<prefix><id>` (default prefix `hhvaem:session:`), whose fields
  hold JSON: `meta` (id, model, version, owner, created_at), `obs` (the observation history, a JSON array), plus
  `n` (number of observations), `updated_at` and `op` (the last update's token). The key's TTL is the idle TTL,
  renewed by every read and update. Updates run as one server-side Lua script, so concurrent writers from any
  number of processes never lose an observation and sequence numbers stay unique and dense. The script splices
  JSON text that Python encoded and never decodes a value (Redis's cjson keeps only 14 significant digits, which
  would corrupt floats and large integers). Every update carries a random token, which makes the client's single
  retry after a dropped connection idempotent.
- `MemorySessionStore`: the same semantics inside one process (for development, or `hhvaem serve` without Redis).

Values arrive validated by the caller; the store keeps them as given (JSON scalars, or None for "retracted").
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from hhvaem.app.core.config import redact_url

if TYPE_CHECKING:
    from hhvaem.app.core.config import Settings

__all__ = [
    "MemorySessionStore",
    "Observation",
    "RedisSessionStore",
    "SessionFull",
    "SessionNotFound",
    "SessionState",
    "SessionStore",
    "StoreUnavailable",
    "make_store",
    "new_session_id",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "hhvaem:session:"
DEFAULT_MAX_OBSERVATIONS = 1000
# A session's history longer than this (JSON characters) is decoded in a worker thread, off the event loop.
_DECODE_INLINE_CHARS = 16_384


class SessionNotFound(Exception):
    """No session with this id: never created, deleted, or expired after its idle TTL."""

    def __init__(self, session_id: str):
        super().__init__(f"session {session_id!r} does not exist or has expired")
        self.session_id = session_id


class SessionFull(Exception):
    """An update would take the session past its cap on answers (`max_observations`); nothing was stored."""

    def __init__(self, session_id: str, held: int, adding: int, cap: int):
        super().__init__(
            f"session {session_id!r} holds {held} answers; {adding} more would pass its cap of {cap} "
            "(corrections and retractions count): start a new session with the current answers"
        )
        self.session_id, self.held, self.adding, self.cap = session_id, held, adding, cap


class StoreUnavailable(Exception):
    """The session backend cannot be reached or refused the operation; the message says why (never a password)."""


def new_session_id() -> str:
    """128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


def utc_now() -> str:
    """Current UTC time, ISO-8601 with microseconds and `Z`, fixed width (so strings sort as times do)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Observation:
    """One answer: `value` is a JSON scalar, or None when the answer was retracted."""

    feature: str
    value: Any
    at: str
    seq: int

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "value": self.value, "at": self.at, "seq": self.seq}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Observation:
        return cls(feature=data["feature"], value=data.get("value"), at=data["at"], seq=int(data["seq"]))


@dataclass(frozen=True)
class SessionState:
    id: str
    model_name: str
    model_version: int
    owner: str | None
    created_at: str
    updated_at: str
    observations: tuple[Observation, ...] = field(default_factory=tuple)
    # The idle TTL the session was created with: every read and update renews it with this, whatever TTL the
    # process serving that request is configured with (None: a session created before the TTL was recorded).
    ttl_seconds: float | None = None

    @classmethod
    def new(
        cls,
        session_id: str,
        model_name: str,
        model_version: int,
        owner: str | None,
        observations: Mapping[str, Any],
        ttl_seconds: float | None = None,
    ) -> SessionState:
        """A session created now, with `observations` as its first answers (in their order)."""
        now = utc_now()
        return cls(
            id=session_id,
            model_name=model_name,
            model_version=int(model_version),
            owner=owner,
            created_at=now,
            updated_at=now,
            observations=tuple(
                Observation(feature=str(f), value=v, at=now, seq=i) for i, (f, v) in enumerate(observations.items())
            ),
            ttl_seconds=ttl_seconds,
        )

    @property
    def current(self) -> dict[str, Any]:
        """The latest value of every feature, in order of first observation; retracted features left out."""
        latest: dict[str, Any] = {}
        for obs in sorted(self.observations, key=lambda o: o.seq):
            latest[obs.feature] = obs.value
        return {k: v for k, v in latest.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "owner": self.owner,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "observations": [o.to_dict() for o in self.observations],
            "ttl_seconds": self.ttl_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionState:
        return cls(
            id=data["id"],
            model_name=data["model_name"],
            model_version=int(data["model_version"]),
            owner=data.get("owner"),
            created_at=data["created_at"],
            updated_at=data.get("updated_at") or data["created_at"],
            observations=tuple(Observation.from_dict(o) for o in data.get("observations") or ()),
            ttl_seconds=data.get("ttl_seconds"),
        )


@runtime_checkable
class SessionStore(Protocol):
    kind: str  # "redis" | "memory"
    ttl_seconds: float
    max_observations: int  # an update past it raises SessionFull

    async def create(
        self, model_name: str, model_version: int, owner: str | None, observations: Mapping[str, Any]
    ) -> SessionState: ...

    async def get(self, session_id: str) -> SessionState: ...

    async def add_observations(self, session_id: str, observations: Mapping[str, Any]) -> SessionState: ...

    async def delete(self, session_id: str) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def _parse_history(obs: str | None) -> tuple[Observation, ...]:
    return tuple(Observation.from_dict(o) for o in json.loads(obs or "[]"))


# A long history read again unchanged (a client polling its session) is decoded once: a history near the cap
# takes ~3 ms of interpreter time to decode, time every other request of the process waits for (the GIL). Keyed
# by the stored text, so any change is a miss; at most 32 histories of at most `session_max_observations` each.
_history = functools.lru_cache(maxsize=32)(_parse_history)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


# --------------------------------------------------------------------------------------------------------- Redis

# KEYS[1]: session key. ARGV[1]: idle TTL (ms); ARGV[2]: now (fixed-width ISO UTC); ARGV[3]: update token;
# ARGV[4]: the cap on answers; ARGV[5..]: feature JSON, value JSON, feature JSON, value JSON, ...
# Returns false when the session is absent, {"full", n} when the update would pass the cap (nothing stored), else
# {meta, obs, updated_at, ttl}. The session is renewed with its own TTL (the `ttl` field), ARGV[1] when it has none.
_ADD_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local cur = redis.call('HMGET', KEYS[1], 'n', 'obs', 'updated_at', 'op')
if cur[4] ~= ARGV[3] then
  local n = tonumber(cur[1]) or 0
  if n + (#ARGV - 4) / 2 > tonumber(ARGV[4]) then return {'full', string.format('%d', n)} end
  local obs = cur[2] or '[]'
  local now = ARGV[2]
  if cur[3] and now < cur[3] then now = cur[3] end
  local parts = {}
  for i = 5, #ARGV, 2 do
    parts[#parts + 1] = '{"feature":' .. ARGV[i] .. ',"value":' .. ARGV[i + 1] ..
      ',"at":"' .. now .. '","seq":' .. string.format('%d', n) .. '}'
    n = n + 1
  end
  if #parts > 0 then
    local body = table.concat(parts, ',')
    if string.len(obs) > 2 then obs = string.sub(obs, 1, -2) .. ',' .. body .. ']' else obs = '[' .. body .. ']' end
    redis.call('HSET', KEYS[1], 'n', string.format('%d', n), 'obs', obs, 'updated_at', now, 'op', ARGV[3])
  end
end
local ttl = redis.call('HGET', KEYS[1], 'ttl') or ARGV[1]
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('HMGET', KEYS[1], 'meta', 'obs', 'updated_at', 'ttl')
"""

# KEYS[1]: session key. ARGV[1]: the idle TTL (ms) for a session that has none recorded. Renews the session with its
# own TTL; false when absent, else {meta, obs, updated_at, ttl}.
_GET_LUA = """
local v = redis.call('HMGET', KEYS[1], 'meta', 'obs', 'updated_at', 'ttl')
if not v[1] then return false end
redis.call('PEXPIRE', KEYS[1], v[4] or ARGV[1])
return v
"""


class RedisSessionStore:
    """Sessions in Redis (redis.asyncio). One store object per event loop: its connections belong to the loop
    that first used them.

    Short socket timeouts and a single quick retry: when Redis is down an operation raises `StoreUnavailable`
    within about `2 * connect_timeout + op_timeout` seconds (immediately when the port refuses), and the next
    operation after Redis is back succeeds on a fresh connection, with no restart."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: float = 1800,
        max_observations: int = DEFAULT_MAX_OBSERVATIONS,
        prefix: str = DEFAULT_PREFIX,
        connect_timeout: float = 1.0,
        op_timeout: float = 2.0,
    ):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ConstantBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self.ttl_seconds = float(ttl_seconds)
        self.max_observations = int(max_observations)
        self.prefix = prefix
        self.op_timeout = op_timeout
        self.url = redact_url(url) or ""
        self._password = urlsplit(url).password
        self.location = self._describe_location(url)
        self._client = aioredis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout,
            socket_timeout=op_timeout,
            # One quick retry on a connection error only: it replaces a pooled connection that died (e.g. Redis
            # restarted) and is safe because every operation is idempotent (updates carry a token). No retry on
            # timeouts, so a hung server costs one `op_timeout`, not several.
            retry=Retry(ConstantBackoff(0.05), retries=1, supported_errors=(RedisConnectionError,)),
            client_name="hhvaem-sessions",
        )
        self._add_script = self._client.register_script(_ADD_LUA)
        self._get_script = self._client.register_script(_GET_LUA)

    @staticmethod
    def _describe_location(url: str) -> str:
        try:
            parts = urlsplit(url)
        except ValueError:
            return "<unparseable URL>"
        if parts.scheme == "unix":
            return parts.path
        host = parts.hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        try:
            port = parts.port or 6379
        except ValueError:
            port = "?"
        return f"{host}:{port}"

    def __repr__(self) -> str:
        return f"RedisSessionStore({self.url!r}, ttl_seconds={self.ttl_seconds})"

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(round(self.ttl_seconds * 1000)))

    def _key(self, session_id: str) -> str:
        return self.prefix + session_id

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        reason = str(exc) or type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        if isinstance(exc, RedisTimeoutError | TimeoutError):
            what = f"did not answer within {self.op_timeout:g} s"
        elif isinstance(exc, RedisConnectionError | OSError):
            what = "is unreachable"
        else:
            what = "failed"
        return StoreUnavailable(f"Redis at {self.location} {what}: {reason}")

    async def _call(self, coro_fn):
        from redis.exceptions import RedisError

        try:
            return await coro_fn()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc

    async def _state(self, session_id: str, meta: str | None, obs: str | None, updated_at: str | None, ttl=None):
        if meta is None:
            raise SessionNotFound(session_id)
        if obs is not None and len(obs) > _DECODE_INLINE_CHARS:  # a long history: decode it off the event loop
            return await asyncio.to_thread(self._decode, meta, obs, updated_at, ttl)
        return self._decode(meta, obs, updated_at, ttl)

    @staticmethod
    def _decode(meta: str, obs: str | None, updated_at: str | None, ttl: str | None) -> SessionState:
        m = json.loads(meta)
        return SessionState(
            id=m["id"],
            model_name=m["model_name"],
            model_version=int(m["model_version"]),
            owner=m.get("owner"),
            created_at=m["created_at"],
            updated_at=updated_at or m["created_at"],
            observations=_history(obs) if obs and len(obs) > _DECODE_INLINE_CHARS else _parse_history(obs),
            ttl_seconds=int(ttl) / 1000 if ttl else None,
        )

    async def create(
        self, model_name: str, model_version: int, owner: str | None, observations: Mapping[str, Any]
    ) -> SessionState:
        state = SessionState.new(
            new_session_id(), model_name, model_version, owner, observations, ttl_seconds=self._ttl_ms / 1000
        )
        _check_cap(state.id, 0, len(observations), self.max_observations)
        meta = {k: v for k, v in state.to_dict().items() if k not in ("observations", "updated_at", "ttl_seconds")}
        mapping = {
            "meta": _dumps(meta),
            "obs": _dumps([o.to_dict() for o in state.observations]),
            "n": str(len(state.observations)),
            "updated_at": state.updated_at,
            "op": "",
            "ttl": str(self._ttl_ms),
        }
        key = self._key(state.id)

        async def run():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=mapping)
                pipe.pexpire(key, self._ttl_ms)
                await pipe.execute()

        await self._call(run)
        return state

    async def get(self, session_id: str) -> SessionState:
        key = self._key(session_id)

        result = await self._call(lambda: self._get_script(keys=[key], args=[self._ttl_ms]))
        if not result:
            raise SessionNotFound(session_id)
        return await self._state(session_id, *result)

    async def add_observations(self, session_id: str, observations: Mapping[str, Any]) -> SessionState:
        if not observations:
            return await self.get(session_id)
        args: list[Any] = [self._ttl_ms, utc_now(), secrets.token_hex(8), self.max_observations]
        for feature, value in observations.items():
            args += [_dumps(str(feature)), _dumps(value)]
        key = self._key(session_id)
        result = await self._call(lambda: self._add_script(keys=[key], args=args))
        if not result:
            raise SessionNotFound(session_id)
        if result[0] == "full":
            raise SessionFull(session_id, int(result[1]), len(observations), self.max_observations)
        return await self._state(session_id, *result)

    async def delete(self, session_id: str) -> None:
        removed = await self._call(lambda: self._client.delete(self._key(session_id)))
        if not removed:
            raise SessionNotFound(session_id)

    async def ping(self) -> None:
        await self._call(self._client.ping)

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception:  # closing a client whose server is gone must not fail shutdown
            log.debug("closing the Redis session client failed", exc_info=True)


# -------------------------------------------------------------------------------------------------------- memory


class MemorySessionStore:
    """Sessions in this process's memory: same semantics as Redis, for a single process only."""

    kind = "memory"
    location = "in-process memory"

    def __init__(
        self, *, ttl_seconds: float = 1800, max_observations: int = DEFAULT_MAX_OBSERVATIONS, clock=time.monotonic
    ):
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self.ttl_seconds = float(ttl_seconds)
        self.max_observations = int(max_observations)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._sessions: dict[str, tuple[SessionState, float]] = {}
        self._next_purge = 0.0

    def __repr__(self) -> str:
        return f"MemorySessionStore(ttl_seconds={self.ttl_seconds}, sessions={len(self._sessions)})"

    def _purge(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + min(self.ttl_seconds, 60.0)
        for sid in [sid for sid, (_, expires) in self._sessions.items() if expires <= now]:
            del self._sessions[sid]

    def _live(self, session_id: str, now: float) -> SessionState:
        entry = self._sessions.get(session_id)
        if entry is None:
            raise SessionNotFound(session_id)
        state, expires = entry
        if expires <= now:
            del self._sessions[session_id]
            raise SessionNotFound(session_id)
        return state

    async def create(
        self, model_name: str, model_version: int, owner: str | None, observations: Mapping[str, Any]
    ) -> SessionState:
        async with self._lock:
            now = self._clock()
            self._purge(now)
            session_id = new_session_id()
            while session_id in self._sessions:
                session_id = new_session_id()
            _check_cap(session_id, 0, len(observations), self.max_observations)
            state = SessionState.new(
                session_id, model_name, model_version, owner, observations, ttl_seconds=self.ttl_seconds
            )
            self._sessions[session_id] = (state, now + self.ttl_seconds)
            return state

    async def get(self, session_id: str) -> SessionState:
        async with self._lock:
            now = self._clock()
            state = self._live(session_id, now)
            self._sessions[session_id] = (state, now + self.ttl_seconds)
            return state

    async def add_observations(self, session_id: str, observations: Mapping[str, Any]) -> SessionState:
        async with self._lock:
            now = self._clock()
            state = self._live(session_id, now)
            if observations:
                n = len(state.observations)
                _check_cap(session_id, n, len(observations), self.max_observations)
                ts = max(utc_now(), state.updated_at)
                added = tuple(
                    Observation(feature=str(f), value=v, at=ts, seq=n + i)
                    for i, (f, v) in enumerate(observations.items())
                )
                state = replace(state, updated_at=ts, observations=state.observations + added)
            self._sessions[session_id] = (state, now + self.ttl_seconds)
            return state

    async def delete(self, session_id: str) -> None:
        async with self._lock:
            self._live(session_id, self._clock())
            del self._sessions[session_id]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._sessions.clear()


def _check_cap(session_id: str, held: int, adding: int, cap: int) -> None:
    if held + adding > cap:
        raise SessionFull(session_id, held, adding, cap)


def make_store(settings: Settings, **kwargs: Any) -> SessionStore:
    """The store the settings ask for: Redis when `redis_url` is set, else in-process memory (logged as a
    warning, since sessions then live in one process and vanish with it)."""
    if settings.redis_url:
        store: SessionStore = RedisSessionStore(
            settings.redis_url,
            ttl_seconds=settings.session_ttl_seconds,
            max_observations=settings.session_max_observations,
            **kwargs,
        )
        log.info("sessions: Redis at %s (idle TTL %d s)", redact_url(settings.redis_url), settings.session_ttl_seconds)
        return store
    log.warning(
        "sessions: no REDIS_URL / HHVAEM_REDIS_URL set, keeping sessions in this process's memory "
        "(single process only; they are lost on restart)"
    )
    return MemorySessionStore(
        ttl_seconds=settings.session_ttl_seconds, max_observations=settings.session_max_observations
    )
