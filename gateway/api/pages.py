"""The gateway's own pages on the public port: /metrics, and the OpenAPI document with its docs page."""

from __future__ import annotations

import asyncio
import re

from gateway.api.asgi import Front, Request, Response, json_error, wrong_method
from gateway.errors import GatewayError, NotFound


class Pages:
    """A front of its own (GET only, errors as `{"error": ...}`). The OpenAPI document, the docs page and its assets
    are built by gateway/api/openapi.py on their first request, in a thread: it imports pydantic, which must never
    load on the inference path nor block the loop; each process keeps what it built."""

    def __init__(self) -> None:
        self._built: dict[str, Response] = {}
        self.front = Front(name="gateway", routes=(
            ("GET", re.compile(r"^/metrics$"), self.metrics),
            ("GET", re.compile(r"^/openapi\.json$"), self.document),
            ("GET", re.compile(r"^/docs$"), self.document),
            ("GET", re.compile(r"^/docs/(?P<asset>[^/]+)$"), self.document),
        ), encode_error=json_error, no_route=self.no_route)

    @staticmethod
    def serves(path: str) -> bool:
        return path in ("/metrics", "/openapi.json", "/docs") or path.startswith("/docs/")

    @staticmethod
    def render_metrics(request: Request) -> Response:
        """Prometheus text, or OpenMetrics (with exemplars) when the scraper's Accept header asks for it."""
        body, content_type = request.plane.metrics.render(request.text_header("accept") or "")
        return Response(200, body, content_type=content_type.encode())

    async def metrics(self, request: Request, match: re.Match[str]) -> Response:
        return self.render_metrics(request)

    async def document(self, request: Request, match: re.Match[str]) -> Response:
        built = self._built.get(request.path)
        if built is None:
            built = await asyncio.to_thread(_build, request.path)
            self._built[request.path] = built
        return Response(200, built.body, built.content_type)  # a copy: the answer may get headers added

    def no_route(self, request: Request) -> GatewayError:
        return wrong_method(self.front.routes, request) or NotFound(f"no page at {request.path} (see /docs)")


def _build(path: str) -> Response:
    from gateway.api import openapi

    found = openapi.page(path)
    if found is None:
        raise NotFound(f"no page at {path} (see /docs)")
    body, content_type = found
    return Response(200, body, content_type=content_type)
