"""Admission control (gateway/admission.py): a limit, a bounded queue in arrival order, refusals at once when it is
full and when a wait is too long, no slot lost to a cancelled waiter, and the adaptive limit."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.admission import Admission, GradientLimit, Limiter
from gateway.deadline import set_deadline
from gateway.errors import BackendTimeout, Overloaded
from gateway.metrics import Metrics
from gateway.routes.schema import Admission as Policy
from gateway.routes.schema import parse_routes
from gateway.routes.table import RouteTable
from gateway.types import ModelRef


async def test_calls_beyond_the_limit_wait_in_order_and_get_the_freed_slots() -> None:
    lim = Limiter("backend", "ts", Policy(max_inflight=2, max_queue=5, max_wait_s=5))
    assert await lim.acquire() == 0 and await lim.acquire() == 0
    order: list[int] = []

    async def wait(i: int) -> None:
        await lim.acquire()
        order.append(i)

    waiters = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert len(lim.waiting) == 3 and not order
    for _ in range(3):
        lim.release(0.01)
        await asyncio.sleep(0.01)
    assert order == [0, 1, 2] and lim.inflight == 2
    await asyncio.gather(*waiters)


async def test_a_full_queue_is_refused_at_once_naming_the_limit() -> None:
    metrics = Metrics()
    lim = Limiter("backend", "ts", Policy(max_inflight=1, max_queue=1, max_wait_s=3), metrics)
    await lim.acquire()
    waiting = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    with pytest.raises(Overloaded, match=r"backend 'ts' is at its limit: 1 calls in flight \(at most 1\) and 1 "
                                         r"waiting \(max_queue\)") as refused:
        await lim.acquire()
    assert time.perf_counter() - started < 0.005
    assert refused.value.retry_after_s == 3 and refused.value.http_status == 503
    lim.release()
    await waiting
    text = metrics.render()[0].decode()
    assert 'gateway_admission_refused_total{name="ts",reason="queue_full",scope="backend"} 1.0' in text


async def test_a_wait_longer_than_max_wait_is_refused_and_a_short_deadline_is_a_timeout() -> None:
    lim = Limiter("model", "m", Policy(max_inflight=1, max_queue=4, max_wait_s=0.05))
    await lim.acquire()
    with pytest.raises(Overloaded, match=r"model 'm' is busy: the call waited 0.05 s \(max_wait_s\)"):
        await lim.acquire()
    set_deadline(0.02)
    try:
        with pytest.raises(BackendTimeout, match="deadline passed while the call waited"):
            await lim.acquire()
    finally:
        set_deadline(None)
    assert not lim.waiting and lim.inflight == 1


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    lim = Limiter("backend", "ts", Policy(max_inflight=1, max_queue=4, max_wait_s=5))
    await lim.acquire()
    gone = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0.01)
    lim.release()  # the slot is handed to the waiter ...
    gone.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert lim.inflight == 0
    assert await lim.acquire() == 0


def test_the_gradient_limit_shrinks_when_latency_rises_and_grows_while_it_holds() -> None:
    now = [0.0]
    limit = GradientLimit(2, 100, clock=lambda: now[0])
    start = limit.value

    def window(seconds: float, busy: int) -> None:
        now[0] += 1.1
        for _ in range(20):
            limit.sample(seconds, busy)

    for _ in range(10):
        window(0.01, int(limit.value))
    grown = limit.value
    assert grown > start
    for _ in range(10):
        window(0.05, int(limit.value))  # five times slower: the backend is queueing
    assert limit.value < grown * 0.8
    shrunk = limit.value
    limit.overloaded()
    assert limit.value == pytest.approx(shrunk * 0.9)
    for _ in range(20):
        window(0.001, 0)  # idle: no evidence a higher limit would hold
    assert limit.value <= shrunk


ROUTES = {"backends": {"ts": {"kind": "torchserve", "url": "http://127.0.0.1:1",
                              "admission": {"max_inflight": 4, "max_queue": 2, "max_wait_s": 1}}},
          "models": {"m": {"versions": {1: {"backend": "ts", "model": "m", "version": "1"}},
                           "admission": {"max_inflight": 1, "max_queue": 0}}}}


async def test_a_model_limit_is_passed_before_its_backends_and_both_follow_the_routes() -> None:
    table = RouteTable.from_config(parse_routes(ROUTES, "r.yaml", {}))
    admission = Admission()
    admission.sync(table)
    route = table.resolve(ModelRef("m"))
    async with admission.admit(route):
        with pytest.raises(Overloaded, match="model 'm' is at its limit"):
            async with admission.admit(route):
                pass
    backend = admission.limiter("backend", "ts", route.backend.admission_policy)
    assert backend is not None and backend.inflight == 0 and backend.limit == 4
    admission.sync(table)
    assert admission.limiter("backend", "ts", route.backend.admission_policy) is backend  # same policy: kept
