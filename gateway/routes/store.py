"""Route store: the routes file is the source of truth; a change builds, validates and swaps one table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from gateway.routes.schema import load_routes
from gateway.routes.table import RouteTable

log = logging.getLogger(__name__)


class RouteStore:
    """Holds the current RouteTable. Readers take `store.current` once per request, so a swap never mixes
    versions inside one request; an invalid new file is refused and the last good table keeps serving."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._stat()
        self.current = RouteTable.from_config(load_routes(path))
        self.on_swap: list[Callable[[RouteTable], None]] = []  # told of every new table, after the swap

    def _stat(self) -> tuple[int, int, int]:
        # mtime alone misses a same-second rewrite or an atomic rename over the file.
        try:
            st = self.path.stat()
        except OSError:
            return (-1, -1, -1)
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def reload(self) -> bool:
        """Re-read the file; True when a new table was swapped in."""
        self._seen = self._stat()
        try:
            table = RouteTable.from_config(load_routes(self.path))
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
        """Poll the file's mtime and reload on change; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if self._stat() != self._seen:
                self.reload()  # never raises: the watcher must outlive any bad edit
