"""Route store: holds the current RouteTable, watches the routes document, validates and swaps; writes go through it.

Readers take ``store.current`` once per request, so a swap never mixes versions inside one request; an invalid
new document is refused and the last good table keeps serving. Reads, parses and writes of the file run in a
thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.routes import writer
from gateway.routes.schema import load_routes
from gateway.routes.table import RouteTable

log = logging.getLogger(__name__)


class RouteStore:
    """The routes file: the embedded store of one machine (every worker of the gateway watches the same file)."""

    def __init__(self, path: Path, lock_timeout_s: float = writer.LOCK_TIMEOUT_S) -> None:
        self.path = path
        self.lock_timeout_s = lock_timeout_s
        self._seen = self._stat()
        self.current = RouteTable.from_config(load_routes(path))  # at start: an invalid file stops the process
        self.on_swap: list[Callable[[RouteTable], None]] = []  # told of every new table, after the swap

    def _stat(self) -> tuple[int, int, int]:
        # mtime alone misses a same-second rewrite or an atomic rename over the file.
        try:
            st = self.path.stat()
        except OSError:
            return (-1, -1, -1)
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    async def reload(self) -> bool:
        """Re-read the document; True when a new table was swapped in. Never raises: a bad edit is logged and the
        previous table keeps serving."""
        self._seen = self._stat()
        try:
            table = await asyncio.to_thread(lambda: RouteTable.from_config(load_routes(self.path)))
        except Exception as exc:
            log.error("routes file refused, previous table (revision %s) keeps serving: %s",
                      self.current.revision, exc)
            return False
        self.current = table
        log.info("routes revision %s applied from %s", table.revision, self.path)
        for listener in self.on_swap:
            try:
                listener(table)
            except Exception:
                log.exception("routes swap listener failed")
        return True

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll the file's identity (mtime, inode, size) and reload on change; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if self._stat() != self._seen:
                await self.reload()

    # --- writes: validated, compare-and-swap on the revision, atomic (gateway/routes/writer.py) -------------------

    async def read(self) -> tuple[str, int]:
        """The document's text and its revision."""
        return await asyncio.to_thread(writer.read, self.path)

    async def replace(self, routes: str | Mapping[str, Any], expected_revision: int) -> int:
        """The whole document, if still at ``expected_revision``; the new revision, applied here at once."""
        return await self._written(await asyncio.to_thread(
            writer.apply, self.path, routes, expected_revision, lock_timeout_s=self.lock_timeout_s))

    async def set_default(self, model: str, version: str, expected_revision: int) -> int:
        """The instant switch: one model's default_version; the new revision, applied here at once."""
        return await self._written(await asyncio.to_thread(
            writer.set_default_version, self.path, model, version, expected_revision,
            lock_timeout_s=self.lock_timeout_s))

    async def _written(self, revision: int) -> int:
        log.info("routes revision %d written to %s", revision, self.path)
        await self.reload()  # this process at once; the other workers within their poll interval
        return revision
