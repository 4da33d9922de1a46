"""Which worker serves the admin port, and the embedded server that serves it.

Several workers (GATEWAY_WORKERS > 1): exactly one serves the admin port. The workers race for an exclusive
flock on ``<tmpdir>/gateway-admin-<host>-<port>.lock``; the winner binds (a plain bind, no SO_REUSEPORT, so a
second binder could never share the port) and the others log that a sibling serves it. The kernel drops the lock
with its holder, so a restarted worker can take over. The lock tells a sibling from a foreign program holding
the port: the latter is an error in the log, not a crash — the public ports keep serving either way. The
workers that lost the race stand by: when the holder exits, one of them takes the lock, binds, and resumes the
running rollouts.

The admin app runs in the gateway process, on the same event loop as the public app: a second uvicorn.Server over
a socket bound here (signals stay with the main server).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import socket
import tempfile
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Protocol

import uvicorn

from gateway.admin.auth import AdminSetupError, load_token
from gateway.settings import Settings
from gateway.tls import UvicornContext

log = logging.getLogger("gateway.admin")

STANDBY_POLL_S = 0.5
_TASK_NAME = "admin-api"


class AdminService(Protocol):
    """What the admin worker runs: the admin ASGI app and what it drives (rollouts)."""

    @property
    def app(self) -> Callable[..., Awaitable[None]]:
        """The admin ASGI app."""

    async def resume(self) -> None:
        """Pick up work a previous admin worker left (running rollouts)."""

    async def close(self) -> None:
        """Stop that work; it is resumed by the next admin worker."""


ServiceFactory = Callable[[bytes], AdminService]


class _QuietAdminServer(logging.Filter):
    """Drops uvicorn's own info lines from the admin server's task ("Started server process [pid]" a second time,
    "Shutting down"...), which would read as the main server's; warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return True
        return task is None or task.get_name() != _TASK_NAME


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn.Server that leaves signal handling to the process's main server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class AdminServer:
    def __init__(self, service: AdminService, sock: socket.socket, lock_fd: int | None,
                 tls: UvicornContext | None = None) -> None:
        self.service = service
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._lock_fd = lock_fd
        uvicorn_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _QuietAdminServer) for f in uvicorn_log.filters):
            uvicorn_log.addFilter(_QuietAdminServer())
        config = uvicorn.Config(service.app, interface="asgi3", lifespan="off", ws="none", log_config=None,
                                access_log=False, proxy_headers=False, server_header=False,
                                timeout_graceful_shutdown=5, ssl_context_factory=tls)
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]), name=_TASK_NAME)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._server.started:
            if self._task.done():
                self._release()
                self._task.result()  # raises what stopped it
                raise AdminSetupError("the admin server stopped during startup")
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise AdminSetupError(f"the admin server did not start within {timeout_s:g} s")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        await self.service.close()  # the routes stay at the last applied step; rollouts resume on restart
        if self._task is not None:
            self._server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                self._server.force_exit = True
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            except Exception:
                log.exception("admin API: error while stopping")
            self._task = None
        with contextlib.suppress(OSError):
            self.sock.close()
        self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None


def _listener_lock(host: str, port: int) -> tuple[bool, int | None]:
    """(may bind, lock fd to hold). False: a sibling worker holds the lock and serves the port. When the lock
    file cannot be opened, bind anyway (a plain bind still lets only one process listen)."""
    safe_host = re.sub(r"[^A-Za-z0-9_.-]", "_", host)
    path = Path(tempfile.gettempdir()) / f"gateway-admin-{safe_host}-{port}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("admin API: cannot open the listener lock %s (%s); binding without it", path, exc)
            return True, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False, None
    return True, fd


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family = infos[0][0]
    # create_server sets SO_REUSEADDR (a restart may rebind past TIME_WAIT) and never SO_REUSEPORT.
    return socket.create_server(infos[0][4][:2], family=family, backlog=64)


async def start_admin(settings: Settings, make_service: ServiceFactory, *,
                      standby: bool = False) -> AdminServer | None:
    """Start the admin listener when this process should serve it; None (with the reason logged) otherwise.
    ``make_service`` builds the app (and its rollouts) for the token once this process has won the port.
    ``standby``: while a sibling worker holds the listener lock, wait for it (polling every STANDBY_POLL_S) and
    take over when that worker exits (a rolling restart, a crash) instead of returning None; cancel to stop."""
    if not settings.admin_port:
        return None
    where = f"{settings.admin_host}:{settings.admin_port}"
    try:
        token = load_token(settings)
    except AdminSetupError as exc:
        log.warning("admin API not started: %s", exc)
        return None
    may_bind, lock_fd = _listener_lock(settings.admin_host, settings.admin_port)
    if not may_bind and not standby:
        log.info("admin API on %s is served by another worker of this gateway, not by pid %d", where, os.getpid())
        return None
    while not may_bind:
        await asyncio.sleep(STANDBY_POLL_S)
        may_bind, lock_fd = _listener_lock(settings.admin_host, settings.admin_port)
    if standby:
        log.info("admin API on %s: taking over from a worker that exited (pid %d)", where, os.getpid())
    try:
        sock = _bind(settings.admin_host, settings.admin_port)
    except OSError as exc:
        log.error("admin API not started: cannot listen on %s: %s", where, exc)
        if lock_fd is not None:
            os.close(lock_fd)
        return None
    cert, key = settings.admin_tls_cert_file, settings.admin_tls_key_file
    tls = UvicornContext(cert, key, settings.tls_reload_s) if cert is not None and key is not None else None
    server = AdminServer(make_service(token), sock, lock_fd, tls)
    try:
        try:  # before the first admin request: it must see the rollouts as resumed, never their stale state
            await server.service.resume()
        except Exception:
            log.exception("admin API: resuming rollouts failed")
        await server.start()
    except asyncio.CancelledError:  # a standby that began draining while taking over: leave nothing behind
        await server.stop()
        raise
    except Exception as exc:
        log.error("admin API not started on %s: %s", where, exc)
        await server.stop()
        return None
    log.info("admin API listening on %s://%s (pid %d)", "https" if tls is not None else "http", where, os.getpid())
    return server


class AdminSeat:
    """This worker's part in the admin election: serve the port, or stand by to take it over."""

    def __init__(self, settings: Settings, make_service: ServiceFactory) -> None:
        self.settings = settings
        self.make_service = make_service
        self.server: AdminServer | None = None
        self._standby: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.server = await start_admin(self.settings, self.make_service)
        if self.server is None and self.settings.admin_port and (
                self.settings.admin_token or self.settings.admin_token_file):
            # A sibling worker serves it: stand by to take over when that worker exits.
            self._standby = asyncio.create_task(self._take_over())

    async def _take_over(self) -> None:
        self.server = await start_admin(self.settings, self.make_service, standby=True)

    def stand_down(self) -> None:
        """A draining worker does not take the admin port over."""
        if self._standby is not None:
            self._standby.cancel()

    async def stop(self) -> None:
        if self._standby is not None:
            self._standby.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._standby
        if self.server is not None:
            await self.server.stop()
            self.server = None


