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

Authentication: gateway/admin/auth.py; which worker serves the port: gateway/admin/listener.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway.admin.auth import REALM, BearerToken
from gateway.api.asgi import Receive, Scope, Send
from gateway.control import rollout
from gateway.errors import ConfigError
from gateway.routes import writer
from gateway.routes.store import RouteStore

log = logging.getLogger("gateway.admin")

MAX_BODY_BYTES = 4 * 1024 * 1024
_MODEL_DEFAULT = re.compile(r"^/models/(?P<model>[^/]+)/default$")
_ROLLOUT = re.compile(r"^/rollouts/(?P<model>[^/]+)(?:/(?P<action>promote|rollback|abort))?$")


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
        self._token = BearerToken(token)
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
        if not self._token.accepts(_header(scope, b"authorization")):
            raise _Answer(401, {"error": "missing or wrong admin token (Authorization: Bearer <token>)"},
                          [(b"www-authenticate", REALM.encode())])

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




class Admin:
    """The admin worker's service (gateway/admin/listener.py): this app and the rollouts it drives."""

    def __init__(self, app: AdminApp) -> None:
        self.app = app

    async def resume(self) -> None:
        if self.app.rollouts is not None:
            for ro in await self.app.rollouts.resume():
                log.info("rollout of %s resumed at %g%%", ro.model, ro.percent)

    async def close(self) -> None:
        if self.app.rollouts is not None:
            await self.app.rollouts.close()
