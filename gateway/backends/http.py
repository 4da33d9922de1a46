"""The pooled HTTP client every REST backend adapter uses; the one place aiohttp errors become gateway errors.

``call`` sends an inference-side request to one of the backend's endpoints (chosen, retried and ejected by its
EndpointPool, gateway/backends/endpoints.py); ``request`` sends one to a single URL (management APIs); both are a
``send``: one try, whose failures say whether the request left (``Unsent``: safe to send elsewhere; ``Dropped``:
the connection broke after it went out). Replacing aiohttp means replacing ``send`` and ``_open`` only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

import aiohttp

from gateway import tracing
from gateway.backends.endpoints import Dropped, Endpoint, EndpointPool, Unsent
from gateway.deadline import timeout_for
from gateway.errors import BackendError, BackendTimeout
from gateway.routes.schema import BackendConfig
from gateway.tls import client_context


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    body: bytes
    content_type: str


class HttpClient:
    """One aiohttp session per backend: a bounded keep-alive pool per endpoint and a timeout on every call."""

    def __init__(self, config: BackendConfig, endpoints: EndpointPool | None = None) -> None:
        self.config = config
        self.endpoints = endpoints
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            tls = self.config.tls  # https:// URLs verify against its CA (else the system's), mutual TLS with a cert
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.config.max_connections, ttl_dns_cache=10,
                                             keepalive_timeout=30, ssl=True if tls is None else
                                             client_context(tls.ca_file, tls.cert_file, tls.key_file))
            self._session = aiohttp.ClientSession(
                connector=connector,
                skip_auto_headers=("User-Agent",),
                auto_decompress=False,
            )
        return self._session

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

    async def send(self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str] | None,
                   limit: float, host: str | None = None) -> HttpResult:
        """One try within ``limit`` seconds (exact: aiohttp would round limits above 5 s up to whole seconds).
        A pooled keep-alive connection that the backend closed as it was reused is replaced once (the request
        never reached it). No connection -> Unsent, connection lost -> Dropped (both 503), no answer in time ->
        504, other client errors -> 502. ``host``: the name the URL's address was resolved from."""
        session = self._open()
        name = self.config.name
        traced = tracing.outgoing.get()  # the W3C trace context, when the request is traced
        if traced or host is not None:
            headers = {**(headers or {}), **dict(traced), **({"Host": host} if host is not None else {})}
        tls_name = host.rsplit(":", 1)[0] if host is not None and url.startswith("https:") else None
        deadline = time.monotonic() + limit
        for attempt in (1, 2):
            timeout = aiohttp.ClientTimeout(total=max(0.001, deadline - time.monotonic()),
                                            sock_connect=self.config.connect_timeout_s, ceil_threshold=math.inf)
            try:
                async with session.request(method, url, data=body, headers=headers, timeout=timeout,
                                           server_hostname=tls_name) as resp:
                    data = await resp.read()
                    return HttpResult(resp.status, data, resp.headers.get("Content-Type", ""))
            except aiohttp.ConnectionTimeoutError:
                # Checked before TimeoutError (it is one): no connection within connect_timeout_s means down.
                raise Unsent(f"backend '{name}' is unreachable: no connection within "
                             f"{self.config.connect_timeout_s:g}s").from_backend("connect") from None
            except aiohttp.ClientConnectorError as exc:
                raise Unsent(f"backend '{name}' is unreachable: {_reason(exc)}").from_backend("connect") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 2:
                    raise Dropped(f"backend '{name}' is unreachable: {_reason(exc)}").from_backend("connect") from None
            except TimeoutError:
                late = BackendTimeout(f"backend '{name}' did not answer within {limit:g}s")
                raise late.from_backend("timeout") from None
            except aiohttp.ClientError as exc:
                raise BackendError(f"backend '{name}' failed: {_reason(exc)}").from_backend("connect") from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
