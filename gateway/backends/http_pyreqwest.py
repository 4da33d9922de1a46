"""The pyreqwest transport of the REST backend client (gateway/backends/http.py; Rust's reqwest and hyper): its errors
become gateway errors here.

pyreqwest's exception classes do not say whether a request left (a request sent into a connection that then closed
is a ConnectError, a read that timed out a ConnectTimeoutError): what reqwest reports as its causes does. Only a
failure in hyper's connect phase ("client error (Connect)": refused, unreachable, TLS handshake, no connection
within connect_timeout_s) is Unsent; a connection lost once the request was handed to it is Dropped (after one
replacement, as with aiohttp); any other timeout is the try's own limit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from urllib.parse import urlsplit

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import NetworkError, PyreqwestError, RequestTimeoutError

from gateway.backends.endpoints import Dropped, Unsent
from gateway.backends.http import HttpResult
from gateway.errors import BackendError, BackendTimeout
from gateway.routes.schema import BackendConfig

_CONNECT_PHASE = "client error (Connect)"  # hyper-util's marker for an error before any byte of the request left


class PyreqwestTransport:
    """One pyreqwest client per origin the backend is called at (each endpoint, each management URL): its own pool
    of at most ``max_connections`` calls in flight, like aiohttp's pool per host. An endpoint resolved from a name
    is called by that name (Host header, TLS server name, certificate check) and its client resolves the name to
    the endpoint's address only."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self._clients: dict[tuple[str, str | None], tuple[Client, str]] = {}  # (origin, host) -> client, origin
        tls = config.tls
        # https:// URLs verify against the CA file (added to the built-in roots: reqwest keeps those), mutual TLS
        # with a certificate.
        self._ca = tls.ca_file.read_bytes() if tls is not None and tls.ca_file is not None else None
        self._identity = (tls.cert_file.read_bytes() + b"\n" + tls.key_file.read_bytes()
                          if tls is not None and tls.cert_file is not None and tls.key_file is not None else None)

    def _client(self, origin: str, host: str | None) -> tuple[Client, str]:
        found = self._clients.get((origin, host))
        if found is not None:
            return found
        config = self.config
        builder = (ClientBuilder().connect_timeout(timedelta(seconds=config.connect_timeout_s))
                   .max_connections(config.max_connections).pool_idle_timeout(timedelta(seconds=30))
                   .gzip(False).brotli(False).zstd(False).deflate(False))  # bodies pass as the backend sent them
        if self._ca is not None:
            builder = builder.add_root_certificate_pem(self._ca)
        if self._identity is not None:
            builder = builder.identity_pem(self._identity)
        called = origin
        if host is not None:
            parts = urlsplit(origin)
            name, _, port = host.rpartition(":")
            builder = builder.resolve(name, parts.hostname or "", int(port))
            called = f"{parts.scheme}://{host}"
        found = self._clients[(origin, host)] = (builder.build(), called)
        return found

    async def send(self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str] | None,
                   limit: float, host: str | None) -> HttpResult:
        """Transport.send."""
        cut = url.find("/", url.find("//") + 2)
        origin, path = (url, "") if cut < 0 else (url[:cut], url[cut:])
        client, called = self._client(origin, host)
        name = self.config.name
        deadline = time.monotonic() + limit
        for attempt in (1, 2):
            builder = client.request(method, called + path).timeout(
                timedelta(seconds=max(0.001, deadline - time.monotonic())))
            if headers:
                builder = builder.headers(headers)
            if body is not None:
                builder = builder.body_bytes(body)
            try:
                resp = await builder.build().send()
            except RequestTimeoutError as exc:
                if _connecting(exc):
                    raise Unsent(f"backend '{name}' is unreachable: no connection within "
                                 f"{self.config.connect_timeout_s:g}s").from_backend("connect") from None
                late = BackendTimeout(f"backend '{name}' did not answer within {limit:g}s")
                raise late.from_backend("timeout") from None
            except NetworkError as exc:
                if _connecting(exc):
                    raise Unsent(f"backend '{name}' is unreachable: {_reason(exc)}").from_backend("connect") from None
                if attempt == 2:
                    raise Dropped(f"backend '{name}' is unreachable: {_reason(exc)}").from_backend("connect") from None
                continue
            except PyreqwestError as exc:
                raise BackendError(f"backend '{name}' failed: {_reason(exc)}").from_backend("connect") from None
            try:
                data = await resp.bytes()
            except RequestTimeoutError:
                late = BackendTimeout(f"backend '{name}' did not answer within {limit:g}s")
                raise late.from_backend("timeout") from None
            except PyreqwestError as exc:  # the answer broke off: not resent (aiohttp: a payload error)
                raise BackendError(f"backend '{name}' failed: {_reason(exc)}").from_backend("connect") from None
            return HttpResult(resp.status, bytes(data), resp.headers.get("content-type") or "")
        raise AssertionError("unreachable")

    async def release(self, address: str) -> None:
        for key in [k for k in self._clients if address == k[0] or address.startswith(k[0] + "/")]:
            client, _ = self._clients.pop(key)
            await client.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client, _ in clients:
            await client.close()


def _causes(exc: PyreqwestError) -> list[str]:
    details = getattr(exc, "details", None) or {}
    return [c.get("message", "") for c in details.get("causes") or ()]


def _connecting(exc: PyreqwestError) -> bool:
    return _CONNECT_PHASE in _causes(exc)


def _reason(exc: PyreqwestError) -> str:
    """The innermost cause (e.g. 'Connection refused (os error 111)'), else the message."""
    causes = [c for c in _causes(exc) if c]
    return causes[-1] if causes else (exc.message or type(exc).__name__)
