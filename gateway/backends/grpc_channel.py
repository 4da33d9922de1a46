"""The gRPC channels every gRPC backend adapter uses; the one place gRPC status codes become gateway errors.

``GrpcEndpoints`` makes inference calls on one channel per endpoint of the backend (chosen, retried and ejected by
its EndpointPool, gateway/backends/endpoints.py); ``GrpcChannel`` is one channel to one address (management APIs,
and each of those endpoints). A failed call says whether it left: ``Unsent`` (no connection: safe to send
elsewhere), ``Dropped`` (the connection broke mid-call)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from gateway import tracing
from gateway.backends.endpoints import Dropped, Endpoint, EndpointCloser, EndpointPool, Unsent
from gateway.deadline import timeout_for
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidArgument,
    PayloadTooLarge,
    ResourceExhausted,
    Unimplemented,
)
from gateway.protos.services import Method
from gateway.routes.schema import BackendConfig
from gateway.tls import channel_credentials

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

# Clients default to a 4 MB receive limit (tensorflow/serving#1382); TF Serving itself allows INT32_MAX.
MAX_MESSAGE_BYTES = 1 << 30
# Keepalive within what TF Serving (grpc-core) and TorchServe (grpc-java) accept by default: a ping at most every
# 5 min during calls, none on idle connections. Measured: with keepalive_permit_without_calls both answer idle
# pings with GOAWAY ENHANCE_YOUR_CALM "too_many_pings" (without calls they allow one ping per 2 h). A finite
# keepalive also sets TCP_USER_TIMEOUT to keepalive_timeout_ms (gRPC proposal A18): a request written to a
# vanished peer (a node gone without a FIN) fails its connection within 10 s instead of hanging for minutes.
KEEPALIVE_TIME_MS = 300_000
KEEPALIVE_TIMEOUT_MS = 10_000
# A Kubernetes Service does not spread long-lived HTTP/2 connections: resolve every address of the name
# (a headless Service gives one per pod) and spread calls over them client-side.
ROUND_ROBIN_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")


class TargetNotLoaded(BackendUnavailable):
    """The backend answered, but has no such model or version (NOT_FOUND): the route table points at a target
    the backend has not loaded, which is the gateway's problem and retryable, as for the REST adapters."""


class CredentialsRefused(BackendUnavailable):
    """PERMISSION_DENIED / UNAUTHENTICATED: the backend refused the gateway's key (TorchServe token auth)."""


#: An adapter's own reading of a failed call: (code, details, where) -> an error, or None for the generic one.
Refine = Callable[[grpc.StatusCode, str, str], GatewayError | None]


def channel_target(address: str) -> str:
    """``host:port`` -> ``dns:///host:port``: the DNS resolver hands round_robin every address of the name.
    Targets that already name a resolver scheme are kept as they are."""
    return address if address.startswith(_SCHEMES) or "://" in address else f"dns:///{address}"


def channel_options(config: BackendConfig, authority: str | None = None) -> list[tuple[str, Any]]:
    """``authority``: the name an address was resolved from (the :authority the backend sees)."""
    return [
        *((("grpc.default_authority", authority),) if authority else ()),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.service_config", ROUND_ROBIN_CONFIG),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
        # Each connection attempt gets connect_timeout_s; after failures, retry at most every 5 s (the default
        # backoff grows to 120 s, failing every call fast for minutes after a backend restart).
        ("grpc.min_reconnect_backoff_ms", int(config.connect_timeout_s * 1000)),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]


class GrpcChannel:
    """One grpc.aio channel to one backend address, opened lazily in the running loop (a channel belongs to
    the loop it was created in) and closed by the adapter's close()."""

    def __init__(self, config: BackendConfig, address: str, refine: Refine | None = None,
                 authority: str | None = None) -> None:
        self.config = config
        self.address = address
        self.refine = refine
        self.authority = authority
        self._channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callables: dict[tuple[str, bool, bool], grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}

    def _open(self) -> grpc.aio.Channel:
        loop = asyncio.get_running_loop()
        if self._channel is None or self._loop is not loop:
            tls, options = self.config.tls, channel_options(self.config, self.authority)
            if tls is None:
                self._channel = grpc.aio.insecure_channel(channel_target(self.address), options=options)
            else:  # TLS, mutual when the backend's tls names the gateway's certificate; the certificate is checked
                # against the name the address was resolved from (the channel's authority)
                self._channel = grpc.aio.secure_channel(
                    channel_target(self.address), channel_credentials(tls.ca_file, tls.cert_file, tls.key_file),
                    options=options)
            self._loop, self._callables = loop, {}
        return self._channel

    def _callable(self, method: Method[Any, Any], raw: bool,
                  raw_response: bool = False) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        channel = self._open()
        key = (method.path, raw, raw_response)
        found = self._callables.get(key)
        if found is None:
            # Public paths from gateway.protos.services: generated stubs would carry the private proto packages.
            found = self._callables[key] = channel.unary_unary(
                method.path, request_serializer=None if raw else method.request.SerializeToString,
                response_deserializer=None if raw_response else method.response.FromString)
        return found

    async def call(self, method: Method[Req, Resp], request: Req | bytes, *, where: str = "",
                   timeout_s: float | None = None, metadata: Sequence[tuple[str, str]] = ()) -> Resp:
        """One unary call. `request` may be the already serialized message. The timeout is the backend's
        timeout_s (or `timeout_s`), shortened to what is left of the client's deadline. `where` names the
        target in error messages. Raises GatewayError subclasses only."""
        response: Resp = await self._invoke(method, request, False, where, timeout_s, metadata)
        return response

    async def call_raw(self, method: Method[Any, Any], request: bytes, *, where: str = "",
                       timeout_s: float | None = None, metadata: Sequence[tuple[str, str]] = ()) -> bytes:
        """:meth:`call` with the serialized request and the answer's bytes as they came (never parsed here)."""
        response: bytes = await self._invoke(method, request, True, where, timeout_s, metadata)
        return response

    async def _invoke(self, method: Method[Any, Any], request: Any, raw_response: bool, where: str,
                      timeout_s: float | None, metadata: Sequence[tuple[str, str]]) -> Any:
        limit = timeout_for(timeout_s if timeout_s is not None else self.config.timeout_s)
        call = self._callable(method, isinstance(request, bytes), raw_response)
        traced = tracing.outgoing.get()  # the W3C trace context, when the request is traced
        try:
            return await call(request, timeout=limit, metadata=(*metadata, *traced) or None)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            raise self.error(code, details, where, limit).from_backend(*failure_kind(code, details)) from None

    def state(self) -> str | None:
        """The channel's connectivity state (IDLE, CONNECTING, READY, TRANSIENT_FAILURE, SHUTDOWN); None before
        its first call."""
        if self._channel is None:
            return None
        return str(self._channel.get_state(try_to_connect=False).name)

    def error(self, code: grpc.StatusCode, details: str, where: str, limit: float) -> GatewayError:
        lost = connection_failure(code, details)
        if lost is not None:
            return lost(f"backend '{self.config.name}' is unreachable: {details}")
        refined = self.refine(code, details, where) if self.refine is not None else None
        return refined or map_status(code, details, backend=self.config.name, where=where, limit=limit)

    async def close(self) -> None:
        channel, self._channel, self._callables = self._channel, None, {}
        if channel is not None and self._loop is asyncio.get_running_loop():
            await channel.close()


# grpc-core reports its own connection failures as UNAVAILABLE, as a backend's own answer would be; the details
# tell them apart. Before the call left: no connection (refused, unreachable, timed out, unresolvable), or a stream
# the server refused. After: the connection was lost under the call.
_UNSENT = ("failed to connect", "connection refused", "dns resolution failed", "unreachable", "no route to host",
           "connection attempt timed out", "refused_stream", "refused stream", "name resolution")
_DROPPED = ("socket closed", "connection reset", "broken pipe", "goaway received", "connection closed")


def failure_kind(code: grpc.StatusCode, details: str) -> tuple[str, str]:
    """A failed call as the metrics count it: the channel's own deadline and connection failures, or the code
    the backend answered with."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ("timeout", "")
    if connection_failure(code, details) is not None:
        return ("connect", "")
    return ("status", code.name)


def connection_failure(code: grpc.StatusCode, details: str) -> type[Unsent] | type[Dropped] | None:
    """Unsent or Dropped when grpc says the connection failed (not the backend), else None."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return None
    text = details.lower()
    if any(s in text for s in _UNSENT):
        return Unsent
    if any(s in text for s in _DROPPED):
        return Dropped
    return None


class GrpcEndpoints:
    """A backend's inference calls over gRPC: one channel per endpoint of its pool, each call on the endpoint the
    pool picks (``call`` has GrpcChannel.call's signature)."""

    def __init__(self, config: BackendConfig, endpoints: EndpointPool, refine: Refine | None = None) -> None:
        self.config = config
        self.endpoints = endpoints
        self.refine = refine
        self._channels: dict[str, GrpcChannel] = {}
        self._closer = EndpointCloser(self._close_endpoint, grace_s=config.timeout_s + 1)
        endpoints.on_removed.append(self._closer)

    def channels(self) -> list[GrpcChannel]:
        """The channels opened so far, one per endpoint called."""
        return list(self._channels.values())

    def channel(self, ep: Endpoint) -> GrpcChannel:
        found = self._channels.get(ep.address)
        if found is None:
            found = self._channels[ep.address] = GrpcChannel(self.config, ep.address, self.refine, ep.host)
        return found

    async def call(self, method: Method[Req, Resp], request: Req | bytes, *, where: str = "",
                   timeout_s: float | None = None, metadata: Sequence[tuple[str, str]] = ()) -> Resp:
        async def attempt(ep: Endpoint, limit: float) -> Resp:
            return await self.channel(ep).call(method, request, where=where, timeout_s=limit, metadata=metadata)

        return await self.endpoints.call(attempt, timeout_s)

    async def call_raw(self, method: Method[Any, Any], request: bytes, *, where: str = "",
                       timeout_s: float | None = None, metadata: Sequence[tuple[str, str]] = ()) -> bytes:
        async def attempt(ep: Endpoint, limit: float) -> bytes:
            return await self.channel(ep).call_raw(method, request, where=where, timeout_s=limit, metadata=metadata)

        return await self.endpoints.call(attempt, timeout_s)

    async def _close_endpoint(self, ep: Endpoint) -> None:
        channel = self._channels.pop(ep.address, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        self._closer.cancel()
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


def map_status(code: grpc.StatusCode, details: str, *, backend: str, where: str = "",
               limit: float | None = None) -> GatewayError:
    """A backend's gRPC status -> the gateway error class (TF Serving's REST status table, in gRPC terms)."""
    name = f"backend '{backend}'"
    if code == grpc.StatusCode.UNAVAILABLE:
        return BackendUnavailable(f"{name} is unavailable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {limit:g}s" if limit is not None else ""
        return BackendTimeout(f"{name} did not answer{within}: {details}")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE):
        return InvalidArgument(details)
    if code == grpc.StatusCode.NOT_FOUND:
        return TargetNotLoaded(f"{name} has no {where or 'such model'} available: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # gRPC's own size limits say "Received/Sent message larger than max (N vs. M)".
        if "larger than max" in details or "TooLarge" in details:
            return PayloadTooLarge(f"{name}: {details}")
        return ResourceExhausted(f"{name}: {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Unimplemented(f"{name} does not implement this call: {details}")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return CredentialsRefused(f"{name} refused the gateway's credentials: {details}")
    return BackendError(f"{name} failed ({code.name}): {details}")
