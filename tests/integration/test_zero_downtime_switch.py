"""An instant version switch under load: 8 concurrent clients (v2 REST, TF REST and v2 gRPC) keep two models busy
on real backends — `switch_scale` on TorchServe (v1 y=2x, v2 y=3x) and `switch_affine` on TF Serving (v1
y=0.5x+2, v2 y=0.5x+3) — while the admin API switches each default from 1 to 2. No request may fail; every answer
names version 1 or 2 and carries that version's numbers; once the switch is applied every request is served by
version 2. The models are the test's own (conftest build_routes) and go back to version 1 at the end."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import httpx
import numpy as np
import yaml

from .loaddriver import Load
from .stack import Gateway

MODELS = ("switch_scale", "switch_affine")
EXPECTED: dict[str, dict[str, Callable[[np.ndarray], np.ndarray]]] = {  # type: ignore[type-arg]
    "switch_scale": {"1": lambda x: 2 * x, "2": lambda x: 3 * x},
    "switch_affine": {"1": lambda x: 0.5 * x + 2, "2": lambda x: 0.5 * x + 3},
}
CALL_TIMEOUT_S = 10.0
WARMUP_S = 1.5  # load before the switch
AFTER_S = 2.0  # load after the switch is applied
MAX_REQUESTS = 50_000
TEST_TIMEOUT_S = 120.0


async def _defaults(admin: httpx.AsyncClient) -> tuple[int, dict[str, str]]:
    got = (await admin.get("/routes")).json()
    raw = yaml.safe_load(got["text"])
    return got["revision"], {m: str(raw["models"][m].get("default_version")) for m in MODELS}


async def _set_default(admin: httpx.AsyncClient, model: str, version: str, revision: int) -> int:
    r = await admin.post(f"/models/{model}/default", json={"version": version, "revision": revision})
    assert r.status_code == 200, r.text
    return int(r.json()["revision"])


async def _switch_under_load(gateway: Gateway, admin: httpx.AsyncClient) -> None:
    revision, defaults = await _defaults(admin)
    for model in MODELS:  # another test may have left them elsewhere
        if defaults[model] != "1":
            revision = await _set_default(admin, model, "1", revision)

    load = Load(gateway.url, gateway.grpc_target, EXPECTED, max_requests=MAX_REQUESTS).start()  # 8 clients
    try:
        await asyncio.sleep(WARMUP_S)
        called: dict[str, float] = {}
        answered: dict[str, float] = {}
        applied: dict[str, float] = {}
        for model in MODELS:
            called[model] = time.time()
            revision = await _set_default(admin, model, "2", revision)
            answered[model] = time.time()
            while (await admin.get("/routes")).json()["applied_revision"] < revision:  # poll until applied
                await asyncio.sleep(0.01)
            applied[model] = time.time()
        await asyncio.sleep(AFTER_S)
    finally:
        await load.finish()

    results = load.results
    failures = [r for r in results if r.version is None]
    wrong = [r for r in results if r.version is not None and not r.correct]
    per_version = Counter((r.model, r.version) for r in results)
    per_client = Counter(r.client.rsplit("-", 1)[0] for r in results)
    elapsed = max(r.finished for r in results) - min(r.started for r in results)
    print(f"\n{len(results)} requests in {elapsed:.1f} s ({len(results) / elapsed:.0f}/s) from 8 clients "
          f"{dict(per_client)}; failures: {len(failures)}; wrong answers: {len(wrong)}")
    for model in MODELS:
        first_new = min((r.finished for r in results if r.model == model and r.version == "2"), default=None)
        latency = "never" if first_new is None else f"{(first_new - called[model]) * 1000:.1f} ms"
        after = [r for r in results if r.model == model and r.started >= applied[model]]
        print(f"  {model}: v1 {per_version[(model, '1')]}, v2 {per_version[(model, '2')]}; admin call "
              f"{(answered[model] - called[model]) * 1000:.1f} ms; admin call -> first v2 answer {latency}; "
              f"started after applied: {len(after)}, of which v2: {sum(r.version == '2' for r in after)}")
    assert not failures, failures[:5]
    assert not wrong, wrong[:5]
    for model in MODELS:
        before = [r for r in results if r.model == model and r.finished < called[model]]
        after = [r for r in results if r.model == model and r.started >= applied[model]]
        assert before and all(r.version == "1" for r in before)
        assert len(after) > 20 and all(r.version == "2" for r in after), Counter(r.version for r in after)
        assert {r.version for r in results if r.model == model} == {"1", "2"}
    assert {r.client.rsplit("-", 1)[0] for r in results} == {"v2-rest", "tf-rest", "v2-grpc"}


async def test_instant_switch_under_load_drops_nothing(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.admin_url, timeout=CALL_TIMEOUT_S,
                                 headers={"authorization": f"Bearer {gateway.admin_token}"}) as admin:
        try:
            await asyncio.wait_for(_switch_under_load(gateway, admin), TEST_TIMEOUT_S)
        finally:  # the models go back to version 1 for whoever runs next
            revision, defaults = await _defaults(admin)
            for model in MODELS:
                if defaults[model] != "1":
                    revision = await _set_default(admin, model, "1", revision)
