"""What the service does when its database is slow or gone: bounded waits, fast refusals, recovery by itself.

* **Bounded waits (PostgreSQL).** Every connection is opened with `connect_timeout` and answers each operation
  (query, commit, rollback, the pool's pre-ping) within `timeout` seconds: psycopg's own wait loop gets a deadline,
  and a connection that misses it is closed (its state is unknown), so SQLAlchemy discards it. The server also
  cancels statements that run longer (`statement_timeout`). A proxy or server that accepts connections and then
  never answers therefore costs a request `timeout` seconds at most, never a hang.
* **Fast refusals.** A connection-level failure opens a `Breaker`: for the next `retry_seconds` every request that
  needs the database is refused at once with `DatabaseUnavailable` (503, the route says so) instead of each
  waiting for its own timeout; then one caller at a time is let through to try again (the registry's background
  refresh tries too), and the first success closes the breaker.

SQLite has no network to fail; its "database is locked" is an `OperationalError` too but says nothing about
availability, so only PostgreSQL failures open the breaker.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from sqlalchemy import Engine, event, exc

__all__ = ["Breaker", "DatabaseUnavailable", "bound_postgres", "is_unavailable", "one_line"]

# SQLAlchemy errors that mean "the database cannot answer now" (a pool wait that timed out included).
UNAVAILABLE = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError)


class DatabaseUnavailable(Exception):
    """The database cannot be reached now; `reason` says why in one line (never a password)."""

    def __init__(self, reason: str, retry_after: float = 5.0):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def is_unavailable(error: BaseException) -> bool:
    return isinstance(error, (*UNAVAILABLE, DatabaseUnavailable))


def one_line(error: BaseException) -> str:
    """A short, single-line description of a database error (SQLAlchemy appends SQL and links; drop them)."""
    if isinstance(error, DatabaseUnavailable):
        return error.reason
    original = getattr(error, "orig", None) or error
    text = " ".join(str(original).split()) or type(original).__name__
    return text[:300]


class Breaker:
    """Open after a failure, refusing callers for `retry_seconds`; then one trial at a time; closed on success."""

    def __init__(self, retry_seconds: float = 1.0):
        self.retry_seconds = retry_seconds
        self.down_since: float | None = None
        self.reason: str | None = None
        self._last_try = 0.0
        self._trying = False
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self.down_since is not None

    def admit(self) -> bool:
        """Whether a caller may try the database now; True means: report back with `succeeded`/`failed`."""
        with self._lock:
            if self.down_since is None:
                return True
            now = time.monotonic()
            if self._trying or now - self._last_try < self.retry_seconds:
                return False
            self._trying, self._last_try = True, now
            return True

    def succeeded(self) -> None:
        with self._lock:
            self.down_since, self.reason, self._trying = None, None, False

    def failed(self, reason: str) -> None:
        with self._lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
            self.reason, self._trying, self._last_try = reason, False, time.monotonic()

    def released(self) -> None:
        """A trial ended without saying anything about the database (e.g. the caller's own error)."""
        with self._lock:
            self._trying = False

    def refusal(self) -> DatabaseUnavailable:
        down = time.monotonic() - (self.down_since or time.monotonic())
        return DatabaseUnavailable(
            f"the database is unreachable (for {down:.0f} s: {self.reason or 'unknown'})", self.retry_seconds
        )


@functools.cache
def _bounded_connection_class() -> type:
    import psycopg

    wait_timeout = getattr(psycopg.errors, "_WaitTimeout", psycopg.errors.OperationalError)

    class BoundedConnection(psycopg.Connection):
        """A psycopg connection whose every wait has a deadline (psycopg's default is to wait for ever)."""

        operation_timeout: float | None = None

        def wait(self, gen, interval=0.1, timeout=None):  # noqa: ANN001 - psycopg's signature
            limit = timeout if timeout is not None else self.operation_timeout
            try:
                return super().wait(gen, interval=interval, timeout=limit)
            except wait_timeout:
                # The protocol state is unknown after an abandoned wait: close, so that the pool discards it.
                self.pgconn.finish()
                raise psycopg.OperationalError(
                    f"the database did not answer within {limit:g} s (connection closed)"
                ) from None

    return BoundedConnection


def bound_postgres(engine: Engine, timeout: float) -> None:
    """Gives every connection of a PostgreSQL `engine` the deadlines described in the module docstring."""
    cls = _bounded_connection_class()

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        cparams.setdefault("connect_timeout", max(2, int(round(timeout))))  # libpq's minimum is 2 s
        connection = cls.connect(*cargs, **cparams)
        connection.operation_timeout = timeout
        return connection

    @event.listens_for(engine, "connect")
    def _statement_timeout(dbapi_connection: Any, record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {max(1, int(timeout * 1000) - 100)}")
        dbapi_connection.commit()
