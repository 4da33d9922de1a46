"""The admin API app (FastAPI): its own port (GATEWAY_ADMIN_PORT, default 8002, on GATEWAY_ADMIN_HOST, default
127.0.0.1) and its own bearer token, never on the public port. OpenAPI at /openapi.json, docs at /docs.

    GET  /healthz                   {"status": "ok"} (no token: a liveness probe; says nothing else)
    GET  /routes                    {"revision", "etag", "applied_revision", "path", "text"}; ETag: "<rev>-<digest>"
    GET  /replicas                  every serving process: applied revision, calls in flight; the rollout leader
    PUT  /routes                    body: routes as YAML or JSON; If-Match: <ETag> (required; a bare revision checks
                                    the number only)
    POST /models/{m}/default        {"version": "2", "revision": N, "etag"?}: the instant switch
    POST /rollouts                  start a canary rollout (gateway/control/rollout_spec.py: RolloutSpec)
    GET  /rollouts[/{m}]            every rollout / one rollout's state and history
    POST /rollouts/{m}/promote|rollback|abort   {"who"?, "why"?}: end it by hand

With the etcd store one replica leads the rollouts; the others forward rollout writes to it (rollouts_api.py).

Every refusal is ``{"error": "..."}`` with the status of its class in the error tree (gateway/errors.py), mapped
by the one handler below; a revision conflict adds the current ``revision``. Bodies over 4 MiB are refused (413)
before they are read whole. Endpoints: gateway/admin/routes_api.py, rollouts_api.py; bodies: models.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gateway import __version__
from gateway.admin import rollouts_api, routes_api
from gateway.admin.auth import BearerToken
from gateway.admin.models import Health
from gateway.admin.state import AdminState
from gateway.api.asgi import Receive, Scope, Send
from gateway.errors import GatewayError, RevisionConflict, Unauthenticated
from gateway.routes.store import RouteStore

if TYPE_CHECKING:
    from gateway.control.fleet import Fleet
    from gateway.control.orchestrator import Orchestrator
    from gateway.etcd.election import Election
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.admin")

MAX_BODY_BYTES = 4 * 1024 * 1024


def create_admin_app(store: RouteStore, token: bytes, rollouts: Orchestrator | None = None,
                     fleet: Fleet | None = None, election: Election | None = None) -> FastAPI:
    app = FastAPI(title="Model Gateway admin API", version=__version__,
                  description="Routes and rollouts of the gateway, on their own port and token.",
                  redoc_url=None)
    app.state.admin = AdminState(store=store, token=BearerToken(token), rollouts=rollouts, fleet=fleet,
                                 election=election)
    app.include_router(routes_api.router)
    app.include_router(rollouts_api.router)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness (no token needed)")
    async def healthz() -> Health:
        return Health()

    app.openapi = _without_422(app.openapi)  # type: ignore[method-assign]
    app.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    return app


def _without_422(build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """FastAPI documents a 422 with its own body on every operation that validates input; this API answers 400
    with ErrorBody instead (_invalid_request), as its REFUSALS document, so the 422 goes."""
    def openapi() -> dict[str, Any]:
        doc = build()
        for item in doc["paths"].values():
            for operation in item.values():
                operation["responses"].pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            doc.get("components", {}).get("schemas", {}).pop(name, None)
        return doc
    return openapi


# --- the one exception handler table: every refusal as {"error": ...} with its class's status ------------------

def _answer(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
    if isinstance(exc, RevisionConflict):
        return _answer(exc.http_status, exc.message, revision=exc.current)
    if isinstance(exc, Unauthenticated):
        return _answer(exc.http_status, exc.message, {"www-authenticate": exc.challenge})
    return _answer(exc.http_status, exc.message)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for error in exc.errors():
        where = ".".join(str(x) for x in error.get("loc", ()) if x != "body") or "body"
        problems.append(f"{where}: {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return _answer(400, "; ".join(problems) or "invalid request")


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 404:
        return _answer(404, f"no admin endpoint at {request.method} {request.url.path} (see /docs)")
    if exc.status_code == 405:  # Starlette names one route's methods; the path may have several routes
        allowed = sorted(m.upper() for template, ops in request.app.openapi()["paths"].items()
                         if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), request.url.path) for m in ops)
        return _answer(405, f"method {request.method} not allowed on {request.url.path} (allowed: "
                            f"{', '.join(allowed)})", {"allow": ", ".join(allowed)})
    return _answer(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("admin API: unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _answer(500, "internal error in the admin API (see the gateway log)")


class AdminApp:
    """The admin ASGI app as served: the body limit and ``Cache-Control: no-store`` around the FastAPI app."""

    def __init__(self, store: RouteStore, token: bytes, rollouts: Orchestrator | None = None,
                 fleet: Fleet | None = None, election: Election | None = None) -> None:
        self.api = create_admin_app(store, token, rollouts, fleet, election)
        self.rollouts = rollouts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)  # type: ignore[arg-type]
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await _send_too_large(send)
            return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise _TooLarge
            return message

        async def no_store(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"cache-control", b"no-store")]
            await send(message)

        try:
            await self.api(scope, limited_receive, no_store)  # type: ignore[arg-type]
        except _TooLarge:
            await _send_too_large(send)


class _TooLarge(Exception):
    pass


async def _send_too_large(send: Send) -> None:
    response = _answer(413, f"body over {MAX_BODY_BYTES} bytes")
    await send({"type": "http.response.start", "status": 413,
                "headers": [*response.raw_headers, (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": response.body})


class Admin:
    """The admin worker's service (gateway/admin/listener.py): this app and the rollouts it drives. With an
    ``election`` (etcd store) the rollouts run only while this replica leads: resumed from the shared state when
    it is elected, stopped (their state kept for the next leader) when it is not any more."""

    def __init__(self, app: AdminApp, election: Election | None = None, metrics: Metrics | None = None) -> None:
        self.app = app
        self.election = election
        self.metrics = metrics
        self._leading: asyncio.Task[None] | None = None

    async def resume(self) -> None:
        if self.app.rollouts is None:
            return
        if self.election is not None:
            self._leading = asyncio.create_task(self._lead(self.election, self.app.rollouts), name="rollout-leader")
            return
        await self._resume(self.app.rollouts)

    @staticmethod
    async def _resume(rollouts: Orchestrator) -> None:
        for ro in await rollouts.resume():
            log.info("rollout of %s resumed at %g%%", ro.model, ro.percent)

    async def _lead(self, election: Election, rollouts: Orchestrator) -> None:
        while True:
            await election.campaign()
            rollouts.fence(election.fence)
            self._leader_metric(True)
            try:
                await self._resume(rollouts)
            except Exception:
                log.exception("resuming the rollouts failed")
            await election.lost()
            self._leader_metric(False)
            await rollouts.close()
            rollouts.forget()
            rollouts.fence(None)

    def _leader_metric(self, leading: bool) -> None:
        if self.metrics is not None:
            self.metrics.rollout_leader.set(1 if leading else 0)

    async def close(self) -> None:
        if self._leading is not None:
            self._leading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._leading
        if self.app.rollouts is not None:
            await self.app.rollouts.close()
        if self.election is not None:
            await self.election.resign()  # the next leader takes over at once, not after the lease's TTL
            self._leader_metric(False)
