"""Canary rollouts through the admin API against the real gateway and real TorchServe, under a small load driver
(4 concurrent v2 REST clients on `canary_scale`: v1 y=2x, v2 y=3x, v3 on the `down` backend, which answers 503).

1. 1 -> 2 in steps 10, 50, 100 (1.5 s dwell): no request fails, every answer is right for the version that served
   it, and the share of v2 in each step's window is near the step's percentage.
2. 1 -> 3 (the failing version): the error guard rolls it back within the first step; failures are bounded by the
   canary share of the requests in the detection window, and none after the rollback.
The model goes back to version 1 after each test."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import yaml

from .adminapi import admin_client, wait_rollout
from .loaddriver import Load
from .stack import Gateway

MODEL = "canary_scale"
EXPECTED = {MODEL: {"1": lambda x: 2 * x, "2": lambda x: 3 * x}}
CLIENTS = 4
CALL_TIMEOUT_S = 10.0
MAX_REQUESTS = 40_000
TEST_TIMEOUT_S = 45.0


def _load(gateway: Gateway) -> Load:
    return Load(gateway.url, gateway.grpc_target, EXPECTED, mix=(("v2-rest", CLIENTS),), max_requests=MAX_REQUESTS)


async def _reset(admin: httpx.AsyncClient) -> None:
    """canary_scale back on version 1, no experiment (another run may have promoted it)."""
    got = (await admin.get("/routes")).json()
    spec = yaml.safe_load(got["text"])["models"][MODEL]
    assert spec.get("experiment") is None, spec
    if str(spec.get("default_version")) != "1":
        r = await admin.post(f"/models/{MODEL}/default", json={"version": "1", "revision": got["revision"]})
        assert r.status_code == 200, r.text


async def _wait_done(admin: httpx.AsyncClient, timeout_s: float) -> dict[str, Any]:
    return await wait_rollout(admin, MODEL, lambda ro: ro["state"] != "running", timeout_s)


def _admin(gateway: Gateway) -> httpx.AsyncClient:
    return admin_client(gateway.admin_url, gateway.admin_token)


async def _canary_to_100(gateway: Gateway, admin: httpx.AsyncClient) -> None:
    await _reset(admin)
    load = _load(gateway).start()
    try:
        await asyncio.sleep(0.5)
        r = await admin.post("/rollouts", json={"model": MODEL, "to_version": 2, "steps": [10, 50, 100],
                                                "dwell_s": 1.5, "max_error_rate": 0.01, "min_requests": 20,
                                                "who": "test"})
        assert r.status_code == 200, r.text
        assert (await admin.post("/rollouts", json={"model": MODEL, "to_version": 2})).status_code == 409
        done = await _wait_done(admin, 30)
        await asyncio.sleep(1.0)  # load on the promoted version
    finally:
        await load.finish()
    results = load.results
    failures = [r for r in results if r.version is None]
    wrong = [r for r in results if r.version is not None and not r.correct]
    events = [(h["event"], h["at"], h["percent"]) for h in done["history"]]
    print(f"\n{len(results)} requests from {CLIENTS} clients; failures {len(failures)}; wrong {len(wrong)}; "
          f"final state {done['state']}; events {[(e, p) for e, _, p in events]}")
    assert done["state"] == "promoted", done
    assert not failures, failures[:5]
    assert not wrong, wrong[:5]
    changes = [(at, p) for e, at, p in events if e in ("step", "promoted")]
    for (at, percent), (until, _) in zip(changes, [*changes[1:], (max(r.finished for r in results), 0)],
                                          strict=True):
        window = [r for r in results if r.started >= at and r.finished <= until]
        share = 100 * sum(r.version == "2" for r in window) / max(len(window), 1)
        print(f"  step {percent:g}%: {len(window)} requests over {until - at:.2f} s, v2 share {share:.1f}% "
              f"(versions {dict(Counter(r.version for r in window))})")
        assert len(window) >= 20
        tolerance = 100.0 if percent in (0, 100) else max(8.0, 4 * 100 * (percent / 100 * (1 - percent / 100)
                                                                             / len(window)) ** 0.5)
        assert abs(share - percent) <= (0.0 if percent == 100 else tolerance), (percent, share)
    before = [r for r in results if r.finished < changes[0][0]]
    assert before and all(r.version == "1" for r in before)


async def _bad_canary_rolls_back(gateway: Gateway, admin: httpx.AsyncClient) -> None:
    await _reset(admin)
    load = _load(gateway).start()
    try:
        await asyncio.sleep(0.5)
        r = await admin.post("/rollouts", json={"model": MODEL, "to_version": 3, "steps": [20, 100], "dwell_s": 3,
                                                "max_error_rate": 0.05, "min_requests": 10, "who": "test"})
        assert r.status_code == 200, r.text
        done = await _wait_done(admin, 15)
        await asyncio.sleep(1.0)  # load after the rollback
    finally:
        await load.finish()
    assert done["state"] == "rolled_back", done
    step_at = next(h["at"] for h in done["history"] if h["event"] == "step")
    back_at = done["history"][-1]["at"]
    results = load.results
    window = [r for r in results if r.finished >= step_at and r.started <= back_at]
    failed = [r for r in window if r.version is None]
    after = [r for r in results if r.started > back_at]
    print(f"\nrolled back: {done['reason']}; detection {1000 * (back_at - step_at):.0f} ms after the 20% step; "
          f"in that window {len(failed)} failed of {len(window)} ({100 * len(failed) / max(len(window), 1):.1f}%); "
          f"after: {len(after)} requests, failed {sum(r.version is None for r in after)}; total failed "
          f"{sum(r.version is None for r in results)} of {len(results)}; errors {Counter(r.error[:3] for r in failed)}")
    assert back_at - step_at < 3.0  # within the first step's dwell
    assert "error rate" in done["reason"]
    assert not [r for r in results if r.version is None and (r.finished < step_at or r.started > back_at)]
    assert len(failed) <= 0.2 * len(window) + 3 * (0.16 * len(window)) ** 0.5 + 2
    assert after and all(r.version == "1" for r in after)
    assert not [r for r in results if r.version is not None and not r.correct]
    routes = yaml.safe_load((await admin.get("/routes")).json()["text"])["models"][MODEL]
    assert routes.get("experiment") is None and str(routes["default_version"]) == "1"


async def test_canary_rollout_to_100_under_load(gateway: Gateway) -> None:
    async with _admin(gateway) as admin:
        try:
            await asyncio.wait_for(_canary_to_100(gateway, admin), TEST_TIMEOUT_S)
        finally:
            r = await admin.get(f"/rollouts/{MODEL}")
            if r.status_code == 200 and r.json()["state"] == "running":
                await admin.post(f"/rollouts/{MODEL}/abort", json={"who": "test cleanup"})
            await _reset(admin)


async def test_bad_canary_is_rolled_back_automatically(gateway: Gateway) -> None:
    async with _admin(gateway) as admin:
        try:
            await asyncio.wait_for(_bad_canary_rolls_back(gateway, admin), TEST_TIMEOUT_S)
        finally:
            r = await admin.get(f"/rollouts/{MODEL}")
            if r.status_code == 200 and r.json()["state"] == "running":
                await admin.post(f"/rollouts/{MODEL}/abort", json={"who": "test cleanup"})
            await _reset(admin)
