"""Connection hygiene on the public listeners: what uvicorn's HTTP protocol lacks (a deadline for a request's head
and pauses in its body, a maximum number of connections with a clear refusal), the gRPC listener's equivalent
options, and the process's file descriptor budget (the soft limit raised to the hard one; a warning before it runs
out).

uvicorn runs :class:`GuardedHttpToolsProtocol` (``http=`` in gateway/server.py) for every REST connection; its
settings come from the :class:`ConnectionGuard` that the lifespan puts into uvicorn's app state, one per worker.
Without a guard (another ASGI server, a test) it is uvicorn's protocol unchanged.

- A new connection must deliver its first request's head within ``header_timeout_s``, and a kept-alive one must
  finish a request's head within that time of its first byte: idle new connections and slowloris clients are
  closed (408 once part of a request arrived; a plain close when nothing did). The idle time between requests is
  uvicorn's keep-alive timeout (``keepalive_timeout_s``).
- A request body may pause at most ``body_timeout_s`` between reads (408, then close).
- Past ``max_connections`` open connections a new one gets ``503`` with ``Retry-After`` and is closed, logged as a
  storm (gateway/events.py), long before the process runs out of file descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.events import Storm, Storms
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.connections")

STATE_KEY = "gateway.connections"  # the guard in uvicorn's app (lifespan) state
#: File descriptors kept out of the listeners' share: backend pools, gRPC channels, log and metrics files.
FD_RESERVE_FRACTION = 0.1
FD_RESERVE_MIN = 256
FD_WARN_FRACTION = 0.8  # warn when this share of the descriptor limit is in use
LINGER_S = 1.0  # a refused connection stays open this long after its 503, so the client can read it


def raise_fd_limit() -> tuple[int, int]:
    """The soft RLIMIT_NOFILE raised to the hard one (worker processes inherit it); (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = _nr_open()
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    except (OSError, ValueError) as exc:
        log.warning("could not raise the open file limit from %d to %d: %s", soft, hard, exc)
        return soft, hard
    return hard, hard


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def fd_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _nr_open() if soft == resource.RLIM_INFINITY else int(soft)


def open_fds() -> int | None:
    """This process's open file descriptors (Linux /proc); None where that cannot be read."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def listener_limit(wanted: int, listeners: int, limit: int | None = None) -> int:
    """Connections one listener may hold: ``wanted``, lowered so that all ``listeners`` together stay inside the
    file descriptor limit less a reserve."""
    limit = fd_limit() if limit is None else limit
    reserve = max(FD_RESERVE_MIN, int(limit * FD_RESERVE_FRACTION))
    return max(16, min(wanted, (limit - reserve) // max(1, listeners)))


@dataclass(frozen=True, slots=True)
class Refusal:
    """The bytes a refused connection gets: a whole HTTP answer, whether or not its request arrived yet."""

    body: bytes

    @classmethod
    def connection_limit(cls, limit: int) -> Refusal:
        message = (b'{"error":"the gateway is at its connection limit (%d per worker); retry later"}' % limit)
        return cls(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                   b"retry-after: 1\r\nconnection: close\r\n\r\n%s" % (len(message), message))


REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                   b"connection: close\r\n\r\n%s")


class ConnectionGuard:
    """One worker's REST connection limits and timeouts, its counts, and its storms of refusals."""

    def __init__(self, settings: Settings, storms: Storms, metrics: Metrics | None = None,
                 listeners: int = 1) -> None:
        self.max_connections = listener_limit(settings.max_connections, listeners)
        self.header_timeout_s = settings.header_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self.metrics = metrics
        self.refusal = Refusal.connection_limit(self.max_connections)
        self.refused: Storm = storms.storm(log, "REST connections refused")
        self.timed_out: Storm = storms.storm(log, "REST connections closed by a read timeout")
        self._fds: Storm = storms.storm(log, "file descriptors")
        self.open = 0
        if self.max_connections < settings.max_connections:
            log.info("REST listener: at most %d connections per worker (GATEWAY_MAX_CONNECTIONS=%d lowered to fit "
                     "the open file limit of %d)", self.max_connections, settings.max_connections, fd_limit())

    def closed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connection_closed("rest", reason)

    def tick(self) -> None:
        """Every few seconds: a warning when the process nears its file descriptor limit (REST, gRPC and backend
        connections share it)."""
        used, limit = open_fds(), fd_limit()
        if used is not None and used >= FD_WARN_FRACTION * limit:
            self._fds.note(f"{used} of {limit} in use", f"file descriptors: {used} of {limit} in use; new connections "
                                                        "fail once they are all used")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the guard's connection limit and read timeouts."""

    guard: ConnectionGuard | None = None
    _read_timer: asyncio.TimerHandle | None = None
    _refused = False
    _received = False  # a byte of the current request arrived (a timeout answers 408 rather than closing)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.app_state.get(STATE_KEY)
        if not isinstance(guard, ConnectionGuard):
            return
        self.guard = guard
        guard.open += 1
        if len(self.connections) > guard.max_connections:
            self._refuse(guard)
            return
        self._arm(guard.header_timeout_s, "header_timeout")

    def _refuse(self, guard: ConnectionGuard) -> None:
        self._refused = True
        guard.closed("refused")
        guard.refused.note(f"over {guard.max_connections} open connections",
                           f"REST connection refused: {len(self.connections) - 1} are open, the limit is "
                           f"{guard.max_connections} per worker (GATEWAY_MAX_CONNECTIONS); each new one is answered "
                           "503 with Retry-After until some close")
        self.transport.write(guard.refusal.body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        # Closing at once could reset the connection before the client read the 503 (its request may still be
        # arriving); the client closes first, or this does after a moment.
        self.loop.call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._received = True
        super().data_received(data)

    def timeout_keep_alive_handler(self) -> None:
        if self.guard is not None and not self.transport.is_closing():
            self.guard.closed("idle")
        super().timeout_keep_alive_handler()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.guard is not None:
            self.guard.open -= 1
        super().connection_lost(exc)

    # --- read timeouts: a request's head, then pauses in its body ----------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.guard is not None and self._read_timer is None:  # a kept-alive connection's next request
            self._arm(self.guard.header_timeout_s, "header_timeout")

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if self.guard is not None and self.cycle is not None and not self.cycle.response_complete:
            self._arm(self.guard.body_timeout_s, "body_timeout")

    def on_body(self, body: bytes) -> None:
        if self.guard is not None and self._read_timer is not None:
            self._arm(self.guard.body_timeout_s, "body_timeout")
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._received = False
        super().on_message_complete()

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        if seconds > 0:
            self._read_timer = self.loop.call_later(seconds, self._read_timeout, reason)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timeout(self, reason: str) -> None:
        self._read_timer = None
        transport, guard = self.transport, self.guard
        if transport.is_closing() or guard is None:
            return
        if reason == "body_timeout" and self.flow.read_paused:
            self._arm(guard.body_timeout_s, reason)  # the app is behind on reading, not the client on sending
            return
        guard.closed(reason)
        what = "request head" if reason == "header_timeout" else "request body"
        limit = guard.header_timeout_s if reason == "header_timeout" else guard.body_timeout_s
        if self._received:
            guard.timed_out.note(f"{what} not received within {limit:g} s",
                                 f"REST connection closed: the {what} did not arrive within {limit:g} s "
                                 f"({reason}, client {_peer(self.client)})")
            cycle = self.cycle
            if cycle is None or cycle.response_complete or not cycle.response_started:
                message = b'{"error":"the %s did not arrive within %g s"}' % (what.encode(), limit)
                transport.write(REQUEST_TIMEOUT % (len(message), message))
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the app's receive() sees the client gone
                cycle.message_event.set()
        transport.close()


def _peer(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"


def grpc_options(settings: Settings, listeners: int) -> list[tuple[str, Any]]:
    """The gRPC listener's share of the same hygiene: a deadline for the HTTP/2 handshake, idle connections
    closed (a graceful GOAWAY), a bound on connections and on concurrent calls per connection, and keepalive
    pings enforced (a client pinging more often than every 5 s without calls is sent away) and sent (dead clients'
    connections are found within a minute and a half)."""
    return [
        ("grpc.max_allowed_incoming_connections", listener_limit(settings.max_connections, listeners)),
        ("grpc.max_concurrent_streams", settings.grpc_max_streams),
        ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]
