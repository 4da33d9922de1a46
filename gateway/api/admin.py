"""The admin API: its own port (GATEWAY_ADMIN_PORT, default 8002, on GATEWAY_ADMIN_HOST, default 127.0.0.1), its
own bearer token (GATEWAY_ADMIN_TOKEN or GATEWAY_ADMIN_TOKEN_FILE), never on the public port.

    GET  /healthz                   {"status": "ok"} (no token: a liveness probe; says nothing else)
    GET  /routes                    {"revision", "applied_revision", "path", "text"}; ETag: "<revision>"
    PUT  /routes                    body: routes as YAML or JSON; If-Match: <revision> (required)
                                    200 {"revision": new} | 400 validator's message | 409 {"revision": current}
                                    | 428 without If-Match
    POST /models/{m}/default        {"version": "2", "revision": N}: the instant switch (same answers as PUT;
                                    404 for an unknown model)
    POST /rollouts                  start a canary rollout (gateway/control/rollout.py): {"model", "to_version",
                                    "from_version"?, "steps"? [5, 25, 50, 100], "dwell_s"?, "max_error_rate"?,
                                    "max_p99_ratio"?, "max_p99_s"?, "min_requests"?, "sticky_header"?, "who"?,
                                    lifecycle: "deploy"? (TorchServe {"archive", "workers"?, "timeout_s"?},
                                    TF Serving {"timeout_s"?}),
                                    "warmup"? [v2 bodies] | {"body", "count"}, "retire"? bool}
    GET  /rollouts                  every known rollout; GET /rollouts/{m}: one rollout's state and history
    POST /rollouts/{m}/promote|rollback|abort   {"who"?, "why"?}: end it by hand (409 when it is not running)

Writes go through gateway.routes.writer (validated, compare-and-swap on the revision, atomic, locked); this
process applies a successful write at once, every other worker within GATEWAY_ROUTES_POLL_S. `applied_revision`
is this process's table only.

It runs in the gateway process, on the same event loop as the public app: a second uvicorn.Server over a socket
bound here, started and stopped by the public app's lifespan (signals stay with the main server). File writes
run in a thread, never on the loop.

Security: with no token configured the admin port is never opened (the reason is logged and the gateway serves
without it). Tokens are compared in constant time (hmac.compare_digest); anything but /healthz without the right
`Authorization: Bearer <token>` is a 401.

Several workers (GATEWAY_WORKERS > 1): exactly one serves the admin port. The workers race for an exclusive
flock on ``<tmpdir>/gateway-admin-<host>-<port>.lock``; the winner binds (a plain bind, no SO_REUSEPORT, so a
second binder could never share the port) and the others log that a sibling serves it. The kernel drops the lock
with its holder, so a restarted worker can take over. The lock tells a sibling from a foreign program holding
the port: the latter is an error in the log, not a crash — the public ports keep serving either way. The
workers that lost the race stand by (``start_admin(standby=True)``): when the holder exits, one of them takes
the lock, binds, and resumes the running rollouts from their state files.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import socket
import tempfile
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import uvicorn

from gateway.api.asgi import Receive, Scope, Send
from gateway.control import rollout
from gateway.errors import ConfigError
from gateway.routes import writer
from gateway.routes.store import RouteStore
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.dataplane import DataPlane
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.admin")

MAX_BODY_BYTES = 4 * 1024 * 1024
_MODEL_DEFAULT = re.compile(r"^/models/(?P<model>[^/]+)/default$")
_ROLLOUT = re.compile(r"^/rollouts/(?P<model>[^/]+)(?:/(?P<action>promote|rollback|abort))?$")


class AdminSetupError(Exception):
    """The admin API cannot start (no token, unreadable token file...); the message says why."""


def load_token(settings: Settings) -> bytes:
    """The admin token from GATEWAY_ADMIN_TOKEN or GATEWAY_ADMIN_TOKEN_FILE; exactly one must be set."""
    if settings.admin_token and settings.admin_token_file:
        raise AdminSetupError("both GATEWAY_ADMIN_TOKEN and GATEWAY_ADMIN_TOKEN_FILE are set; set one")
    if settings.admin_token_file:
        try:
            token = settings.admin_token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AdminSetupError(f"cannot read GATEWAY_ADMIN_TOKEN_FILE {settings.admin_token_file}: {exc}") from exc
        if not token:
            raise AdminSetupError(f"GATEWAY_ADMIN_TOKEN_FILE {settings.admin_token_file} is empty")
        return token.encode()
    if settings.admin_token and settings.admin_token.strip():
        return settings.admin_token.strip().encode()
    raise AdminSetupError("neither GATEWAY_ADMIN_TOKEN nor GATEWAY_ADMIN_TOKEN_FILE is set, and the admin port is "
                          "never opened without a token (GATEWAY_ADMIN_PORT=0 turns the admin API off)")


class _Answer(Exception):
    """Ends a request with this status and JSON body."""

    def __init__(self, status: int, body: Mapping[str, Any], headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or []


def _error(status: int, message: str, **extra: Any) -> _Answer:
    return _Answer(status, {"error": message, **extra})


class AdminApp:
    """The admin ASGI app (raw ASGI, like the public one: four endpoints need no framework)."""

    def __init__(self, store: RouteStore, token: bytes, lock_timeout_s: float = writer.LOCK_TIMEOUT_S,
                 rollouts: rollout.Orchestrator | None = None) -> None:
        self.store = store
        self.rollouts = rollouts
        self._token_digest = hashlib.sha256(token).digest()
        self.lock_timeout_s = lock_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            answer = await self._route(scope, receive)
        except _Answer as exc:
            answer = exc
        except Exception:
            log.exception("admin API: unhandled error on %s %s", scope["method"], scope["path"])
            answer = _error(500, "internal error in the admin API (see the gateway log)")
        body = orjson.dumps(answer.body)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"), *answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive) -> _Answer:
        method, path = scope["method"], scope["path"]
        if path == "/healthz":
            _allow(method, "GET")
            return _Answer(200, {"status": "ok"})
        self._authorize(scope)
        if path == "/routes":
            if method == "PUT":
                return await self._put_routes(scope, receive)
            _allow(method, "GET", "PUT")
            return await self._get_routes()
        if (m := _MODEL_DEFAULT.match(path)) is not None:
            _allow(method, "POST")
            return await self._set_default(m.group("model"), await _body(receive))
        if path == "/rollouts" or _ROLLOUT.match(path):
            return await self._rollouts(method, path, receive)
        raise _error(404, f"no admin endpoint at {path} (GET /routes, PUT /routes, POST /models/{{m}}/default, "
                          "GET /healthz)")

    async def _rollouts(self, method: str, path: str, receive: Receive) -> _Answer:
        if self.rollouts is None:
            raise _error(503, "rollouts are not available in this process (no metrics to guard them with)")
        m = _ROLLOUT.match(path)
        if m is None and method == "GET":
            return _Answer(200, {"rollouts": [rollout.public(r) for r in self.rollouts.rollouts.values()]})
        if m is None or m.group("action"):
            _allow(method, *(("GET", "POST") if m is None else ("POST",)))
            body = await _body(receive)
            try:
                spec = orjson.loads(body) if body.strip() else {}
            except orjson.JSONDecodeError as exc:
                raise _error(400, f"body must be JSON: {exc}") from None
            if not isinstance(spec, dict):
                raise _error(400, "body must be a JSON object")
        else:
            _allow(method, "GET")
            spec = {}
        who = str(spec.get("who") or "admin-api")
        try:
            if m is None:
                ro = await self.rollouts.start(spec, who)
            elif (action := m.group("action")) is None:
                ro = self.rollouts.get(m.group("model"))
            else:
                ro = await getattr(self.rollouts, action)(m.group("model"), who, str(spec.get("why") or ""))
        except rollout.RolloutError as exc:
            raise _error(exc.status, str(exc)) from None
        except ConfigError as exc:
            raise _error(400, str(exc)) from None
        except writer.LockTimeout as exc:
            raise _error(503, str(exc)) from None
        return _Answer(200, rollout.public(ro))

    def _authorize(self, scope: Scope) -> None:
        presented = _header(scope, b"authorization") or b""
        scheme, _, token = presented.partition(b" ")
        # Constant time: digests of equal length, compared with compare_digest, whatever was presented.
        ok = hmac.compare_digest(hashlib.sha256(token.strip()).digest(), self._token_digest)
        if not ok or scheme.lower() != b"bearer":
            raise _Answer(401, {"error": "missing or wrong admin token (Authorization: Bearer <token>)"},
                          [(b"www-authenticate", b'Bearer realm="gateway-admin"')])

    async def _get_routes(self) -> _Answer:
        text, revision = await asyncio.to_thread(writer.read, self.store.path)
        return _Answer(200, {"revision": revision, "applied_revision": self.store.current.revision,
                             "path": str(self.store.path), "text": text},
                       [(b"etag", f'"{revision}"'.encode())])

    async def _put_routes(self, scope: Scope, receive: Receive) -> _Answer:
        raw_match = _header(scope, b"if-match")
        if raw_match is None:
            raise _error(428, "If-Match: <revision> is required (the revision you read with GET /routes)")
        expected = _revision(raw_match.decode("latin-1").strip().removeprefix("W/").strip('"'), "If-Match")
        body = await _body(receive)
        content_type = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        routes: str | Mapping[str, Any]
        try:
            if content_type == b"application/json" or content_type.endswith(b"+json"):
                routes = orjson.loads(body)
            else:
                routes = body.decode("utf-8")
        except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _error(400, f"unreadable body: {exc}") from None
        return await self._write(writer.apply, routes, expected)

    async def _set_default(self, model: str, body: bytes) -> _Answer:
        try:
            spec = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _error(400, f'body must be JSON {{"version": "2", "revision": N}}: {exc}') from None
        if not isinstance(spec, dict) or "version" not in spec or "revision" not in spec:
            raise _error(400, 'body must be JSON {"version": "2", "revision": N} (revision: the one you read)')
        version = spec["version"]
        if isinstance(version, bool) or not isinstance(version, str | int):
            raise _error(400, f"version must be a string or an integer, got {version!r}")
        version = str(version)
        if version.isascii() and version.isdigit():
            version = str(int(version))  # as the parser reads it: "02" is version 2
        expected = _revision(spec["revision"], "revision")
        answer = await self._write(writer.set_default_version, model, version, expected)
        answer.body = {"model": model, "default_version": version, **answer.body}
        return answer

    async def _write(self, write: Callable[..., int], *args: Any) -> _Answer:
        try:
            revision = await asyncio.to_thread(write, self.store.path, *args, lock_timeout_s=self.lock_timeout_s)
        except writer.RevisionConflict as exc:
            raise _error(409, str(exc), revision=exc.current) from None
        except writer.UnknownModel as exc:
            raise _error(404, str(exc)) from None
        except ConfigError as exc:
            raise _error(400, str(exc)) from None
        except writer.LockTimeout as exc:
            raise _error(503, str(exc)) from None
        log.info("admin API: routes revision %d written to %s", revision, self.store.path)
        self.store.reload()  # this process at once; the other workers within their poll interval
        return _Answer(200, {"revision": revision, "applied_revision": self.store.current.revision},
                       [(b"etag", f'"{revision}"'.encode())])


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise _Answer(405, {"error": f"method {method} not allowed here (allowed: {', '.join(allowed)})"},
                      [(b"allow", ", ".join(allowed).encode())])


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _revision(value: Any, what: str) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _error(400, f"{what} must be a revision number (an integer >= 0), got {value!r}")
    return value


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _error(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _error(413, f"body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


# --- the listener ----------------------------------------------------------------------------------------------

_TASK_NAME = "admin-api"


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


_UVICORN_LOG = logging.getLogger("uvicorn.error")
if not any(isinstance(f, _QuietAdminServer) for f in _UVICORN_LOG.filters):
    _UVICORN_LOG.addFilter(_QuietAdminServer())


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn.Server that leaves signal handling to the process's main server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class AdminServer:
    def __init__(self, app: AdminApp, sock: socket.socket, lock_fd: int | None) -> None:
        self.app = app
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._lock_fd = lock_fd
        config = uvicorn.Config(app, interface="asgi3", lifespan="off", ws="none", log_config=None,
                                access_log=False, proxy_headers=False, server_header=False,
                                timeout_graceful_shutdown=5)
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
        if self.app.rollouts is not None:
            await self.app.rollouts.close()  # the routes stay at the last applied step; resumed on restart
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


STANDBY_POLL_S = 0.5


async def start_admin(settings: Settings, store: RouteStore, metrics: Metrics | None = None,
                      plane: DataPlane | None = None, *, standby: bool = False) -> AdminServer | None:
    """Start the admin listener when this process should serve it; None (with the reason logged) otherwise.
    ``plane``: the process's data plane (rollouts warm up through it and drain on its in-flight counts).
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
    orchestrator = None
    if metrics is not None:  # rollouts run in this (the admin) worker's loop, guarded by every worker's metrics
        orchestrator = rollout.Orchestrator(store.path, lambda: metrics.render()[0].decode("utf-8"), store.reload,
                                            plane=plane, metrics=metrics)
    server = AdminServer(AdminApp(store, token, rollouts=orchestrator), sock, lock_fd)
    try:
        await server.start()
        if orchestrator is not None:
            try:
                for ro in await orchestrator.resume():
                    log.info("rollout of %s resumed at %g%%", ro.model, ro.percent)
            except Exception:
                log.exception("admin API: resuming rollouts failed")
    except asyncio.CancelledError:  # a standby that began draining while taking over: leave nothing behind
        await server.stop()
        raise
    except Exception as exc:
        log.error("admin API not started on %s: %s", where, exc)
        await server.stop()
        return None
    log.info("admin API listening on http://%s (pid %d)", where, os.getpid())
    return server
