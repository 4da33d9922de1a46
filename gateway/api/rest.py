"""The public REST app (raw ASGI): lifespan owns the route store and backend clients; requests go to one front."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from gateway.api import tf_rest, torchserve_rest, v2_rest
from gateway.api.asgi import (
    ClientDisconnected,
    Front,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    json_error,
    send_response,
)
from gateway.api.asgi import served_by as _served_by
from gateway.backends.base import Backends
from gateway.dataplane import DataPlane, current_route
from gateway.errors import GatewayError, NotFound
from gateway.lifecycle import install_sigterm_drain
from gateway.metrics import Metrics
from gateway.routes.store import RouteStore
from gateway.settings import Settings
from gateway.shadow import Shadows

if TYPE_CHECKING:
    from gateway.api.admin import AdminServer
    from gateway.api.grpc import GrpcFront

log = logging.getLogger("gateway")

_FALLBACK = Front(name="none", routes=(), encode_error=json_error,
                  no_route=lambda r: NotFound(f"no endpoint at {r.method} {r.path} (see /v2, /v1, /predictions)"))


def front_for(path: str) -> Front:
    if path.startswith("/v2"):
        return v2_rest.FRONT
    if path[:3].lower() == "/v1":  # TF Serving matches its paths case-insensitively
        return tf_rest.FRONT
    if path.startswith("/predictions") or path == "/ping":
        return torchserve_rest.FRONT
    return _FALLBACK


class GatewayApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.plane: DataPlane | None = None
        self.grpc: GrpcFront | None = None
        self.admin: AdminServer | None = None
        self._watch: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._admin_standby: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def startup(self) -> None:
        store = RouteStore(self.settings.routes_file)
        backends = Backends()
        for config in store.current.backends.values():
            backends.get(config)
        metrics = Metrics()
        self.plane = DataPlane(store, backends, metrics, Shadows(metrics, max_pending=self.settings.shadow_max_pending))
        store.on_swap.append(lambda table: backends.retire_unused(table.backends.values()))
        self._watch = asyncio.create_task(store.watch(self.settings.routes_poll_s))
        if self.settings.grpc_port:
            from gateway.api.grpc import GrpcFront  # grpc servicers load only when the listener is on

            self.grpc = GrpcFront(self.plane, self.settings)
            await self.grpc.start()
        if self.settings.admin_port:  # its own port and token; one worker binds it (gateway/api/admin.py)
            from gateway.api.admin import start_admin

            self.admin = await start_admin(self.settings, store, metrics, plane=self.plane)
            if self.admin is None and (self.settings.admin_token or self.settings.admin_token_file):
                # A sibling worker serves it: stand by to take over when that worker exits.
                self._admin_standby = asyncio.create_task(self._standby_admin(store, metrics))
        log.info("routes revision %s loaded from %s: %d models on %d backends", store.current.revision,
                 store.path, len(store.current.models), len(store.current.backends))
        install_sigterm_drain(self.settings.drain_s, self.begin_drain)

    async def _standby_admin(self, store: RouteStore, metrics: Metrics) -> None:
        from gateway.api.admin import start_admin

        self.admin = await start_admin(self.settings, store, metrics, plane=self.plane, standby=True)

    def begin_drain(self) -> None:
        """The first SIGTERM (gateway/lifecycle.py): not ready, ``Connection: close`` on every answer, gRPC health
        NOT_SERVING; requests are still served until the listener closes ``drain_s`` later."""
        log.info("SIGTERM: draining for %g s (not ready; connections closed after their current request), then "
                 "stopping (pid %d)", self.settings.drain_s, os.getpid())
        if self.plane is not None:
            self.plane.draining = True
        if self._admin_standby is not None:  # a draining worker does not take the admin port over
            self._admin_standby.cancel()
        if self.grpc is not None:
            self._drain_task = asyncio.create_task(self.grpc.begin_drain())

    async def shutdown(self) -> None:
        if self._admin_standby is not None:
            self._admin_standby.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._admin_standby
        if self.admin is not None:
            await self.admin.stop()
        if self.grpc is not None:
            await self.grpc.stop()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.plane is not None:
            await self.plane.shadows.close()
            await self.plane.backends.close()
            self.plane.metrics.process_exiting()

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.plane is not None, "the ASGI server must run the lifespan"
        path = scope["path"]
        if path == "/metrics":
            body, content_type = self.plane.metrics.render()
            await self._send(send, Response(200, body, content_type=content_type.encode()))
            return
        start = time.perf_counter()
        current_route.set(None)
        front = front_for(path)
        request = Request(scope, receive, self.plane, self.settings.max_body_bytes)
        try:
            response = await self.dispatch(front, request)
        except ClientDisconnected:
            return
        except GatewayError as exc:
            response = front.encode_error(exc)
            if (routed := current_route.get()) is not None:
                response.headers.extend(_served_by(routed))
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], path)
            response = front.encode_error(GatewayError(f"internal gateway error on {scope['method']} {path}"))
        await self._send(send, response)
        route = current_route.get()
        if route is not None and request.method == "POST":  # inference calls, routed (model labels stay bounded)
            t = route.target
            self.plane.metrics.request(model=t.logical_model, version=t.logical_version, variant=route.variant,
                                       backend=t.backend, protocol=front.name, code=str(response.status),
                                       seconds=time.perf_counter() - start)

    async def _send(self, send: Send, response: Response) -> None:
        """Every answer of this app; while draining each asks the client to reconnect (elsewhere) after it."""
        assert self.plane is not None
        if self.plane.draining:
            response.headers.append((b"connection", b"close"))
        await send_response(send, response)

    @staticmethod
    async def dispatch(front: Front, request: Request) -> Response:
        path, method = request.path, request.method
        for route_method, pattern, handler in front.routes:
            if route_method == method:
                match = pattern.match(path)
                if match is not None:
                    return await handler(request, match)
        raise front.no_route(request)


def create_app() -> GatewayApp:
    """uvicorn factory: settings from the environment, everything else built in the lifespan."""
    return GatewayApp(Settings.from_env())
