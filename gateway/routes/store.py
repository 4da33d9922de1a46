"""Route store: holds the current RouteTable, watches the routes document, validates and swaps; writes go through it.

One interface, :class:`RouteStore`, two stores: :class:`FileRouteStore` (the routes file: the embedded default of
one machine, every worker watching the same file) and the etcd store (gateway/routes/etcd_store.py: several
replicas watching one key). The admin API, the CLI behind it and the rollouts talk only to this interface.

Readers take ``store.current`` once per request, so a swap never mixes versions inside one request; an invalid
new document is refused and the last good table keeps serving. Reads, parses and writes of the file run in a
thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from gateway.errors import Conflict, RevisionConflict
from gateway.routes import writer
from gateway.routes.schema import RoutesConfig, load_routes, parse_routes
from gateway.routes.table import RouteTable
from gateway.settings import Settings

log = logging.getLogger(__name__)

EDIT_ATTEMPTS = 8  # a rollout's edit re-reads and retries when another write got in between


class Documents(Protocol):
    """Small JSON documents kept beside the routes, by name (a rollout's state per model)."""

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes | None: ...

    async def every(self) -> list[tuple[str, bytes]]: ...


class RouteStore(ABC):
    """Where the routes document lives: read it, write it (validated, compare-and-swap on its ``revision`` and,
    when the caller gives it, the digest of the text it read: gateway/routes/writer.py), watch it and serve its
    table (``current``). ``on_swap`` listeners are told of every new table."""

    current: RouteTable
    on_swap: list[Callable[[RouteTable], None]]
    on_refused: list[Callable[[Exception], None]]  # told of every document it refused

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the document is stored, for a person (a path, an etcd URL and key; never a credential)."""

    async def open(self) -> None:  # noqa: B027  (most stores read their first table when built)
        """Read the first table; the process cannot serve before."""

    @abstractmethod
    async def start(self, poll_s: float) -> None:
        """Begin watching the document (every new valid revision is swapped in) until :meth:`stop`."""

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def reload(self) -> bool:
        """Re-read the document; True when a new table was swapped in. Never raises: a bad document is logged and
        the previous table keeps serving."""

    @abstractmethod
    async def read(self) -> tuple[str, int]:
        """The document's text and its revision."""

    @abstractmethod
    async def replace(self, routes: str | Mapping[str, Any], expected_revision: int,
                      expected_digest: str | None = None) -> int:
        """The whole document, if still at ``expected_revision`` (else RevisionConflict) and, when given, its text
        still of ``expected_digest`` (else ContentConflict); the new revision, applied in this process at once."""

    @abstractmethod
    async def set_default(self, model: str, version: str, expected_revision: int,
                          expected_digest: str | None = None) -> int:
        """The instant switch: one model's default_version; the new revision, applied here at once."""

    @abstractmethod
    async def written_at(self) -> float | None:
        """When the document was last written (epoch seconds), when the store knows."""

    @property
    @abstractmethod
    def rollouts(self) -> Documents:
        """Where rollout states are kept (gateway/control/rollout_state.py)."""

    # --- built on the above: the same on every store ---------------------------------------------------------------

    async def raw(self) -> dict[str, Any]:
        """The document as parsed YAML (a mapping; empty when it is not one)."""
        text, _ = await self.read()
        raw = yaml.safe_load(text)
        return raw if isinstance(raw, dict) else {}

    async def config(self) -> RoutesConfig:
        """The document validated (ConfigError when it is not valid)."""
        text, _ = await self.read()
        return parse_routes(yaml.safe_load(text), self.location, os.environ)

    async def edit_models(self, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
        """Read, edit, compare-and-swap; a conflict (another model's change meanwhile) re-reads and retries. Only
        the models the edit changed are rewritten: the rest of the text keeps its comments and layout."""
        for _ in range(EDIT_ATTEMPTS):
            text, revision = await self.read()
            raw = yaml.safe_load(text)
            try:
                return await self.replace(writer.splice_models(text, edit(raw if isinstance(raw, dict) else {})),
                                          revision, writer.digest(text))
            except RevisionConflict:
                continue
        raise Conflict(f"{self.location}: the routes kept changing under the edit ({EDIT_ATTEMPTS} conflicts)")

    _watch: asyncio.Task[None] | None = None

    async def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    def _refused(self, exc: Exception) -> None:
        for told in self.on_refused:
            told(exc)

    def _swap(self, table: RouteTable) -> None:
        if table.revision < self.current.revision:  # a restored backup, a hand edit: served, but worth a look
            log.warning("routes revision went backwards in worker pid %d: %d -> %d (%s)", os.getpid(),
                        self.current.revision, table.revision, self.location)
        self.current = table
        for listener in self.on_swap:
            try:
                listener(table)
            except Exception:
                log.exception("routes swap listener failed")


class FileRouteStore(RouteStore):
    """The routes file: the embedded store of one machine (every worker of the gateway watches the same file)."""

    def __init__(self, path: Path, lock_timeout_s: float = writer.LOCK_TIMEOUT_S) -> None:
        self.path = path
        self.lock_timeout_s = lock_timeout_s
        self._seen = self._stat()
        self.current = RouteTable.from_config(load_routes(path))  # at start: an invalid file stops the process
        self.on_swap = []
        self.on_refused = []
        self._rollouts = FileDocuments(rollouts_dir(path))
        self._watch: asyncio.Task[None] | None = None

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def rollouts(self) -> Documents:
        return self._rollouts

    def _stat(self) -> tuple[int, int, int]:
        # mtime alone misses a same-second rewrite or an atomic rename over the file.
        try:
            st = self.path.stat()
        except OSError:
            return (-1, -1, -1)
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    async def reload(self) -> bool:
        self._seen = self._stat()
        try:
            table = await asyncio.to_thread(lambda: RouteTable.from_config(load_routes(self.path)))
        except Exception as exc:
            log.error("routes file refused by worker pid %d, previous table (revision %s) keeps serving: %s",
                      os.getpid(), self.current.revision, exc)
            self._refused(exc)
            return False
        self._swap(table)
        log.info("routes revision %s applied from %s", table.revision, self.path)
        return True

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll the file's identity (mtime, inode, size) and reload on change; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if self._stat() != self._seen:
                await self.reload()

    async def start(self, poll_s: float) -> None:
        self._watch = asyncio.create_task(self.watch(poll_s), name="routes-watch")

    async def stop(self) -> None:
        await self._stop_watch()

    async def written_at(self) -> float | None:
        try:
            return (await asyncio.to_thread(os.stat, self.path)).st_mtime
        except OSError:
            return None

    # --- writes: validated, compare-and-swap on the revision, atomic (gateway/routes/writer.py) -------------------

    async def read(self) -> tuple[str, int]:
        return await asyncio.to_thread(writer.read, self.path)

    async def replace(self, routes: str | Mapping[str, Any], expected_revision: int,
                      expected_digest: str | None = None) -> int:
        return await self._written(await asyncio.to_thread(
            writer.apply, self.path, routes, expected_revision, expected_digest=expected_digest,
            lock_timeout_s=self.lock_timeout_s))

    async def set_default(self, model: str, version: str, expected_revision: int,
                          expected_digest: str | None = None) -> int:
        return await self._written(await asyncio.to_thread(
            writer.set_default_version, self.path, model, version, expected_revision,
            expected_digest=expected_digest, lock_timeout_s=self.lock_timeout_s))

    async def _written(self, revision: int) -> int:
        log.info("routes revision %d written to %s", revision, self.path)
        await self.reload()  # this process at once; the other workers within their poll interval
        return revision


def rollouts_dir(routes_path: Path) -> Path:
    """``<routes file>.rollouts/`` next to the (real) routes file."""
    real = Path(os.path.realpath(routes_path))
    return real.with_name(f"{real.name}.rollouts")


class FileDocuments:
    """``<dir>/<name>.json``, each written atomically (temp file, fsync, rename)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def put_now(self, name: str, data: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        writer.atomic_write(self.path(name), data.decode("utf-8"))

    def get_now(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None

    def every_now(self) -> list[tuple[str, bytes]]:
        out = []
        for p in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                out.append((p.stem, p.read_bytes()))
            except OSError as exc:
                log.error("%s unreadable, ignored: %s", p, exc)
        return out

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self.put_now, name, data)

    async def get(self, name: str) -> bytes | None:
        return await asyncio.to_thread(self.get_now, name)

    async def every(self) -> list[tuple[str, bytes]]:
        return await asyncio.to_thread(self.every_now)


def open_store(settings: Settings) -> RouteStore:
    """The store the settings name (GATEWAY_ROUTES_STORE): the routes file, or etcd. Not started yet."""
    if settings.etcd is None:
        return FileRouteStore(settings.routes_file)
    from gateway.routes.etcd_store import EtcdRouteStore  # grpc channels only when etcd is used

    return EtcdRouteStore(settings.etcd, seed_file=settings.routes_file)
