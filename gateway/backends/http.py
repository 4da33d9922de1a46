"""The pooled HTTP client every REST backend adapter uses; the one place aiohttp errors become gateway errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from gateway import tracing
from gateway.deadline import timeout_for
from gateway.errors import BackendError, BackendTimeout, BackendUnavailable
from gateway.routes.schema import BackendConfig
from gateway.tls import client_context


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    body: bytes
    content_type: str


class HttpClient:
    """One aiohttp session per backend: a bounded keep-alive pool and a timeout on every call."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            tls = self.config.tls  # https:// URLs verify against its CA (else the system's), mutual TLS with a cert
            connector = aiohttp.TCPConnector(limit=self.config.max_connections, ttl_dns_cache=10,
                                             keepalive_timeout=30, ssl=True if tls is None else
                                             client_context(tls.ca_file, tls.cert_file, tls.key_file))
            self._session = aiohttp.ClientSession(
                connector=connector,
                skip_auto_headers=("User-Agent",),
                auto_decompress=False,
            )
        return self._session

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None, timeout_s: float | None = None) -> HttpResult:
        """Send once, and once more if a pooled keep-alive connection was closed under us (inference and
        status calls are idempotent). Connection failures -> 503, timeouts -> 504, other client errors -> 502."""
        session = self._open()
        name = self.config.name
        traced = tracing.outgoing.get()  # the W3C trace context, when the request is traced
        if traced:
            headers = {**(headers or {}), **dict(traced)}
        for attempt in (1, 2):
            # Recomputed per attempt: a retry gets what is left of the client's deadline, not a fresh budget.
            limit = timeout_for(timeout_s or self.config.timeout_s)
            timeout = aiohttp.ClientTimeout(total=limit, sock_connect=self.config.connect_timeout_s)
            try:
                async with session.request(method, url, data=body, headers=headers, timeout=timeout) as resp:
                    data = await resp.read()
                    return HttpResult(resp.status, data, resp.headers.get("Content-Type", ""))
            except aiohttp.ConnectionTimeoutError:
                # Checked before TimeoutError (it is one): no connection within connect_timeout_s means down.
                raise BackendUnavailable(f"backend '{name}' is unreachable: no connection within "
                                         f"{self.config.connect_timeout_s:g}s").from_backend("connect") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    unreachable = BackendUnavailable(f"backend '{name}' is unreachable: {_reason(exc)}")
                    raise unreachable.from_backend("connect") from None
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
