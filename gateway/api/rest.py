"""REST dispatch: the path picks the front (v2, TF Serving, TorchServe), the caller is authenticated (when
GATEWAY_AUTH_FILE turns that on), the front decodes and answers."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from gateway.api import tf_rest, torchserve_rest, v2_rest
from gateway.api.asgi import (
    ClientDisconnected,
    Front,
    Handler,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    json_error,
    send_response,
)
from gateway.api.asgi import served_by as _served_by
from gateway.api.pages import Pages
from gateway.dataplane import DataPlane
from gateway.errors import GatewayError, NotFound

log = logging.getLogger("gateway")

# Liveness and readiness: served without credentials while GATEWAY_AUTH_OPEN has "health" (probes send none).
HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/ping"})

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


def find(front: Front, method: str, path: str) -> tuple[Handler, re.Match[str]] | None:
    """The front's first route for this method and path (None: the front's no_route answers)."""
    for route_method, pattern, handler in front.routes:
        if route_method == method:
            match = pattern.match(path)
            if match is not None:
                return handler, match
    return None


class RestApp:
    """The public REST app (raw ASGI): one front per path prefix, and the gateway's own pages (/metrics, /openapi.json,
    /docs); errors in the front's protocol."""

    def __init__(self, plane: DataPlane, max_body_bytes: int) -> None:
        self.plane = plane
        self.max_body_bytes = max_body_bytes
        self.pages = Pages()

    def front_for(self, path: str) -> Front:
        front = front_for(path)
        return self.pages.front if front is _FALLBACK and self.pages.serves(path) else front

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        auth = self.plane.auth
        request = Request(scope, receive, self.plane, self.max_body_bytes)
        if path == "/metrics" and request.method == "GET":
            await self._send(send, self.metrics(request))  # scrapes: no access log line, no span
            return
        front = self.front_for(path)
        exchange = self.plane.begin(f"{request.method} {front.name}", request.text_header)
        detail = ""
        try:
            if auth is not None and not (auth.open_health and path in HEALTH_PATHS):
                exchange.caller = auth.authenticate(request.header(b"authorization"), request.header(b"x-api-key"))
            response = await self.dispatch(front, request)
        except ClientDisconnected:
            self.plane.measure(exchange, front.name, "499", detail="the client went away")  # nginx's code for it
            return
        except GatewayError as exc:
            response, detail = _refusal(front.encode_error, exc), exc.message
            if exchange.route is not None:
                response.headers.extend(_served_by(exchange.route))
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], path)
            response = front.encode_error(GatewayError(f"internal gateway error on {scope['method']} {path}"))
        await self._send(send, response)
        self.plane.measure(exchange, front.name, str(response.status), received=request.received,
                           sent=len(response.body), request_id=request.text_header("x-request-id"), detail=detail)

    def metrics(self, request: Request) -> Response:
        auth = self.plane.auth
        if auth is not None and not auth.open_metrics:
            try:
                auth.may_read_metrics(auth.authenticate(request.header(b"authorization"),
                                                        request.header(b"x-api-key")))
            except GatewayError as exc:
                return _refusal(json_error, exc)
        return self.pages.render_metrics(request)

    async def _send(self, send: Send, response: Response) -> None:
        """Every answer of this app; while draining each asks the client to reconnect (elsewhere) after it."""
        if self.plane.draining:
            response.headers.append((b"connection", b"close"))
        await send_response(send, response)

    @staticmethod
    async def dispatch(front: Front, request: Request) -> Response:
        found = find(front, request.method, request.path)
        if found is None:
            raise front.no_route(request)
        handler, match = found
        return await handler(request, match)


def _refusal(encode: Callable[[GatewayError], Response], error: GatewayError) -> Response:
    """The error in the front's protocol, with the headers it carries (WWW-Authenticate, Retry-After...)."""
    response = encode(error)
    response.headers.extend((name.encode("latin-1"), value.encode("latin-1")) for name, value in error.headers)
    return response
