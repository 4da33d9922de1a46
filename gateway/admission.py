"""Admission control: how many calls each backend (and, where the routes say so, each model) gets at once from this
worker, who waits, and who is refused at once.

Every backend has a :class:`Limiter` (``admission`` in the routes, else as many calls as its ``max_connections``):
at most ``max_inflight`` calls in flight, at most ``max_queue`` more waiting in arrival order, each at most
``max_wait_s`` (and never past the client's deadline). A call that finds the queue full is refused at once, and one
that waited too long when its time is up, with :class:`Overloaded` (503 with Retry-After / UNAVAILABLE) naming the
limit: the gateway sheds load in microseconds instead of letting requests pile up in front of a backend that cannot
take them (and hit it all at once when it comes back). A model with an ``admission`` of its own passes its own
limiter first.

``adaptive: true`` moves the limit between ``min_inflight`` and ``max_inflight`` with the backend's latency (a
gradient limit, as Netflix's concurrency-limits Gradient2): each window compares the recent latency with its long
average; latency rising above ``TOLERANCE`` x the average shrinks the limit, a steady one lets it grow by about its
square root (a small queue's worth), and timeouts or the backend's own overload answers cut it by a tenth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from gateway.deadline import remaining_s
from gateway.errors import BackendBusy, BackendTimeout, Overloaded, ResourceExhausted
from gateway.events import Storm
from gateway.routes.schema import Admission as Policy
from gateway.routes.table import Route, RouteTable

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.admission")

TOLERANCE = 1.5  # latency up to this many times its long average is normal
SMOOTHING = 0.2  # how far one window moves the limit towards its new value
BACKOFF = 0.9  # the limit after a timeout or an overload answer
WINDOW_S = 1.0  # the limit is recomputed at most this often ...
WINDOW_MIN_SAMPLES = 10  # ... and only with this many answers


class GradientLimit:
    """A concurrency limit that follows the backend's latency (see the module's docstring)."""

    def __init__(self, low: int, high: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.low, self.high = low, high
        self.value = float(max(low, min(high, 20)))  # a start below the ceiling: it grows while latency holds
        self.clock = clock
        self.long_s: float | None = None  # long average latency
        self._samples: list[float] = []
        self._window_start = clock()
        self._busiest = 0  # most calls in flight in this window

    def sample(self, seconds: float, inflight: int) -> None:
        """One answered call's latency, with the calls in flight when it was admitted."""
        self._samples.append(seconds)
        self._busiest = max(self._busiest, inflight)
        now = self.clock()
        if len(self._samples) < WINDOW_MIN_SAMPLES or now - self._window_start < WINDOW_S:
            return
        short = sorted(self._samples)[len(self._samples) // 2]
        self._samples, self._window_start, busiest, self._busiest = [], now, self._busiest, 0
        long = short if self.long_s is None else self.long_s * 0.95 + short * 0.05
        if long > 2 * short:  # latency fell well below the average (load went away): follow it down at once
            long = 2 * short
        self.long_s = long
        gradient = max(0.5, min(1.0, TOLERANCE * long / max(short, 1e-6)))
        target = self.value * gradient + math.sqrt(self.value)
        if busiest < self.value / 2:
            target = min(target, self.value)  # not using the limit: no evidence it could be higher
        self._set(self.value * (1 - SMOOTHING) + target * SMOOTHING)

    def overloaded(self) -> None:
        """A timeout or the backend's own overload answer."""
        self._set(self.value * BACKOFF)

    def _set(self, value: float) -> None:
        self.value = max(float(self.low), min(float(self.high), value))


class Limiter:
    """One limit and its queue: ``scope`` (backend | model) ``name``."""

    def __init__(self, scope: str, name: str, policy: Policy, metrics: Metrics | None = None,
                 shed: Storm | None = None) -> None:
        self.scope, self.name, self.policy = scope, name, policy
        self.metrics = metrics
        self.shed = shed
        self.inflight = 0
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.gradient = GradientLimit(policy.min_inflight, policy.max_inflight) if policy.adaptive else None
        self._report_limit()

    @property
    def limit(self) -> int:
        return self.policy.max_inflight if self.gradient is None else max(1, int(self.gradient.value))

    def __str__(self) -> str:
        return f"{self.scope} '{self.name}'"

    async def acquire(self) -> float:
        """A call slot (seconds waited for it), or Overloaded."""
        if self.inflight < self.limit and not self.waiting:
            self.inflight += 1
            return 0.0
        policy = self.policy
        if len(self.waiting) >= policy.max_queue:
            raise self._refuse("queue_full", f"{self} is at its limit: {self.inflight} calls in flight (at most "
                                             f"{self.limit}) and {len(self.waiting)} waiting (max_queue); retry "
                                             f"later", max(1, math.ceil(policy.max_wait_s)))
        left = remaining_s()
        wait_s = policy.max_wait_s if left is None else min(policy.max_wait_s, left)
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(granted)
        self._report_queue()
        started = time.monotonic()
        try:
            async with asyncio.timeout(wait_s):
                await granted
        except TimeoutError:
            if not granted.done() or granted.cancelled():
                if left is not None and left <= policy.max_wait_s:
                    raise BackendTimeout(f"the client's deadline passed while the call waited for one of {self}'s "
                                         f"{self.limit} call slots") from None
                raise self._refuse("wait_timeout", f"{self} is busy: the call waited {policy.max_wait_s:g} s "
                                                   f"(max_wait_s) for one of its {self.limit} call slots; retry "
                                                   "later", 1) from None
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.release()  # granted as it was cancelled: hand the slot on
            raise
        finally:
            with contextlib.suppress(ValueError):
                self.waiting.remove(granted)
            self._report_queue()
        return time.monotonic() - started

    def release(self, seconds: float | None = None, overloaded: bool = False) -> None:
        """A call ended (``seconds`` after it was admitted, when it was answered); the next waiter gets its slot."""
        self.inflight -= 1
        if self.gradient is not None:
            before = self.limit
            if overloaded:
                self.gradient.overloaded()
            elif seconds is not None:
                self.gradient.sample(seconds, self.inflight + 1)
            if self.limit != before:
                self._report_limit()
        while self.waiting and self.inflight < self.limit:
            granted = self.waiting.popleft()
            if not granted.done():
                self.inflight += 1
                granted.set_result(None)

    def _refuse(self, reason: str, message: str, retry_after_s: int) -> Overloaded:
        if self.metrics is not None:
            self.metrics.admission_refused(self.scope, self.name, reason)
        if self.shed is not None:
            self.shed.note(f"{self} {reason.replace('_', ' ')}", f"call refused by admission control: {message}")
        return Overloaded(message, retry_after_s, reason)

    def _report_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.admission_queue(self.scope, self.name, len(self.waiting))

    def _report_limit(self) -> None:
        if self.metrics is not None:
            self.metrics.admission_limit(self.scope, self.name, self.limit)


class Admission:
    """Every backend's and model's limiter in this worker, kept in step with the routes (a changed policy gets a
    new limiter; calls admitted by the old one finish there)."""

    def __init__(self, metrics: Metrics | None = None, shed: Storm | None = None) -> None:
        self.metrics = metrics
        self.shed = shed
        self._limiters: dict[tuple[str, str], Limiter] = {}

    def sync(self, table: RouteTable) -> None:
        wanted = {("backend", name): b.admission_policy for name, b in table.backends.items()}
        wanted.update({("model", name): m.admission for name, m in table.models.items() if m.admission is not None})
        current = self._limiters
        self._limiters = {key: current[key] if key in current and current[key].policy == policy
                          else Limiter(*key, policy, self.metrics, self.shed) for key, policy in wanted.items()}

    def limiter(self, scope: str, name: str, policy: Policy | None) -> Limiter | None:
        if policy is None:
            return None
        found = self._limiters.get((scope, name))
        if found is None or found.policy != policy:  # a route of a newer table than the last sync
            found = self._limiters[(scope, name)] = Limiter(scope, name, policy, self.metrics, self.shed)
        return found

    @contextlib.asynccontextmanager
    async def admit(self, route: Route) -> AsyncIterator[None]:
        """A call slot of the route's model (when it has a limit) and backend, held for the body; Overloaded when
        one is not to be had."""
        limiters = [lim for lim in (self.limiter("model", route.model.name, route.model.admission),
                                    self.limiter("backend", route.backend.name, route.backend.admission_policy))
                    if lim is not None]
        held: list[Limiter] = []
        waited = 0.0
        try:
            for lim in limiters:
                waited += await lim.acquire()
                held.append(lim)
        except BaseException:
            for lim in held:
                lim.release()
            raise
        if self.metrics is not None:
            self.metrics.admission_wait(route.backend.name, waited)
        started = time.monotonic()
        seconds: float | None = None
        overloaded = False
        try:
            yield
            seconds = time.monotonic() - started
        except (BackendTimeout, BackendBusy, ResourceExhausted):
            overloaded = True
            raise
        finally:
            for lim in held:
                lim.release(seconds, overloaded)
