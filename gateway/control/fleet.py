"""What a retire waits for: every serving process has applied the promotion's routes and has no call in flight to
the old version. One gateway's workers on one host (its shared metrics), or every replica through etcd
(gateway/etcd/replicas.py)."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.dataplane import DataPlane


class Fleet(Protocol):
    async def applied_revision(self) -> int | None:
        """The oldest routes revision a live worker or replica serves; None when unknown."""

    async def inflight(self, backend: str, model: str, version: str) -> int:
        """Calls in flight to that backend target, summed over every live worker or replica."""

    async def replicas(self) -> list[dict[str, Any]]:
        """Each live serving process as it reports itself (id, applied_revision, inflight per target...)."""


class LocalFleet:
    """The workers of this gateway on this host: gateway_routes_revision (least over live workers) and
    gateway_inflight_requests (livesum) merged over the live workers' metric files; this process alone with one
    worker."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def applied_revision(self) -> int | None:
        applied = await asyncio.to_thread(self.plane.metrics.applied_revision_all_workers)
        return self.plane.store.current.revision if applied is None else applied

    async def inflight(self, backend: str, model: str, version: str) -> int:
        return await asyncio.to_thread(self.plane.inflight.total, backend, model, version)

    async def replicas(self) -> list[dict[str, Any]]:
        applied = await self.applied_revision()
        inflight = {f"{b}/{m}/{v}": n for (b, m, v), n in self.plane.inflight.counts.items()}
        return [{"id": f"{socket.gethostname()}-{os.getpid()}", "applied_revision": applied,
                 "inflight": inflight, "workers": "every worker of this gateway (applied: the oldest; inflight: "
                                                  "this process's)"}]
