"""The endpoint pool (gateway/backends/endpoints.py) with tries that are plain coroutines: which endpoint a call
goes to, retries only where safe and within the budget and the deadline, ejection and its share, health checks,
names resolved again."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from gateway.backends.endpoints import Dropped, Endpoint, EndpointPool, NoEndpoint, Source, Unsent
from gateway.deadline import set_deadline
from gateway.errors import BackendError, BackendTimeout
from gateway.routes.schema import BackendConfig, HealthCheck, OutlierEjection, Retries

ADDRESSES = ("http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Observed:
    def __init__(self) -> None:
        self.ejected: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()

    def endpoint_ejected(self, backend: str) -> None:
        self.ejected[backend] += 1

    def backend_retry(self, backend: str, result: str) -> None:
        self.retries[result] += 1


def pool(addresses: tuple[str, ...] = ADDRESSES, clock: Clock | None = None, **changes: object) -> EndpointPool:
    config = dataclasses.replace(BackendConfig(name="b", kind="tfserving", url=addresses[0], dns_refresh_s=0,
                                               health_check=None, timeout_s=10), **changes)  # type: ignore[arg-type]
    p = EndpointPool(config, addresses, clock=clock or Clock(), rng=random.Random(7))
    p.observer = Observed()
    return p


def answering(by_address: dict[str, Exception | str]) -> Callable[[Endpoint, float], Awaitable[str]]:
    async def attempt(ep: Endpoint, limit: float) -> str:
        outcome = by_address.get(ep.address, "ok")
        if isinstance(outcome, Exception):
            raise outcome
        return f"{outcome} from {ep.address}"

    return attempt


def observed(p: EndpointPool) -> Observed:
    assert isinstance(p.observer, Observed)
    return p.observer


async def test_calls_spread_evenly_and_go_to_the_least_busy_of_two() -> None:
    p = pool()
    seen: Counter[str] = Counter()

    async def attempt(ep: Endpoint, limit: float) -> None:
        seen[ep.address] += 1
        await asyncio.sleep(0)

    await asyncio.gather(*(p.call(attempt) for _ in range(3000)))
    assert set(seen) == set(ADDRESSES)
    assert max(seen.values()) / min(seen.values()) < 1.1
    p.endpoints[0].inflight, p.endpoints[1].inflight, p.endpoints[2].inflight = 5, 0, 9
    assert all(p.pick() is not p.endpoints[2] for _ in range(50))  # the busiest never wins a pair


async def test_a_call_that_never_left_goes_to_another_endpoint() -> None:
    p = pool()
    down = ADDRESSES[0]
    answers = [await p.call(answering({down: Unsent("refused")})) for _ in range(20)]
    assert all(a.startswith("ok from") and down not in a for a in answers)
    assert observed(p).retries["sent"] > 0


async def test_a_call_the_backend_may_have_seen_is_not_retried() -> None:
    p = pool(("http://a:1", "http://b:1"))
    with pytest.raises(Dropped):
        for _ in range(20):
            await p.call(answering({"http://a:1": Dropped("reset"), "http://b:1": Dropped("reset")}))
    with pytest.raises(BackendError):  # an answer, even an error, is the backend's: not retried, not a failure
        await p.call(answering({"http://a:1": BackendError("500"), "http://b:1": BackendError("500")}))
    assert not observed(p).retries


async def test_five_failures_in_a_row_eject_an_endpoint_for_a_growing_time() -> None:
    clock = Clock()
    p = pool(clock=clock)
    bad = p.endpoints[0]
    attempt = answering({bad.address: Unsent("refused")})
    while not bad.ejected:
        await p.call(attempt)
    assert bad.ejected_until == clock.now + 30  # Envoy's base_ejection_time
    assert observed(p).ejected["b"] == 1
    assert all(p.pick() is not bad for _ in range(100))
    clock.now += 30
    assert p.pick([p.endpoints[1], p.endpoints[2]]) is bad  # served its time: back, on probation
    while not bad.ejected:
        await p.call(attempt)
    assert bad.ejected_until == clock.now + 60  # ejected again: twice as long
    clock.now += 60
    p.pick()
    bad.failures = 4
    with pytest.raises(BackendError):
        await p.call(answering({a: BackendError("500") for a in ADDRESSES}))
    await asyncio.gather(*(p.call(answering({a: BackendError("500") for a in ADDRESSES}))
                           for _ in range(30)), return_exceptions=True)
    assert bad.failures == 0 and not bad.ejected  # answers, even errors, reset its count


async def test_at_most_the_max_share_of_endpoints_is_ejected_at_once() -> None:
    p = pool()
    everyone_refuses = answering({a: Unsent("refused") for a in ADDRESSES})
    for _ in range(30):
        with pytest.raises(Unsent):
            await p.call(everyone_refuses)
    assert sum(ep.ejected for ep in p.endpoints) == 1  # 10 % of 3, and at least one
    single = pool(("http://only:1",))
    for _ in range(5):
        with pytest.raises(Unsent):
            await single.call(answering({"http://only:1": Unsent("refused")}))
    with pytest.raises(NoEndpoint, match=r"backend 'b' has no endpoint to call: http://only:1 ejected for 30\.0 s "
                                         r"more \(refused\)"):
        await single.call(answering({}))
    assert not single.available()


async def test_retries_stay_within_the_budget_and_the_attempts() -> None:
    p = pool(retries=Retries(attempts=2, budget_percent=0, min_concurrency=0))
    with pytest.raises(Unsent):
        await p.call(answering({a: Unsent("refused") for a in ADDRESSES}))
    assert observed(p).retries == {"no_budget": 1}
    p = pool(retries=Retries(attempts=1))
    with pytest.raises(Unsent):
        await p.call(answering({a: Unsent("refused") for a in ADDRESSES}))
    assert observed(p).retries == {"sent": 1}  # one retry, then the first try's error


async def test_retries_never_pass_the_deadline_and_a_deadline_timeout_is_not_the_endpoints() -> None:
    p = pool(per_try_timeout_s=5.0)
    limits: list[float] = []

    async def slow(ep: Endpoint, limit: float) -> None:
        limits.append(limit)
        raise BackendTimeout("late")

    set_deadline(0.5)
    try:
        with pytest.raises(BackendTimeout):
            await p.call(slow)
    finally:
        set_deadline(None)
    assert limits and limits[0] <= 0.5  # the client's deadline, not the per-try limit
    assert all(ep.failures == 0 for ep in p.endpoints)
    await asyncio.gather(*(p.call(answering({})) for _ in range(3)))
    with pytest.raises(BackendTimeout):
        await p.call(slow)
    assert limits[-1] == 5.0 and sum(ep.failures for ep in p.endpoints) == 1  # its own limit: its failure


async def test_timeouts_are_retried_only_when_asked() -> None:
    p = pool(per_try_timeout_s=1.0, retries=Retries(on_timeout=True))
    first = True

    async def once_late(ep: Endpoint, limit: float) -> str:
        nonlocal first
        if first:
            first = False
            raise BackendTimeout("late")
        return "ok"

    assert await p.call(once_late) == "ok"


async def test_health_checks_take_an_endpoint_out_and_bring_it_back() -> None:
    p = pool(health_check=HealthCheck(interval_s=1, timeout_s=0.5, unhealthy_after=2, healthy_after=1),
             outlier_ejection=OutlierEjection(consecutive_failures=1))
    verdict = {ADDRESSES[0]: False}

    async def probe(ep: Endpoint, limit: float) -> bool:
        return verdict.get(ep.address, True)

    p.probe = probe
    ep = p.endpoints[0]
    await p.check(ep)
    assert ep.healthy  # one failed probe is not enough
    await p.check(ep)
    assert not ep.healthy and "not serving" in p.why_none()
    verdict[ADDRESSES[0]] = True
    await p.check(ep)
    assert ep.healthy
    with pytest.raises(Unsent):  # ejected (one failure is enough here) ...
        await p.call(answering({a: Unsent("refused") for a in ADDRESSES}))
    ejected = next(e for e in p.endpoints if e.ejected)
    await p.check(ejected)  # ... and a passed probe ends the ejection early
    assert not ejected.ejected


async def test_names_are_resolved_again_and_endpoints_follow() -> None:
    answers = {"svc": ["10.0.0.1", "10.0.0.2"]}
    removed: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    config = BackendConfig(name="b", kind="torchserve", url="http://svc:8080", health_check=None)
    p = EndpointPool(config, ("http://svc:8080",), resolver=resolver)
    p.on_removed.append(lambda ep: removed.append(ep.address))
    assert [e.address for e in p.endpoints] == ["http://svc:8080"]  # by name until resolved
    await p.refresh()
    assert [(e.address, e.host) for e in p.endpoints] == [("http://10.0.0.1:8080", "svc:8080"),
                                                         ("http://10.0.0.2:8080", "svc:8080")]
    kept = p.endpoints[1]
    kept.failures = 3
    answers["svc"] = ["10.0.0.2", "10.0.0.3"]
    await p.refresh()
    assert [e.address for e in p.endpoints] == ["http://10.0.0.2:8080", "http://10.0.0.3:8080"]
    assert p.endpoints[0] is kept and removed == ["http://svc:8080", "http://10.0.0.1:8080"]

    async def failing(host: str, port: int) -> list[str]:
        raise OSError("no DNS")

    p.resolver = failing
    await p.refresh()  # an unresolvable name keeps its addresses
    assert [e.address for e in p.endpoints] == ["http://10.0.0.2:8080", "http://10.0.0.3:8080"]


@pytest.mark.parametrize(("given", "host", "port", "built"), [
    ("http://ts-headless:8080", "ts-headless", 8080, "http://10.1.2.3:8080"),
    ("https://ts:8443", "ts", 8443, "https://10.1.2.3:8443"),
    ("http://127.0.0.1:8080", None, 8080, None),
    ("tfserving:8500", "tfserving", 8500, "10.1.2.3:8500"),
    ("dns:///tfserving.models.svc:8500", "tfserving.models.svc", 8500, "10.1.2.3:8500"),
    ("127.0.0.1:8500", None, 0, None),
    ("[::1]:8500", None, 0, None),
    ("ipv4:10.0.0.1:8500,10.0.0.2:8500", None, 0, None),
    ("unix:///run/tfs.sock", None, 0, None),
    ("dns://8.8.8.8/tfserving:8500", None, 0, None),
])
def test_configured_endpoints_are_resolved_only_when_they_are_names(given: str, host: str | None, port: int,
                                                                   built: str | None) -> None:
    source = Source.parse(given, resolving=True)
    assert source.host == host
    if host is not None:
        assert source.port == port and source.address("10.1.2.3") == built
    assert Source.parse(given, resolving=False).host is None
