"""Balance: one backend's inference endpoints and every call made on them, above any transport.

A backend lists one or several endpoints (``url`` / ``grpc_target``, each a value or a list); a host name among
them is resolved to every address it has, again every ``dns_refresh_s`` (a Kubernetes headless Service gives one
address per pod), so calls are spread per request rather than pinned to the pods a long-lived connection happens
to reach. An :class:`EndpointPool` holds them and makes each call through ``call(attempt)``, where ``attempt`` is
the transport's single try on one endpoint (gateway/backends/http.py, grpc_channel.py):

- **which endpoint**: power of two choices on calls in flight, among the endpoints that may take calls;
- **which may**: active health checks (the adapter's probe: TorchServe's ping, TF Serving's model status) take an
  endpoint out after ``unhealthy_after`` failed probes and bring it back after ``healthy_after`` passed ones;
  passive outlier ejection takes it out for ``base_ejection_s`` x times ejected (at most ``max_ejection_s``) after
  ``consecutive_failures`` failures of its own in a row (no connection, no answer in time, connection lost; an
  answer, even an error, is not one: a handler failing on some inputs must not take the backend out), at most
  ``max_ejected_percent`` of the endpoints at once (at least one); a passed probe ends an ejection early;
- **retries**, only where safe: a try that never reached the backend (:class:`Unsent`) is sent to another endpoint,
  at most ``attempts`` times, while the budget allows (retries in flight below ``budget_percent`` of the calls in
  flight, or ``min_concurrency``), and never past the call's timeout or the client's deadline; each try is bounded
  by ``per_try_timeout_s``;
- **none left**: the call fails at once with :class:`NoEndpoint` (503 / UNAVAILABLE) naming why.

The transports raise :class:`Unsent` and :class:`Dropped` for what only they can tell (a refused connection, a
connection lost mid-call); everything else here is transport-neutral. Metrics and logs go through
:class:`PoolObserver` (the metrics layer sits above this one).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from gateway.deadline import timeout_for
from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError
from gateway.events import Storm
from gateway.routes.schema import BackendConfig

log = logging.getLogger("gateway.backends")
R = TypeVar("R")


class Unsent(BackendUnavailable):
    """The call never reached the backend (no connection, connection refused, a refused stream): safe to send to
    another endpoint; the endpoint's failure."""


class Dropped(BackendUnavailable):
    """The connection broke after the request went out: the endpoint's failure, not retried (the backend may have
    seen the request)."""


class NoEndpoint(BackendUnavailable):
    """No endpoint of the backend may take calls now (all ejected or failing their health checks)."""


class PoolObserver(Protocol):
    """What the pools report (the metrics implement it)."""

    def endpoint_ejected(self, backend: str) -> None: ...

    def backend_retry(self, backend: str, result: str) -> None:
        """result: sent | no_budget | no_time | no_endpoint."""


@dataclass(eq=False, slots=True)
class Endpoint:
    """One address calls go to, and what the pool knows about it."""

    address: str  # http://10.0.0.1:8080 (REST) or 10.0.0.1:7070 (gRPC)
    host: str | None = None  # the name it was resolved from: the Host header, TLS name or :authority to send
    inflight: int = 0
    failures: int = 0  # its own failures in a row
    ejected: bool = False
    ejected_until: float = 0.0
    ejections: int = 0  # times ejected lately (multiplies the ejection time; decays while it behaves)
    back_at: float = 0.0  # when it last returned from an ejection
    healthy: bool = True  # the health checks' verdict
    probes: int = 0  # passed (> 0) or failed (< 0) probes in a row
    last_error: str = ""

    def may_call(self, now: float) -> bool:
        return self.healthy and (not self.ejected or now >= self.ejected_until)

    def __str__(self) -> str:
        return self.address if self.host is None else f"{self.address} ({self.host})"


Attempt = Callable[[Endpoint, float], Awaitable[R]]  # one try on one endpoint within a time limit
Probe = Callable[[Endpoint, float], Awaitable[bool]]  # one health check of one endpoint within a time limit
Resolver = Callable[[str, int], Awaitable[list[str]]]  # host, port -> its addresses


async def resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True, slots=True)
class Source:
    """One configured endpoint: an address to use as it is, or a host name to resolve into several."""

    given: str
    host: str | None = None  # a name to resolve (None: use ``given``)
    port: int = 0
    scheme: str = ""  # http / https for URLs, "" for gRPC targets

    @classmethod
    def parse(cls, given: str, resolving: bool) -> Source:
        """An http(s) URL, or a gRPC target: ``host:port`` or ``dns:///host:port`` (resolved here), or another
        of grpc's schemes (``ipv4:``, ``unix:``, ``dns://server/...``: left to grpc)."""
        if given.startswith(("http://", "https://")):
            parts = urlsplit(given)
            host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
            return cls(given, host if resolving and _is_name(host) else None, port, parts.scheme)
        if given.startswith("dns:///"):
            target = given[len("dns:///"):]
        elif ":" in given.split("/")[0] and "//" not in given and not given.startswith(_GRPC_SCHEMES):
            target = given
        else:
            return cls(given)
        host, _, digits = target.rpartition(":")
        host = host.strip("[]")
        if not resolving or not digits.isdigit() or not _is_name(host):
            return cls(given)
        return cls(given, host, int(digits))

    def address(self, ip: str) -> str:
        at = f"[{ip}]" if ":" in ip else ip
        return f"{self.scheme}://{at}:{self.port}" if self.scheme else f"{at}:{self.port}"

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


_GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")


def _is_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(host)
    return False


@dataclass(slots=True)
class _Budget:
    calls: int = 0  # calls in flight through the pool
    retries: int = 0  # of which are retrying now


class EndpointPool:
    """One backend's inference endpoints: which exist, which may take calls, which one does; and the calls."""

    def __init__(self, config: BackendConfig, addresses: Sequence[str], *, probe: Probe | None = None,
                 resolver: Resolver = resolve, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.name = config.name
        self.probe = probe
        self.resolver = resolver
        self.clock = clock
        self.rng = rng or random.Random()
        self.observer: PoolObserver | None = None
        self.models: tuple[str, ...] = ()  # what the routes serve from this backend (TF Serving's probe asks)
        self.on_removed: list[Callable[[Endpoint], None]] = []
        resolving = config.dns_refresh_s > 0
        self.sources = tuple(Source.parse(a, resolving) for a in addresses)
        # Until a name is resolved, calls go to it by name (the transport resolves it then).
        self.endpoints: list[Endpoint] = [Endpoint(s.given) for s in self.sources]
        self._budget = _Budget()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self.not_ejected: Storm | None = None  # set by the registry: ejections refused by the max share
        self.no_budget: Storm | None = None  # set by the registry: retries the budget refused

    # --- what exists: configured addresses and resolved names --------------------------------------------------

    def start(self) -> None:
        """Its background work (name resolution, health checks), once, in the running loop; also done by the first
        call."""
        if self._started:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._started = True
        if any(s.host is not None for s in self.sources):
            self._tasks.append(asyncio.create_task(self._resolve_every(self.config.dns_refresh_s),
                                                   name=f"resolve:{self.name}"))
        if self.probe is not None and self.config.health_check is not None:
            self._tasks.append(asyncio.create_task(self._check_every(), name=f"health:{self.name}"))

    async def _resolve_every(self, interval_s: float) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(interval_s)

    async def refresh(self) -> None:
        """Resolve every name again; new addresses join, vanished ones leave (their calls in flight finish). A name
        that does not resolve keeps its previous addresses."""
        wanted: dict[str, Endpoint] = {}
        for source in self.sources:
            if source.host is None:
                wanted[source.given] = Endpoint(source.given)
                continue
            try:
                ips = await self.resolver(source.host, source.port)
            except (OSError, UnicodeError) as exc:
                log.warning("backend '%s': cannot resolve %s (%s); keeping its %s", self.name, source.host, exc,
                            "previous addresses" if self._resolved(source) else "name")
                for ep in self.endpoints:
                    if ep.host == source.authority or ep.address == source.given:
                        wanted[ep.address] = ep
                continue
            for ip in ips:
                address = source.address(ip)
                wanted[address] = Endpoint(address, host=source.authority)
        current = {ep.address: ep for ep in self.endpoints}
        if wanted.keys() == current.keys() or not wanted:
            return
        added, removed = wanted.keys() - current.keys(), current.keys() - wanted.keys()
        self.endpoints = [current.get(address, ep) for address, ep in wanted.items()]
        log.info("backend '%s': endpoints now %s (%s%s)", self.name, ", ".join(e.address for e in self.endpoints),
                 f"+{len(added)}" if added else "", f" -{len(removed)}" if removed else "")
        for address in removed:
            for told in self.on_removed:
                told(current[address])

    def _resolved(self, source: Source) -> bool:
        return any(ep.host == source.authority for ep in self.endpoints)

    # --- which may take calls: health checks and ejections ---------------------------------------------------------

    async def _check_every(self) -> None:
        check = self.config.health_check
        assert check is not None
        while True:
            await asyncio.gather(*(self.check(ep) for ep in list(self.endpoints)))
            await asyncio.sleep(check.interval_s)

    async def check(self, ep: Endpoint) -> None:
        """One probe of ``ep`` and what it means: out after ``unhealthy_after`` failures in a row, back after
        ``healthy_after`` passes (which also end an ejection)."""
        check, probe = self.config.health_check, self.probe
        if check is None or probe is None:
            return
        try:
            async with asyncio.timeout(check.timeout_s):
                passed = await probe(ep, check.timeout_s)
            reason = "" if passed else "the probe said not serving"
        except TimeoutError:
            passed, reason = False, f"no answer within {check.timeout_s:g} s"
        except GatewayError as exc:
            passed, reason = False, exc.message
        ep.probes = max(1, ep.probes + 1) if passed else min(-1, ep.probes - 1)
        if passed and ep.probes >= check.healthy_after:
            if not ep.healthy:
                ep.healthy = True
                log.warning("backend '%s': endpoint %s passed its health check: back in service", self.name, ep)
            if ep.ejected and self.clock() < ep.ejected_until:
                self._end_ejection(ep, "passed its health check")
        elif not passed and -ep.probes >= check.unhealthy_after and ep.healthy:
            ep.healthy = False
            ep.last_error = reason
            log.warning("backend '%s': endpoint %s failed %d health checks in a row (%s): out of service", self.name,
                        ep, -ep.probes, reason)

    def _failed(self, ep: Endpoint, error: GatewayError, now: float) -> None:
        ep.failures += 1
        ep.last_error = error.message
        rule = self.config.outlier_ejection
        if not rule.consecutive_failures or ep.failures < rule.consecutive_failures or (
                ep.ejected and now < ep.ejected_until):
            return
        ejected = sum(1 for e in self.endpoints if e.ejected and now < e.ejected_until)
        allowed = max(1, math.floor(len(self.endpoints) * rule.max_ejected_percent / 100))
        if ejected >= allowed:
            if self.not_ejected is not None:
                self.not_ejected.note(f"backend '{self.name}' endpoint {ep}",
                                      f"backend '{self.name}': endpoint {ep} not ejected after {ep.failures} failures "
                                      f"in a row: {ejected} of {len(self.endpoints)} are out already, at most "
                                      f"{rule.max_ejected_percent:g} % (max_ejected_percent, at least one)")
            return
        ep.ejections += 1
        seconds = min(rule.base_ejection_s * ep.ejections, rule.max_ejection_s)
        ep.ejected, ep.ejected_until, ep.failures = True, now + seconds, 0
        log.warning("backend '%s': endpoint %s ejected for %g s after %d failures in a row (last: %s)", self.name,
                    ep, seconds, rule.consecutive_failures, error.message)
        if self.observer is not None:
            self.observer.endpoint_ejected(self.name)

    def _end_ejection(self, ep: Endpoint, why: str) -> None:
        now = self.clock()
        ep.ejected, ep.back_at, ep.failures = False, now, 0
        log.warning("backend '%s': endpoint %s %s: back in service", self.name, ep, why)

    def _answered(self, ep: Endpoint, now: float) -> None:
        ep.failures = 0
        base = self.config.outlier_ejection.base_ejection_s
        if ep.ejections and not ep.ejected and now - ep.back_at >= base:  # behaved for an ejection's length
            ep.ejections -= 1
            ep.back_at = now

    def _returns(self, now: float) -> None:
        for ep in self.endpoints:
            if ep.ejected and now >= ep.ejected_until and ep.healthy:
                self._end_ejection(ep, f"served its ejection ({ep.ejections} so far)")

    # --- which one takes a call ------------------------------------------------------------------------------------

    def available(self) -> bool:
        """Whether a call can go anywhere now."""
        self.start()
        now = self.clock()
        return any(ep.may_call(now) for ep in self.endpoints)

    def pick(self, tried: Sequence[Endpoint] = ()) -> Endpoint | None:
        """Power of two choices on calls in flight among the endpoints that may take calls (and were not tried)."""
        now = self.clock()
        self._returns(now)
        free = [ep for ep in self.endpoints if ep.may_call(now) and ep not in tried]
        if len(free) <= 1:
            return free[0] if free else None
        a, b = self.rng.sample(free, 2)
        return a if a.inflight <= b.inflight else b

    def why_none(self) -> str:
        now = self.clock()
        parts = []
        for ep in self.endpoints:
            if not ep.healthy:
                parts.append(f"{ep} failing its health checks ({ep.last_error})")
            elif ep.ejected and now < ep.ejected_until:
                parts.append(f"{ep} ejected for {ep.ejected_until - now:.1f} s more ({ep.last_error})")
        return "; ".join(parts) or "none configured"

    # --- the calls -------------------------------------------------------------------------------------------------

    async def call(self, attempt: Attempt[R], timeout_s: float | None = None) -> R:
        """``attempt`` on one endpoint, then on others while it is safe and allowed. The whole call gets
        ``timeout_s`` (the backend's ``timeout_s``), shortened to the client's deadline; each try at most
        ``per_try_timeout_s`` of what is left. Raises GatewayError subclasses only."""
        self.start()
        config = self.config
        total = timeout_for(timeout_s if timeout_s is not None else config.timeout_s)
        own = config.per_try_timeout_s or (timeout_s if timeout_s is not None else config.timeout_s)
        deadline = self.clock() + total
        tried: list[Endpoint] = []
        budget = self._budget
        budget.calls += 1
        ep = self.pick()
        if ep is None:
            budget.calls -= 1
            raise NoEndpoint(f"backend '{self.name}' has no endpoint to call: {self.why_none()}")
        retrying = False
        try:
            while True:
                left = deadline - self.clock()
                if left <= 0:
                    raise BackendTimeout(f"backend '{self.name}' did not answer within {total:g}s")
                # Whether the try's own limit binds (a timeout then is the endpoint's), not the client's deadline.
                own_limit = left >= own - 1e-3
                limit = own if own_limit else left
                ep.inflight += 1
                try:
                    answer = await attempt(ep, limit)
                except Unsent as exc:
                    error: GatewayError = exc
                    self._failed(ep, exc, self.clock())
                except Dropped as exc:
                    self._failed(ep, exc, self.clock())
                    raise
                except BackendTimeout as exc:
                    if not own_limit:
                        raise
                    self._failed(ep, exc, self.clock())
                    if not config.retries.on_timeout:
                        raise
                    error = exc
                except GatewayError:
                    self._answered(ep, self.clock())
                    raise
                else:
                    self._answered(ep, self.clock())
                    return answer
                finally:
                    ep.inflight -= 1
                    if retrying:
                        budget.retries -= 1
                        retrying = False
                tried.append(ep)
                ep = self._retry_on(tried, error, deadline)
                budget.retries += 1
                retrying = True
        finally:
            budget.calls -= 1

    def _retry_on(self, tried: list[Endpoint], error: GatewayError, deadline: float) -> Endpoint:
        """The endpoint a failed call is tried again on (one not tried yet), when attempts, time and the budget allow;
        else ``error`` is raised."""
        retries, budget = self.config.retries, self._budget
        if len(tried) > retries.attempts:
            raise error
        ep = self.pick(tried)
        if ep is None:
            self._retry_result("no_endpoint")
            raise error
        if deadline - self.clock() <= 0:
            self._retry_result("no_time")
            raise error
        if budget.retries >= max(retries.min_concurrency, retries.budget_percent / 100 * budget.calls):
            self._retry_result("no_budget")
            if self.no_budget is not None:
                self.no_budget.note(f"backend '{self.name}'", f"backend '{self.name}': a call that never reached it "
                                    f"is not retried: {budget.retries} of its {budget.calls} calls in flight are "
                                    f"retrying already (budget {retries.budget_percent:g} %, at least "
                                    f"{retries.min_concurrency})")
            raise error
        self._retry_result("sent")
        return ep

    def _retry_result(self, result: str) -> None:
        if self.observer is not None:
            self.observer.backend_retry(self.name, result)

    def states(self) -> dict[str, int]:
        """Endpoints by state: available, ejected, unhealthy."""
        now = self.clock()
        out = {"available": 0, "ejected": 0, "unhealthy": 0}
        for ep in self.endpoints:
            out["unhealthy" if not ep.healthy else "ejected" if not ep.may_call(now) else "available"] += 1
        return out

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._started = False


@dataclass
class EndpointCloser:
    """Closes what a transport holds for an endpoint that left the pool, once its calls in flight are done (or
    after ``grace_s``)."""

    close: Callable[[Endpoint], Awaitable[None]]
    grace_s: float
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __call__(self, ep: Endpoint) -> None:
        task = asyncio.create_task(self._later(ep))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _later(self, ep: Endpoint) -> None:
        waited = 0.0
        while ep.inflight and waited < self.grace_s:
            await asyncio.sleep(0.1)
            waited += 0.1
        await self.close(ep)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()
