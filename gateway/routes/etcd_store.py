"""The etcd route store: several replicas, one routes document under one key, every replica watching it.

Keys under the prefix (GATEWAY_ROUTES_STORE=etcd://host:2379[,...]/prefix):

    <prefix>/routes          the routes document (YAML text, its own ``revision:`` as in the file)
    <prefix>/routes-meta     {"written_at", "revision"}: written in the same transaction as the document
    <prefix>/rollouts/<m>    a rollout's state (JSON; written by the leader, fenced on its leadership)
    <prefix>/replicas/<id>   each serving process's presence (gateway/etcd/replicas.py), bound to its lease
    <prefix>/leader          the replica that drives rollouts (gateway/etcd/election.py), bound to its lease

Writes are compare-and-swap twice over: the document's ``revision`` (and, when the caller gives it, the digest of
the text it read) must be the one the caller read (else RevisionConflict / ContentConflict, 409, as with the file),
and the transaction compares the key's mod revision with the one read, so that two replicas writing at once cannot
both win and a hand edit (``etcdctl put``) made since the caller's read is never overwritten. Every replica reads
the key, then watches it from the next revision: each new revision is validated and swapped in (an invalid one is
logged, the last good table keeps serving). A broken watch (etcd restarted, the member went away) or a compacted
start revision is resumed the same way, re-read then watch from the read's revision, so no revision is missed.
While etcd cannot be reached the replica keeps serving its table and writes fail with StoreUnavailable (503).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml

from gateway.errors import ConfigError, ContentConflict, RevisionConflict, StoreUnavailable
from gateway.etcd.client import (
    EtcdClient,
    EtcdTLS,
    EtcdUnavailable,
    WatchCompacted,
    get_op,
    mod_revision_is,
    put_op,
)
from gateway.protos import etcd_kv_pb2 as kv
from gateway.protos import etcd_rpc_pb2 as pb
from gateway.routes import writer
from gateway.routes.schema import parse_routes
from gateway.routes.store import RouteStore
from gateway.routes.table import RouteTable
from gateway.settings import EtcdSettings

log = logging.getLogger("gateway.routes")

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
OPEN_TIMEOUT_S = 30.0  # a replica that cannot read its routes at start gives up (and is restarted)
_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)


def client_for(settings: EtcdSettings) -> EtcdClient:
    tls = EtcdTLS(settings.ca_file, settings.cert_file, settings.key_file) if settings.tls else None
    return EtcdClient(settings.endpoints, timeout_s=settings.timeout_s, tls=tls, user=settings.user,
                      password=settings.password)


class EtcdRouteStore(RouteStore):
    def __init__(self, settings: EtcdSettings, *, seed_file: Path | None = None,
                 client: EtcdClient | None = None) -> None:
        self.settings = settings
        self.client = client if client is not None else client_for(settings)
        self.prefix = settings.prefix.encode()
        self.key = self.prefix + b"/routes"
        self.meta_key = self.prefix + b"/routes-meta"
        self.seed_file = seed_file
        self.on_swap = []
        self.on_refused = []
        self.up = False  # the watch is established (etcd reachable)
        self.applied_mod_revision = 0  # etcd's mod revision of the document this replica serves
        self.applied_at = 0.0
        self._apply_lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self._rollouts = EtcdDocuments(self.client, self.prefix + b"/rollouts/")

    @property
    def location(self) -> str:
        return f"{self.settings.url}/routes"

    @property
    def rollouts(self) -> EtcdDocuments:
        return self._rollouts

    # --- start: the first table ----------------------------------------------------------------------------------

    async def open(self, timeout_s: float = OPEN_TIMEOUT_S) -> None:
        """Read the document (seeding an empty store from the routes file, once, by whichever replica comes
        first); until it is read and valid the replica cannot serve, so this retries up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            try:
                found, _ = await self.client.get(self.key)
                if found is None:
                    found = await self._seed()
                if found is None:
                    raise ConfigError(f"{self.location}: no routes document, and no routes file "
                                      f"({self.seed_file}) to seed it with")
                self.current = await asyncio.to_thread(self._parse, found.value)  # invalid: raises, start fails
                self.applied_mod_revision, self.applied_at = found.mod_revision, time.time()
                log.info("routes revision %s read from %s", self.current.revision, self.location)
                return
            except EtcdUnavailable as exc:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"cannot read the routes from {self.location} within {timeout_s:g} s: "
                                           f"{exc}") from exc
                log.warning("routes store %s not reachable yet: %s", self.location, exc)
                await asyncio.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
                attempt += 1

    async def _seed(self) -> kv.KeyValue | None:
        if self.seed_file is None or not self.seed_file.exists():
            return None
        text, _ = await asyncio.to_thread(writer.read, self.seed_file)
        await asyncio.to_thread(self._parse, text.encode())  # a bad seed stops the start, with the parser's message
        response = await self.client.txn([mod_revision_is(self.key, 0)], [put_op(self.key, text.encode()),
                                                                          put_op(self.meta_key, _meta(text))])
        log.info("routes store %s was empty: %s from %s", self.location,
                 "seeded" if response.succeeded else "seeded meanwhile by another replica", self.seed_file)
        found, _ = await self.client.get(self.key)
        return found

    def _parse(self, value: bytes) -> RouteTable:
        # libyaml with PyYAML's safe constructors: the same document as yaml.safe_load, several times faster (every
        # replica parses every revision; the writer validated it with yaml.safe_load itself).
        try:
            raw = yaml.load(value.decode("utf-8"), Loader=_LOADER)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.location}: not valid YAML: {exc}") from exc
        return RouteTable.from_config(parse_routes(raw, self.location, os.environ))

    def _prepare(self, routes: str | Mapping[str, Any], expected_revision: int) -> tuple[str, RouteTable]:
        text = writer.prepare(routes, expected_revision, self.location)  # ConfigError: nothing written
        return text, self._parse(text.encode("utf-8"))

    # --- watch: every replica applies every new revision -----------------------------------------------------------

    async def start(self, poll_s: float) -> None:
        self._watch = asyncio.create_task(self._watch_forever(), name="routes-watch")

    async def stop(self) -> None:
        await self._stop_watch()
        await self.client.close()

    async def _watch_forever(self) -> None:
        attempt = 0
        while True:
            try:
                found, revision = await self.client.get(self.key)
                if found is not None:
                    await self._apply(found)
                if not self.up:
                    log.info("routes store %s: watching from revision %d", self.location, revision + 1)
                self.up = True
                async for response in self.client.watch(self.key, revision + 1):
                    attempt = 0
                    for event in response.events:
                        if event.type == kv.Event.PUT:
                            await self._apply(event.kv)
                        else:
                            log.error("routes document %s was deleted; revision %s keeps serving", self.location,
                                      self.current.revision)
            except (EtcdUnavailable, WatchCompacted) as exc:
                if self.up:
                    log.warning("routes store %s: watch interrupted (%s); revision %s keeps serving, resuming",
                                self.location, exc, self.current.revision)
                self.up = False
                await asyncio.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
                attempt += 1

    async def _apply(self, found: kv.KeyValue, table: RouteTable | None = None) -> bool:
        if found.mod_revision <= self.applied_mod_revision:
            return False  # applied already (our own write, or a re-read after a reconnect)
        async with self._apply_lock:
            if found.mod_revision <= self.applied_mod_revision:
                return False
            try:
                table = table if table is not None else await asyncio.to_thread(self._parse, found.value)
            except Exception as exc:
                self.applied_mod_revision = found.mod_revision  # refused once, not again on every re-read
                log.error("routes document at etcd revision %d refused by worker pid %d, previous table (revision "
                          "%s) keeps serving: %s", found.mod_revision, os.getpid(), self.current.revision, exc)
                self._refused(exc)
                return False
            self.applied_mod_revision, self.applied_at = found.mod_revision, time.time()
            self._swap(table)
        log.info("routes revision %s applied from %s", table.revision, self.location)
        return True

    async def reload(self) -> bool:
        try:
            found, _ = await self.client.get(self.key)
        except EtcdUnavailable as exc:
            log.warning("routes store %s: %s; revision %s keeps serving", self.location, exc, self.current.revision)
            return False
        return found is not None and await self._apply(found)

    # --- reads and writes ----------------------------------------------------------------------------------------

    async def _get(self) -> kv.KeyValue:
        try:
            found, _ = await self.client.get(self.key)
        except EtcdUnavailable as exc:
            raise self._unavailable(exc) from exc
        if found is None:
            raise ConfigError(f"{self.location}: no routes document")
        return found

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"the route store {self.location} cannot be reached, nothing was written (every "
                                f"replica keeps serving its routes; this one serves revision "
                                f"{self.current.revision}): {exc}")

    async def read(self) -> tuple[str, int]:
        found = await self._get()
        text = found.value.decode("utf-8")
        return text, writer.revision_of_text(text, self.location)

    async def replace(self, routes: str | Mapping[str, Any], expected_revision: int,
                      expected_digest: str | None = None) -> int:
        text, table = await asyncio.to_thread(self._prepare, routes, expected_revision)
        return await self._swap_in(text, table, expected_revision, expected_digest)

    async def set_default(self, model: str, version: str, expected_revision: int,
                          expected_digest: str | None = None) -> int:
        found = await self._get()
        now = found.value.decode("utf-8")
        writer.check_current(self.location, now, writer.revision_of_text(now, self.location), expected_revision,
                             expected_digest)
        edited = writer.with_default_version(now, model, version, self.location)
        text, table = await asyncio.to_thread(self._prepare, edited, expected_revision)
        return await self._swap_in(text, table, expected_revision, expected_digest, found)

    async def _swap_in(self, text: str, table: RouteTable, expected_revision: int, expected_digest: str | None,
                       found: kv.KeyValue | None = None) -> int:
        """One transaction: the key still at the mod revision read, whose document is at ``expected_revision``
        (and of ``expected_digest``)."""
        found = found if found is not None else await self._get()
        now = found.value.decode("utf-8")
        writer.check_current(self.location, now, writer.revision_of_text(now, self.location), expected_revision,
                             expected_digest)
        value = text.encode("utf-8")
        try:
            response = await self.client.txn([mod_revision_is(self.key, found.mod_revision)],
                                             [put_op(self.key, value), put_op(self.meta_key, _meta(text))],
                                             [get_op(self.key)])
        except EtcdUnavailable as exc:
            raise self._unavailable(exc) from exc
        if not response.succeeded:
            kvs = response.responses[0].response_range.kvs
            at = writer.revision_of_text(kvs[0].value.decode("utf-8"), self.location) if kvs else 0
            if at == expected_revision:  # written meanwhile, keeping the revision: a hand edit
                raise ContentConflict(self.location, at)
            raise RevisionConflict(self.location, expected_revision, at)
        revision = expected_revision + 1
        log.info("routes revision %d written to %s (etcd revision %d)", revision, self.location,
                 response.header.revision)
        written = kv.KeyValue(key=self.key, value=value, mod_revision=response.header.revision)
        await self._apply(written, table)  # this replica at once; the others through their watch
        return revision

    async def written_at(self) -> float | None:
        try:
            found, _ = await self.client.get(self.meta_key)
        except EtcdUnavailable:
            return None
        if found is None:
            return None
        try:
            return float(orjson.loads(found.value)["written_at"])
        except (ValueError, KeyError, TypeError):
            return None


def _meta(text: str) -> bytes:
    return orjson.dumps({"written_at": time.time(), "revision": writer.revision_of_text(text, "routes")})


class EtcdDocuments:
    """``<prefix>/<name>`` keys. ``fence``, when set (by the rollout leader), is compared in every write: a replica
    that lost its leadership cannot overwrite what the new leader records."""

    def __init__(self, client: EtcdClient, prefix: bytes) -> None:
        self.client = client
        self.prefix = prefix
        self.fence: pb.Compare | None = None

    async def put(self, name: str, data: bytes) -> None:
        key = self.prefix + name.encode()
        try:
            response = await self.client.txn([self.fence] if self.fence is not None else [], [put_op(key, data)])
        except EtcdUnavailable as exc:
            raise StoreUnavailable(f"cannot record {name!r} in etcd: {exc}") from exc
        if not response.succeeded:
            raise StoreUnavailable(f"not recorded: this replica no longer leads the rollouts ({name!r})")

    async def get(self, name: str) -> bytes | None:
        try:
            found, _ = await self.client.get(self.prefix + name.encode())
        except EtcdUnavailable as exc:
            raise StoreUnavailable(f"cannot read {name!r} from etcd: {exc}") from exc
        return None if found is None else bytes(found.value)

    async def every(self) -> list[tuple[str, bytes]]:
        try:
            found, _ = await self.client.get_prefix(self.prefix)
        except EtcdUnavailable as exc:
            raise StoreUnavailable(f"cannot read from etcd: {exc}") from exc
        return [(item.key[len(self.prefix):].decode("utf-8", "replace"), bytes(item.value)) for item in found]
