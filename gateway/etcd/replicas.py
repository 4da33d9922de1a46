"""Each serving process's presence in etcd, and the fleet view a retire waits on.

Every process (each worker of each replica) keeps one key, ``<prefix>/replicas/<host>-<pid>``, bound to its own
lease (GATEWAY_ETCD_LEASE_TTL_S): the routes revision it applied and when, its backend calls in flight per target
("backend/model/version": n), its admin URL when it serves the admin port. It is rewritten at once when the
applied revision changes or a target's count drops to zero (what a retire waits for), else at most every
``refresh_s`` while the counts move. A process that dies stops renewing its lease and its key goes with it
within the TTL, so the fleet view lists live replicas only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway.etcd.client import EtcdClient, EtcdUnavailable

log = logging.getLogger("gateway.etcd")

PUBLISH_CHECK_S = 0.05


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def target_key(backend: str, model: str, version: str) -> str:
    return f"{backend}/{model}/{version}"


class Presence:
    """This process's lease and presence key. ``lease`` is also what the rollout election binds its key to."""

    def __init__(self, client: EtcdClient, prefix: bytes, ttl_s: int, state: Callable[[], Mapping[str, Any]], *,
                 refresh_s: float = 1.0, identity: str | None = None) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.id = identity or replica_id()
        self.key = prefix + b"/replicas/" + self.id.encode()
        self.state = state  # {"applied_revision", "applied_at", "inflight": {...}, ...}: what is published
        self.refresh_s = refresh_s
        self.lease = 0
        self.confirmed_until = 0.0  # monotonic: the lease surely lives until then (last renewal + TTL)
        self.lease_lost = asyncio.Event()  # set when the lease expired or could not be confirmed in time
        self._published: Mapping[str, Any] | None = None
        self._published_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def changed(self) -> None:
        """Publish now (the applied revision changed)."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="etcd-presence")

    async def _grant(self) -> None:
        self.lease = await self.client.grant(self.ttl_s)
        self.confirmed_until = time.monotonic() + self.ttl_s - 0.5
        self.lease_lost.clear()
        self._published = None
        log.info("etcd lease %x granted (TTL %d s) for replica %s", self.lease, self.ttl_s, self.id)

    async def _run(self) -> None:
        renew_every = max(0.5, self.ttl_s / 3)
        next_renewal = 0.0
        while True:
            try:
                if not self.lease:
                    await self._grant()
                    next_renewal = time.monotonic() + renew_every
                if time.monotonic() >= next_renewal:
                    ttl = await self.client.keepalive(self.lease)
                    if ttl <= 0:
                        log.warning("etcd lease %x of replica %s expired; taking a new one", self.lease, self.id)
                        self._lose()
                        self.lease = 0
                        continue
                    self.confirmed_until = time.monotonic() + ttl - 0.5
                    self.lease_lost.clear()  # renewed after an outage: etcd kept it (its keys too)
                    next_renewal = time.monotonic() + renew_every
                await self._publish()
            except EtcdUnavailable as exc:
                if time.monotonic() > self.confirmed_until and not self.lease_lost.is_set():
                    log.warning("replica %s: lease %x not renewed within its TTL (%s)", self.id, self.lease, exc)
                    self._lose()
                await asyncio.sleep(0.2)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PUBLISH_CHECK_S)
            self._wake.clear()

    def _lose(self) -> None:
        self.lease_lost.set()

    async def _publish(self) -> None:
        state = dict(self.state())
        last = self._published
        due = last is None or state.get("applied_revision") != last.get("applied_revision") or \
            set(state.get("inflight", {})) != set(last.get("inflight", {}))
        due = due or (state.get("inflight") != (last or {}).get("inflight")
                      and time.monotonic() - self._published_at >= self.refresh_s)
        if not due:
            return
        body = {"id": self.id, "pid": os.getpid(), "host": socket.gethostname(), "lease": f"{self.lease:x}",
                "updated_at": time.time(), **state}
        await self.client.put(self.key, orjson.dumps(body), lease=self.lease)
        self._published, self._published_at = state, time.monotonic()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.lease:  # a clean exit: the key (and a leadership bound to the lease) goes at once, not in a TTL
            with contextlib.suppress(EtcdUnavailable):
                await self.client.revoke(self.lease)
            self.lease = 0


class EtcdFleet:
    """Every live replica, from their presence keys (the Fleet of gateway/control/fleet.py)."""

    def __init__(self, client: EtcdClient, prefix: bytes) -> None:
        self.client = client
        self.prefix = prefix + b"/replicas/"

    async def replicas(self) -> list[dict[str, Any]]:
        found, _ = await self.client.get_prefix(self.prefix)
        out = []
        for item in found:
            with contextlib.suppress(ValueError):
                out.append(orjson.loads(item.value))
        return sorted(out, key=lambda r: str(r.get("id")))

    async def applied_revision(self) -> int | None:
        try:
            replicas = await self.replicas()
        except EtcdUnavailable:
            return None
        revisions = [int(r["applied_revision"]) for r in replicas if isinstance(r.get("applied_revision"), int)]
        return min(revisions) if revisions else None

    async def inflight(self, backend: str, model: str, version: str) -> int:
        key = target_key(backend, model, version)
        return sum(int(r.get("inflight", {}).get(key, 0)) for r in await self.replicas())
