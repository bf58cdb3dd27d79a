"""Read deadlines for uvicorn's HTTP/1.1 protocol: uvicorn closes idle keep-alive connections, but a connection
that never finishes its request headers (slowloris), or dribbles its body, is held for ever. `server_options`
gives `uvicorn.run` / `uvicorn.Config` a protocol with both deadlines; `hhvaem serve` and the tests' servers use it.

The header deadline runs from the moment a request may start (the connection opens, or the previous response
ends) until its headers are complete. The body deadline is `body_timeout_seconds` plus one second per
`body_min_rate` bytes received (Apache's mod_reqtimeout rule: a large upload at a reasonable rate never trips it,
a trickle does); it is suspended while the service itself stops reading (flow control). A connection past either
deadline is closed; nothing has reached the application yet (headers) or the application sees a disconnect (body).

`uvicorn hhvaem.app.main:app --factory --http hhvaem.app.core.http:ReadDeadlines` takes the deadlines from the
environment's settings, as the application does.
"""

from __future__ import annotations

import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from hhvaem.app.core.config import get_settings

log = logging.getLogger(__name__)


class ReadDeadlines(H11Protocol):
    # None: from the environment's settings (the uvicorn command line); `server_options` sets them explicitly
    header_seconds: float | None = None
    body_seconds: float | None = None
    body_min_rate: float | None = None  # bytes per second

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if None in (self.header_seconds, self.body_seconds, self.body_min_rate):
            settings = get_settings()
            self.header_seconds = settings.header_timeout_seconds
            self.body_seconds = settings.body_timeout_seconds
            self.body_min_rate = settings.body_min_rate

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self._timer = None
        self._phase: str | None = None
        self._body_started, self._body_bytes = 0.0, 0
        super().connection_made(transport)
        self._follow(0)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow(len(data))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow(0)  # the next request on this connection may start now

    # ---- the deadline of the phase the client is in ----------------------------------------------------------
    def _follow(self, received: int) -> None:
        if self.transport.is_closing():
            return self._disarm()
        state = self.conn.their_state
        if state is h11.IDLE:  # waiting for (the rest of) a request's headers
            if self._phase != "headers":
                self._phase = "headers"
                self._arm(self.header_seconds)
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                self._phase, self._body_started, self._body_bytes = "body", self.loop.time(), 0
            else:
                self._body_bytes += received
            allowed = self.body_seconds + self._body_bytes / self.body_min_rate
            self._arm(self._body_started + allowed - self.loop.time())
        else:  # the request is complete (or the connection is ending): the application's time, not the client's
            self._phase = None
            self._disarm()

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(max(0.0, delay), self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase == "body" and self.flow.read_paused:  # we stopped reading, not the client: wait with it
            self._arm(self.body_seconds)
            return
        what = "request headers" if self._phase == "headers" else "request body"
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.warning("closing the connection from %s: its %s did not arrive in time", client, what)
        self.transport.close()


def server_options(settings: Any) -> dict[str, Any]:
    """uvicorn options from the service's settings: the HTTP protocol with its read deadlines."""
    protocol = type(
        "ServiceHTTP",
        (ReadDeadlines,),
        {
            "header_seconds": float(settings.header_timeout_seconds),
            "body_seconds": float(settings.body_timeout_seconds),
            "body_min_rate": float(settings.body_min_rate),
        },
    )
    return {"http": protocol, "timeout_keep_alive": int(settings.keep_alive_seconds)}
