"""Minimal ASGI plumbing for the hot path: read a bounded body, send a response. No framework per request."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.codecs.jsonio import dumps_error
from gateway.errors import GatewayError, MethodNotAllowed, PayloadTooLarge
from gateway.routes.table import Hints

if TYPE_CHECKING:
    from gateway.dataplane import DataPlane
    from gateway.routes.table import Route

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON = b"application/json"


class ClientDisconnected(Exception):
    """The client went away before sending its whole body; nothing to answer."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class Request:
    scope: Scope
    receive: Receive
    plane: DataPlane
    max_body_bytes: int
    received: int | None = None  # the body's size, once read

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.scope["headers"]:
            if key == name:
                return bytes(value)
        return None

    def text_header(self, name: str) -> str | None:
        value = self.header(name.encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    def hints(self, parameters: Mapping[str, Any] | None = None, request_id: str | None = None) -> Hints:
        """Routing hints: headers (sticky keys, QA overrides) and, for v2 bodies, the request's parameters."""
        rid = request_id or self.text_header("x-request-id")
        return Hints(header=self.text_header, parameters=parameters or {}, request_id=rid)

    async def body(self) -> bytes:
        """The whole body, refused with 413 as soon as it passes the limit (declared or streamed)."""
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLarge(f"request body of {int(declared)} bytes exceeds the limit of "
                                  f"{self.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                self.received = size
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


Handler = Callable[[Request, "re.Match[str]"], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Front:
    """One client protocol: its routes, how its errors look, and what an unmatched path under it means."""

    name: str
    routes: tuple[tuple[str, re.Pattern[str], Handler], ...]
    encode_error: Callable[[GatewayError], Response]
    no_route: Callable[[Request], GatewayError]


def json_error(error: GatewayError) -> Response:
    """`{"error": "..."}` with the error's status: the v2 and TF Serving REST error body."""
    return Response(error.http_status, dumps_error({"error": error.message}), headers=error_headers(error))


def error_headers(error: GatewayError) -> list[tuple[bytes, bytes]]:
    """What an error adds to its answer whatever the front: a 405 names the methods the path takes."""
    if isinstance(error, MethodNotAllowed) and error.allow:
        return [(b"allow", ", ".join(error.allow).encode())]
    return []


def wrong_method(routes: tuple[tuple[str, re.Pattern[str], Handler], ...], request: Request) -> GatewayError | None:
    """405 (with the methods it takes) when another method's route takes the path; None when none does."""
    allow = tuple(sorted({method for method, pattern, _ in routes if pattern.match(request.path)}))
    if not allow:
        return None
    return MethodNotAllowed(f"{request.method} is not allowed on {request.path} (allowed: {', '.join(allow)})", allow)


def served_by(route: Route) -> list[tuple[bytes, bytes]]:
    """Response headers naming what served the request."""
    t = route.target
    headers = [
        (b"x-model-name", t.logical_model.encode()),
        (b"x-model-version", t.logical_version.encode()),
        (b"x-backend", t.backend.encode()),
    ]
    if route.variant:
        headers.append((b"x-model-variant", route.variant.encode()))
    return headers


async def send_response(send: Send, response: Response) -> None:
    headers = [(b"content-type", response.content_type), (b"content-length", str(len(response.body)).encode()),
               *response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
