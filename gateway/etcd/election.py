"""Which replica drives the rollouts: leader election on an etcd lease.

The candidates are the replicas' admin workers. A candidate creates ``<prefix>/leader`` (value: its id and admin
URL) bound to its presence lease, in a transaction that succeeds only while the key does not exist; the others
watch the key and try again when it goes. The key goes when the leader's lease ends: a clean stop revokes it at
once, a crash (kill -9) lets it expire within GATEWAY_ETCD_LEASE_TTL_S. A leader that cannot renew its lease
within the TTL steps down on its own side too (it cannot know that it still leads), and every rollout state it
writes is fenced on the leader key's creation revision, so a deposed leader cannot overwrite the new one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson

from gateway.etcd.client import EtcdClient, EtcdUnavailable, WatchCompacted, get_op, put_op
from gateway.etcd.replicas import Presence
from gateway.protos import etcd_kv_pb2 as kv
from gateway.protos import etcd_rpc_pb2 as pb

log = logging.getLogger("gateway.etcd")


class Election:
    def __init__(self, client: EtcdClient, prefix: bytes, presence: Presence, admin_url: str) -> None:
        self.client = client
        self.key = prefix + b"/leader"
        self.presence = presence
        self.value = orjson.dumps({"id": presence.id, "admin_url": admin_url})
        self.leading = False
        self.fence: pb.Compare | None = None  # set while leading: the leader key's creation revision

    async def leader(self) -> dict[str, Any] | None:
        """Who leads now ({"id", "admin_url"}), or None."""
        found, _ = await self.client.get(self.key)
        if found is None:
            return None
        try:
            value: dict[str, Any] = orjson.loads(found.value)
        except ValueError:
            return None
        return value

    async def campaign(self) -> None:
        """Until this replica leads."""
        while True:
            try:
                if await self._try():
                    return
                await self._until_vacant()
            except (EtcdUnavailable, WatchCompacted) as exc:
                log.debug("election: %s", exc)
                await asyncio.sleep(0.3)

    async def _try(self) -> bool:
        while not self.presence.lease or self.presence.lease_lost.is_set():
            await asyncio.sleep(0.05)
        lease = self.presence.lease
        absent = pb.Compare(key=self.key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=0)
        response = await self.client.txn([absent], [put_op(self.key, self.value, lease)], [get_op(self.key)])
        if response.succeeded:
            return self._lead(response.header.revision)
        kvs = response.responses[0].response_range.kvs
        if kvs and kvs[0].value == self.value and kvs[0].lease == lease:
            return self._lead(kvs[0].create_revision)  # ours already (a retry after a lost answer)
        return False

    def _lead(self, create_revision: int) -> bool:
        self.leading = True
        self.fence = pb.Compare(key=self.key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL,
                                create_revision=create_revision)
        log.info("replica %s leads the rollouts (leader key revision %d)", self.presence.id, create_revision)
        return True

    async def _until_vacant(self) -> None:
        found, revision = await self.client.get(self.key)
        if found is None:
            return
        async for response in self.client.watch(self.key, revision + 1):
            if any(e.type == kv.Event.DELETE for e in response.events):
                return

    async def lost(self) -> str:
        """Returns (with the reason) when this replica no longer leads: its key went or changed hands, or its
        lease could not be renewed within the TTL."""
        lease_lost = asyncio.create_task(self.presence.lease_lost.wait())
        key_lost = asyncio.create_task(self._key_lost())
        try:
            done, _ = await asyncio.wait({lease_lost, key_lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (lease_lost, key_lost):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.leading, self.fence = False, None
        reason = "its lease was not renewed within the TTL" if lease_lost in done else "the leader key went"
        log.warning("replica %s no longer leads the rollouts: %s", self.presence.id, reason)
        return reason

    async def _key_lost(self) -> None:
        assert self.fence is not None
        mine = self.fence.create_revision
        while True:
            try:
                found, revision = await self.client.get(self.key)
                if found is None or found.create_revision != mine:
                    return
                async for response in self.client.watch(self.key, revision + 1):
                    for event in response.events:
                        if event.type == kv.Event.DELETE or event.kv.create_revision != mine:
                            return
            except (EtcdUnavailable, WatchCompacted):
                await asyncio.sleep(0.3)  # the lease watch decides when etcd stays away

    async def resign(self) -> None:
        """Give the leadership up at once (a clean stop): delete the key if it is still ours."""
        if self.fence is None:
            return
        with contextlib.suppress(EtcdUnavailable):
            await self.client.txn([self.fence], [pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(
                key=self.key))])
        self.leading, self.fence = False, None
