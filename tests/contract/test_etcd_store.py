"""The etcd route store, its client and the election against a real etcd cluster (3 members on 127.0.0.1).

Every call the gateway's own etcd client makes (Range, Put, DeleteRange, Txn, Watch, LeaseGrant, LeaseRevoke,
LeaseKeepAlive) goes to the real server here, so the wire-compatible protos are proved against etcd itself.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.dev import localstack
from gateway.errors import ConfigError, ContentConflict, RevisionConflict, StoreUnavailable
from gateway.etcd.client import EtcdClient, WatchCompacted
from gateway.etcd.election import Election
from gateway.etcd.replicas import EtcdFleet, Presence
from gateway.routes import writer
from gateway.routes.etcd_store import EtcdRouteStore
from gateway.settings import EtcdSettings

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="no etcd binary (scripts/bootstrap installs "
                                                                      "Debian's etcd-server)")

ROUTES = {"revision": 1, "backends": {"ts": {"kind": "torchserve", "url": "http://127.0.0.1:9"}},
          "models": {"m": {"default_version": 1, "versions": {
              1: {"backend": "ts", "model": "m", "version": "1"}, 2: {"backend": "ts", "model": "m", "version": "2"}}}}}
WAIT_S = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localstack.EtcdCluster]:
    etcd = localstack.start_etcd(tmp_path_factory.mktemp("etcd"), members=3)
    yield etcd
    etcd.stop()


_prefixes = iter(range(1000))


@pytest.fixture()
def settings(cluster: localstack.EtcdCluster) -> EtcdSettings:
    return EtcdSettings(endpoints=tuple(cluster.endpoints), prefix=f"/test{next(_prefixes)}", timeout_s=1.0,
                        lease_ttl_s=2)


@pytest.fixture()
def seed(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text("# seeded\n" + yaml.safe_dump(ROUTES))
    return path


@pytest.fixture()
async def stores(settings: EtcdSettings, seed: Path) -> AsyncIterator[list[EtcdRouteStore]]:
    opened = []
    for _ in range(2):
        store = EtcdRouteStore(settings, seed_file=seed)
        await store.open()
        await store.start(0)
        opened.append(store)
    yield opened
    for store in opened:
        await store.stop()


async def until(condition: object, timeout: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_seeded_once_then_cas_writes_propagate_and_stale_ones_conflict(stores: list[EtcdRouteStore]) -> None:
    a, b = stores
    text, revision = await a.read()
    assert revision == 1 and text.startswith("# seeded")  # the file's text, comments included
    new = await a.set_default("m", "2", 1)
    assert new == 2 and a.current.revision == 2  # applied by the writer at once
    await until(lambda: b.current.revision == 2)  # and by the other through its watch
    assert b.current.models["m"].default_version == "2"
    assert (await b.read())[0].startswith("# seeded")  # a one-line edit: comments kept
    with pytest.raises(RevisionConflict) as info:
        await b.set_default("m", "1", 1)  # stale
    assert info.value.http_status == 409 and info.value.current == 2
    # Two replicas writing from the same revision at once: exactly one wins.
    outcomes = await asyncio.gather(a.set_default("m", "1", 2), b.replace({**ROUTES, "models": ROUTES["models"]}, 2),
                                    return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes) == ["RevisionConflict", "int"], outcomes
    assert await a.written_at() is not None


async def test_a_hand_edit_that_keeps_the_revision_is_never_overwritten(stores: list[EtcdRouteStore]) -> None:
    """The lost edit on etcd: read, someone `etcdctl put`s an edit keeping `revision: 1`, the write based on the
    read (with the digest of its text, as the admin API's ETag carries it) -> ContentConflict; nothing written."""
    a, b = stores
    text, revision = await a.read()
    by_hand = text + "# edited by hand, revision kept\n"
    await b.client.put(b.key, by_hand.encode())
    for write in (a.replace(text.replace("default_version: 1", "default_version: 2"), revision, writer.digest(text)),
                  a.set_default("m", "2", revision, writer.digest(text))):
        with pytest.raises(ContentConflict) as info:
            await write
        assert info.value.http_status == 409 and info.value.current == 1
    assert (await a.read())[0] == by_hand
    now, _ = await a.read()  # re-read: the write goes through and keeps the hand edit
    assert await a.set_default("m", "2", revision, writer.digest(now)) == 2
    assert "# edited by hand, revision kept" in (await b.read())[0]


async def test_invalid_document_keeps_the_last_good_table(stores: list[EtcdRouteStore]) -> None:
    a, b = stores
    with pytest.raises(ConfigError):
        await a.replace({"revision": 1, "models": {"m": {"versions": {}}}}, 1)  # refused before any write
    applied = b.applied_mod_revision  # before the put: b may see it before the put's answer reaches us
    await a.client.put(a.key, b"revision: 5\nmodels: [not, a, mapping]\n")  # written behind the gateway's back
    await until(lambda: b.applied_mod_revision > applied)  # seen, refused
    assert b.current.revision == 1
    good = yaml.safe_dump({**ROUTES, "revision": 6}).encode()
    await a.client.put(a.key, good)
    await until(lambda: a.current.revision == 6 and b.current.revision == 6)


async def test_watch_resumes_without_a_gap_across_restart_and_compaction(cluster: localstack.EtcdCluster,
                                                                          settings: EtcdSettings, seed: Path) -> None:
    """A store that talks to one member only: that member goes down, revisions are written and compacted on the
    others, the member comes back: the store re-reads and serves the latest, then keeps following."""
    pinned = EtcdRouteStore(EtcdSettings(endpoints=(cluster.endpoints[0],), prefix=settings.prefix, timeout_s=1.0),
                            seed_file=seed)
    # The writer's calls may wait for a new etcd leader when the killed member led: longer than the pinned store's.
    writer = EtcdRouteStore(EtcdSettings(endpoints=tuple(cluster.endpoints[1:]), prefix=settings.prefix,
                                         timeout_s=5.0), seed_file=seed)
    await pinned.open()
    await pinned.start(0)
    await writer.open()
    try:
        await until(lambda: pinned.up)
        cluster.stop_member(0, kill=True)
        await until(lambda: not pinned.up)
        assert pinned.current.revision == 1  # keeps serving
        with pytest.raises(StoreUnavailable) as info:
            await pinned.set_default("m", "2", 1)
        assert info.value.http_status == 503 and "nothing was written" in str(info.value)
        revision = 1
        for version in ("2", "1", "2"):
            revision = await writer.set_default("m", version, revision)
        _, now = await writer.client.get(writer.key)
        async with httpx.AsyncClient(timeout=5) as http:  # compact away every revision the pinned store saw
            r = await http.post(f"http://{cluster.endpoints[1]}/v3/kv/compaction", json={"revision": now,
                                                                                         "physical": True})
            assert r.status_code == 200, r.text
        with pytest.raises(WatchCompacted):
            async for _ in writer.client.watch(writer.key, 2):
                pass
        cluster.start_member(0)
        await until(lambda: pinned.current.revision == revision, timeout=20)
        assert pinned.current.models["m"].default_version == "2"
        revision = await writer.set_default("m", "1", revision)  # and it follows on
        await until(lambda: pinned.current.revision == revision)
    finally:
        if cluster.procs[0] is None:
            cluster.start_member(0)
        cluster.wait_healthy()
        await pinned.stop()
        await writer.stop()


async def test_presence_is_lease_bound_and_one_candidate_leads(settings: EtcdSettings) -> None:
    prefix = settings.prefix.encode()
    clients = [EtcdClient(settings.endpoints, timeout_s=1.0) for _ in range(2)]
    presences = [Presence(c, prefix, 2, lambda i=i: {"applied_revision": 3 + i, "inflight": {"ts/m/1": i}},
                          identity=f"r{i}") for i, c in enumerate(clients)]
    for p in presences:
        await p.start()
    fleet = EtcdFleet(clients[0], prefix)
    await until(lambda: presences[0].lease and presences[1].lease)
    async with asyncio.timeout(WAIT_S):
        while len(await fleet.replicas()) < 2:
            await asyncio.sleep(0.05)
    assert await fleet.applied_revision() == 3 and await fleet.inflight("ts", "m", "1") == 1
    elections = [Election(c, prefix, p, f"http://r{i}") for i, (c, p) in enumerate(zip(clients, presences,
                                                                                         strict=True))]
    await asyncio.wait_for(elections[0].campaign(), WAIT_S)
    second = asyncio.create_task(elections[1].campaign())
    await asyncio.sleep(0.5)
    assert not second.done() and (await elections[1].leader()) == {"id": "r0", "admin_url": "http://r0"}
    # The leader dies without a word (its lease is no longer renewed): its keys go within the TTL, and the other
    # candidate leads.
    old_fence = elections[0].fence
    lost = asyncio.create_task(elections[0].lost())
    assert presences[0]._task is not None
    presences[0]._task.cancel()
    await asyncio.wait_for(second, 2 + WAIT_S)
    assert (await elections[0].leader()) == {"id": "r1", "admin_url": "http://r1"}
    assert [r["id"] for r in await fleet.replicas()] == ["r1"]
    # The deposed leader's fenced write is refused.
    assert old_fence is not None
    response = await clients[0].txn([old_fence], [])
    assert not response.succeeded
    lost.cancel()
    await presences[1].stop()
    async with asyncio.timeout(WAIT_S):  # a clean stop revokes the lease: its keys go at once
        while await fleet.replicas():
            await asyncio.sleep(0.05)
    assert await elections[1].leader() is None
    for c in clients:
        await c.close()
