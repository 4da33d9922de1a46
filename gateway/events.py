"""Operational events that come in storms (server errors, connections refused, calls shed, retries denied): the
first few of each kind in a window are logged as they happen, the rest are counted by cause and summed up in one
line when the window ends, so a storm is visible in the log and cannot flood it."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable


class Storm:
    """One kind of event. ``note(cause, message)``: ``message`` is logged when it is one of the first
    ``per_window`` of the window, else the event is counted under ``cause`` (e.g. "backend torchserve: queue full");
    ``flush`` writes the window's summary."""

    def __init__(self, log: logging.Logger, what: str, window_s: float = 10.0, per_window: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.what = what
        self.window_s = window_s
        self.per_window = per_window
        self.clock = clock
        self._window_start = clock()
        self._logged = 0
        self._counts: Counter[str] = Counter()

    def note(self, cause: str, message: str = "") -> None:
        self.flush()
        if self._logged < self.per_window:
            self._logged += 1
            self.log.warning("%s", message or f"{self.what}: {cause}")
        else:
            self._counts[cause] += 1

    def flush(self, force: bool = False) -> None:
        """Ends the window once it has run its length (or now, with ``force``): its summary, when there is one."""
        now = self.clock()
        if not force and now - self._window_start < self.window_s:
            return
        if self._counts:
            summary = ", ".join(f"{cause} x{n}" for cause, n in self._counts.most_common())
            self.log.warning("%d more %s in the last %.0f s (not logged one by one): %s", sum(self._counts.values()),
                             self.what, now - self._window_start, summary)
        self._window_start, self._logged, self._counts = now, 0, Counter()


class Storms:
    """The storms of one process, flushed together by a periodic tick (a window with no later event still gets its
    summary)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._all: list[Storm] = []

    def storm(self, log: logging.Logger, what: str, per_window: int = 1) -> Storm:
        storm = Storm(log, what, self.window_s, per_window)
        self._all.append(storm)
        return storm

    def flush(self, force: bool = False) -> None:
        for storm in self._all:
            storm.flush(force)
