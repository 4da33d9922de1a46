"""The aiohttp transport of the REST backend client (gateway/backends/http.py): aiohttp's errors become gateway
errors here."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import aiohttp

from gateway.backends.endpoints import Dropped, Unsent
from gateway.backends.http import HttpResult
from gateway.errors import BackendError, BackendTimeout
from gateway.routes.schema import BackendConfig
from gateway.tls import client_context


class AiohttpTransport:
    """One aiohttp session per backend: a bounded keep-alive pool per endpoint (per host:port)."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
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

    async def send(self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str] | None,
                   limit: float, host: str | None) -> HttpResult:
        """Transport.send; limits are exact (aiohttp would round limits above 5 s up to whole seconds)."""
        session = self._open()
        name = self.config.name
        if host is not None:
            headers = {**(headers or {}), "Host": host}
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

    async def release(self, address: str) -> None:
        """Nothing per endpoint: its idle connections close after the keep-alive timeout."""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
