"""etcd v3 client over the gateway's own wire-compatible protos (gateway/protos/etcd_*.proto): KV, Txn, Watch,
leases and authentication; every call has a deadline.

Why not a client from PyPI: the maintained asyncio one (aetcd) takes one host and no TLS settings, and the others
are unmaintained or pin old grpcio/protobuf. The handful of calls the gateway needs is small, and grpc.aio with
the project's own protos (as for TF Serving and TorchServe) keeps one gRPC stack, one set of pins and typed
messages (tests/contract/test_etcd_store.py runs every call it makes against a real etcd cluster).

Several endpoints: calls go to one member at a time; a member that cannot be reached (UNAVAILABLE) is left for
the next one, and an idempotent call (a read, a lease keep-alive) is retried there at once. A write whose outcome
is unknown (its deadline passed) is never retried: it raises :class:`EtcdUnavailable` and the caller re-reads.
Watches ask for a member with a leader (``hasleader``), so a member cut off from its cluster cancels them and the
watcher moves on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gateway.errors import StoreUnavailable
from gateway.protos import etcd_kv_pb2 as kv
from gateway.protos import etcd_rpc_pb2 as pb
from gateway.protos import services
from gateway.protos.services import Method

log = logging.getLogger("gateway.etcd")

# etcd refuses client pings more often than every 5 s (--grpc-keepalive-min-time); a dead member's connection is
# noticed by the call deadlines long before a keepalive would. Reconnect backoff stays short: the first write
# after etcd comes back must not wait out a backoff grown during the outage.
_CHANNEL_OPTIONS = (("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
                    ("grpc.enable_retries", 0), ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                    ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 500))
_RETRY_ON = frozenset({grpc.StatusCode.UNAVAILABLE})


class EtcdUnavailable(StoreUnavailable):
    """No member of the etcd cluster answered (or the outcome of a write is unknown); nothing is known written."""


class WatchCompacted(Exception):
    """The watch's start revision was compacted away: re-read the key and watch again from the current one."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"watch start revision compacted (oldest kept: {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class EtcdTLS:
    ca_file: Path | None = None  # None: the system's roots
    cert_file: Path | None = None  # client certificate (mutual TLS), with key_file
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return None if path is None else path.read_bytes()

        return grpc.ssl_channel_credentials(root_certificates=read(self.ca_file),
                                            private_key=read(self.key_file), certificate_chain=read(self.cert_file))


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range or watch cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class EtcdClient:
    def __init__(self, endpoints: Sequence[str], *, timeout_s: float = 2.0, tls: EtcdTLS | None = None,
                 user: str | None = None, password: str | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self._tls = tls
        self._credentials = tls.credentials() if tls is not None else None
        self._user, self._password = user, password
        self._token: str | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._current = 0

    # --- plumbing ------------------------------------------------------------------------------------------------

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(endpoint, self._credentials, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
            self._channels[endpoint] = channel
        return channel

    def _rotate(self, endpoint: str) -> None:
        if self.endpoints[self._current % len(self.endpoints)] == endpoint:
            self._current = (self._current + 1) % len(self.endpoints)

    def _order(self) -> list[str]:
        start = self._current % len(self.endpoints)
        return self.endpoints[start:] + self.endpoints[:start]

    async def _metadata(self, endpoint: str) -> tuple[tuple[str, str], ...]:
        if self._user is None:
            return ()
        if self._token is None:
            method = services.ETCD_AUTHENTICATE
            call = self._channel(endpoint).unary_unary(method.path, request_serializer=method.request.SerializeToString,
                                                       response_deserializer=method.response.FromString)
            response = await call(pb.AuthenticateRequest(name=self._user, password=self._password or ""),
                                  timeout=self.timeout_s)
            self._token = response.token
        return (("token", self._token),)

    async def _unary(self, method: Method[Any, Any], request: Any, *, idempotent: bool) -> Any:
        """One call, on the first member that answers, within ``timeout_s`` in all. UNAVAILABLE (the member is
        down, or its cluster is electing a leader: nothing was applied) moves on to the next member, round after
        round; so does a passed deadline for an idempotent call (a write's outcome is unknown then: raised)."""
        deadline = time.monotonic() + self.timeout_s
        last: BaseException | None = None
        reauthenticated = False
        while True:
            for endpoint in self._order():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EtcdUnavailable(f"no etcd member answered {method.name} within {self.timeout_s:g} s "
                                          f"({', '.join(self.endpoints)}): {_describe(last)}") from last
                call = self._channel(endpoint).unary_unary(
                    method.path, request_serializer=method.request.SerializeToString,
                    response_deserializer=method.response.FromString)
                try:
                    return await call(request, timeout=left, metadata=await self._metadata(endpoint))
                except grpc.aio.AioRpcError as exc:
                    last = exc
                    code = exc.code()
                    if code == grpc.StatusCode.UNAUTHENTICATED and self._user is not None and not reauthenticated:
                        self._token, reauthenticated = None, True  # an expired auth token: authenticate again
                        continue
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED and not idempotent:
                        self._rotate(endpoint)
                        raise EtcdUnavailable(f"etcd at {endpoint} did not answer {method.name} within "
                                              f"{self.timeout_s:g} s; the outcome is unknown") from exc
                    if code not in _RETRY_ON and code != grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise EtcdUnavailable(f"etcd at {endpoint} refused {method.name}: {code.name} "
                                              f"{exc.details()}") from exc
                    self._rotate(endpoint)
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    # --- KV ------------------------------------------------------------------------------------------------------

    async def get(self, key: bytes) -> tuple[kv.KeyValue | None, int]:
        """The key (None when absent) and the store's revision at the read (linearizable)."""
        response = await self._unary(services.ETCD_RANGE, pb.RangeRequest(key=key), idempotent=True)
        return (response.kvs[0] if response.kvs else None), response.header.revision

    async def get_prefix(self, prefix: bytes) -> tuple[list[kv.KeyValue], int]:
        response = await self._unary(services.ETCD_RANGE, pb.RangeRequest(key=prefix, range_end=prefix_end(prefix)),
                                     idempotent=True)
        return list(response.kvs), response.header.revision

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """The revision of the write."""
        response = await self._unary(services.ETCD_PUT, pb.PutRequest(key=key, value=value, lease=lease),
                                     idempotent=False)
        return int(response.header.revision)

    async def delete(self, key: bytes) -> int:
        response = await self._unary(services.ETCD_DELETE_RANGE, pb.DeleteRangeRequest(key=key), idempotent=False)
        return int(response.deleted)

    async def txn(self, compare: Sequence[pb.Compare], success: Sequence[pb.RequestOp],
                  failure: Sequence[pb.RequestOp] = ()) -> pb.TxnResponse:
        response: pb.TxnResponse = await self._unary(
            services.ETCD_TXN, pb.TxnRequest(compare=compare, success=success, failure=failure), idempotent=False)
        return response

    # --- leases --------------------------------------------------------------------------------------------------

    async def grant(self, ttl_s: int) -> int:
        response = await self._unary(services.ETCD_LEASE_GRANT, pb.LeaseGrantRequest(TTL=ttl_s), idempotent=False)
        if response.error:
            raise EtcdUnavailable(f"etcd refused a lease: {response.error}")
        return int(response.ID)

    async def revoke(self, lease: int) -> None:
        try:
            await self._unary(services.ETCD_LEASE_REVOKE, pb.LeaseRevokeRequest(ID=lease), idempotent=True)
        except EtcdUnavailable as exc:
            if "not found" not in str(exc):
                raise

    async def keepalive(self, lease: int) -> int:
        """Renew the lease once; its remaining TTL (0: it has expired, the keys bound to it are gone)."""
        method = services.ETCD_LEASE_KEEPALIVE
        last: BaseException | None = None
        for endpoint in self._order():
            stream = self._channel(endpoint).stream_stream(
                method.path, request_serializer=method.request.SerializeToString,
                response_deserializer=method.response.FromString)
            call = stream(timeout=self.timeout_s, metadata=await self._metadata(endpoint))
            try:
                await call.write(pb.LeaseKeepAliveRequest(ID=lease))
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise EtcdUnavailable(f"etcd at {endpoint} closed the keep-alive stream")
                return int(response.TTL)
            except grpc.aio.AioRpcError as exc:
                last = exc
                self._rotate(endpoint)
            finally:
                call.cancel()
        raise EtcdUnavailable(f"no etcd member renewed lease {lease:x}: {_describe(last)}") from last

    # --- watch ---------------------------------------------------------------------------------------------------

    async def watch(self, key: bytes, start_revision: int, *, prefix: bool = False) -> AsyncIterator[pb.WatchResponse]:
        """Responses with events for ``key`` (or every key under it) from ``start_revision`` on, until the stream
        breaks: EtcdUnavailable (the member went away, or lost its leader), WatchCompacted (the start revision is
        gone: re-read, then watch from the current revision). The caller re-reads and resumes either way."""
        method = services.ETCD_WATCH
        endpoint = self._order()[0]
        stream = self._channel(endpoint).stream_stream(
            method.path, request_serializer=method.request.SerializeToString,
            response_deserializer=method.response.FromString)
        metadata = (*await self._metadata(endpoint), ("hasleader", "true"))
        call = stream(metadata=metadata)  # long-lived: no deadline; a dead member ends it (keepalive, hasleader)
        try:
            create = pb.WatchCreateRequest(key=key, start_revision=start_revision, progress_notify=True)
            if prefix:
                create.range_end = prefix_end(key)
            await asyncio.wait_for(call.write(pb.WatchRequest(create_request=create)), self.timeout_s)
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise EtcdUnavailable(f"etcd at {endpoint} closed the watch")
                if response.compact_revision:
                    raise WatchCompacted(response.compact_revision)
                if response.canceled:
                    raise EtcdUnavailable(f"etcd at {endpoint} cancelled the watch: {response.cancel_reason}")
                yield response
        except grpc.aio.AioRpcError as exc:
            self._rotate(endpoint)
            raise EtcdUnavailable(f"watch on etcd at {endpoint} broke: {_describe(exc)}") from exc
        except TimeoutError as exc:
            self._rotate(endpoint)
            raise EtcdUnavailable(f"etcd at {endpoint} did not take the watch within {self.timeout_s:g} s") from exc
        finally:
            call.cancel()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name} {exc.details()}"
    return repr(exc)


# --- building transactions ---------------------------------------------------------------------------------------

def mod_revision_is(key: bytes, mod_revision: int) -> pb.Compare:
    """The key was last written at ``mod_revision`` (0: the key does not exist)."""
    return pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=mod_revision)


def value_is(key: bytes, value: bytes) -> pb.Compare:
    return pb.Compare(key=key, target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=value)


def put_op(key: bytes, value: bytes, lease: int = 0) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))


def get_op(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key))
