"""The pooled HTTP client every REST backend adapter uses, over a swappable transport (aiohttp or pyreqwest).

``call`` sends an inference-side request to one of the backend's endpoints (chosen, retried and ejected by its
EndpointPool, gateway/backends/endpoints.py); ``request`` sends one to a single URL (management APIs); both are a
``send``: one try, whose failures say whether the request left (``Unsent``: safe to send elsewhere; ``Dropped``:
the connection broke after it went out). The transport (GATEWAY_HTTP_CLIENT) is the one place a client library's
errors become gateway errors: gateway/backends/http_aiohttp.py, gateway/backends/http_pyreqwest.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway import tracing
from gateway.backends.endpoints import Endpoint, EndpointCloser, EndpointPool
from gateway.deadline import timeout_for
from gateway.routes.schema import BackendConfig
from gateway.settings import HTTP_CLIENTS


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    body: bytes
    content_type: str


class Transport(Protocol):
    """One HTTP client library behind :class:`HttpClient`."""

    async def send(self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str] | None,
                   limit: float, host: str | None) -> HttpResult:
        """One try within ``limit`` seconds (exact), connecting within the backend's connect_timeout_s. A pooled
        keep-alive connection that the backend closed as it was reused is replaced once (the request never reached
        it). No connection -> Unsent, connection lost -> Dropped (both 503), no answer in time -> BackendTimeout
        (504), other client errors -> BackendError (502). ``host``: the authority (name:port) the URL's address
        was resolved from: the Host header and the TLS server name to use."""
        ...

    async def release(self, address: str) -> None:
        """An endpoint left the pool: what the transport holds for it only (connections, a client) goes."""
        ...

    async def close(self) -> None: ...


def open_transport(kind: str, config: BackendConfig) -> Transport:
    if kind == "pyreqwest":
        from gateway.backends.http_pyreqwest import PyreqwestTransport  # loaded only when chosen

        return PyreqwestTransport(config)
    if kind != "aiohttp":
        raise ValueError(f"HTTP client {kind!r} is not one of {', '.join(HTTP_CLIENTS)}")
    from gateway.backends.http_aiohttp import AiohttpTransport

    return AiohttpTransport(config)


class HttpClient:
    """One backend's HTTP client: a bounded keep-alive pool per endpoint and a timeout on every call."""

    def __init__(self, config: BackendConfig, endpoints: EndpointPool | None = None, *,
                 client: str = "aiohttp") -> None:
        self.config = config
        self.endpoints = endpoints
        self.kind = client
        self.transport = open_transport(client, config)
        self._closer: EndpointCloser | None = None
        if endpoints is not None:
            self._closer = EndpointCloser(lambda ep: self.transport.release(ep.address),
                                          grace_s=config.timeout_s + 1)
            endpoints.on_removed.append(self._closer)

    async def call(self, method: str, path: str, *, body: bytes | None = None,
                   headers: Mapping[str, str] | None = None) -> HttpResult:
        """``path`` on one of the backend's inference endpoints (balanced, retried where safe)."""
        assert self.endpoints is not None, "a client for inference calls is built with its endpoints"

        def attempt(ep: Endpoint, limit: float) -> Awaitable[HttpResult]:
            return self.send(method, ep.address + path, body=body, headers=headers, limit=limit, host=ep.host)

        return await self.endpoints.call(attempt)

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None, timeout_s: float | None = None) -> HttpResult:
        """One URL (a management API): the backend's timeout_s (or ``timeout_s``), shortened to the client's
        deadline."""
        return await self.send(method, url, body=body, headers=headers,
                               limit=timeout_for(timeout_s or self.config.timeout_s))

    def send(self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str] | None,
             limit: float, host: str | None = None) -> Awaitable[HttpResult]:
        """One try (:meth:`Transport.send`), with the W3C trace context when the request is traced."""
        traced = tracing.outgoing.get()
        if traced:
            headers = {**(headers or {}), **dict(traced)}
        return self.transport.send(method, url, body=body, headers=headers, limit=limit, host=host)

    async def close(self) -> None:
        if self._closer is not None:
            self._closer.cancel()
        await self.transport.close()
