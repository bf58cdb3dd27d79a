"""A loopback TCP proxy whose behaviour a test or the fault script switches at will: the database outage simulator.

    proxy = TcpProxy(("127.0.0.1", 5432)).start()   # listens on proxy.port, forwards to PostgreSQL
    proxy.mode = "refuse"   # new connections are refused, open ones are cut
    proxy.mode = "hang"     # connections are accepted and held, nothing is forwarded either way
    proxy.mode = "forward"  # back to normal (connections held meanwhile resume, if their ends still wait)
    proxy.stop()

Threads only (no asyncio), so it runs beside anything. Loopback only.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading

MODES = ("forward", "refuse", "hang")


class TcpProxy:
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1"):
        self.target = target
        self.host = host
        self._mode = "forward"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self.port = 0

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._mode = value
        if value == "refuse":
            self._cut_all()

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.settimeout(0.1)
        self._listener, self.port = listener, listener.getsockname()[1]
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._cut_all()
        if self._listener is not None:
            self._listener.close()

    def _cut_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if self._mode == "refuse":
                # RST rather than FIN: what a closed port looks like to the client.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            if self._mode == "hang":
                with self._lock:
                    self._pairs.append((client, None))
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Copies bytes both ways while the mode is "forward"; in "hang" it stops copying (and holds on)."""
        peers = {a: b, b: a}
        try:
            while not self._stopping.is_set():
                if self._mode == "hang":
                    self._stopping.wait(0.05)
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.05)
                if self._mode != "forward":
                    continue
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except (OSError, ValueError):  # a socket cut meanwhile (`mode = "refuse"`, `stop`)
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()
