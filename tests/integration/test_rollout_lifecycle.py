"""One rollout as the whole lifecycle for a TorchServe target: deploy -> wait ready -> warm-up -> canary -> drain ->
retire, against our own TorchServe (token auth on, only `scale` v1 registered) and our own gateway (its own routes
file and admin port), under a small load driver (3 v2 REST clients: v1 y=2x, v2 y=3x).

1. A deploy of an archive that is not in the model store: the rollout fails with TorchServe's reason, the routes
   file is not written, no request fails.
2. A warm-up sample the new version refuses: the rollout fails before any step, traffic untouched.
3. 1 -> 2 with deploy scale-2.mar, 4 warm-up samples, steps 50, 100 (short dwell), retire: no request fails,
   v1 is unregistered from TorchServe at the end (only v2 listed) and every answer after promotion is v2's."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from gateway.dev import localstack
from gateway.dev.devstack import MODEL_REPO

from .adminapi import admin_client, wait_rollout
from .loaddriver import Load

MODEL = "scale"
EXPECTED = {MODEL: {"1": lambda x: 2 * x, "2": lambda x: 3 * x}}
CLIENTS = 3
CALL_TIMEOUT_S = 10.0
MAX_REQUESTS = 20_000
X = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}


@dataclass(frozen=True)
class Stack:
    url: str
    admin_url: str
    admin_token: str
    routes: Path
    ts: localstack.TorchServeEndpoints


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("rollout_lifecycle")
    ts_proc, ts = localstack.start_torchserve(root / "torchserve", MODEL_REPO / "torchserve",
                                              [("scale", "1", "scale-1.mar")], token_auth=True)
    try:
        routes = root / "routes.yaml"
        routes.write_text(yaml.safe_dump({
            "backends": {"torchserve": {"kind": "torchserve", "url": ts.inference_url,
                                        "management_url": ts.management_url, "token_file": str(ts.key_file),
                                        "timeout_s": 20}},
            "models": {MODEL: {"default_version": 1, "versions": {
                1: {"backend": "torchserve", "model": "scale", "version": "1"},
                2: {"backend": "torchserve", "model": "scale", "version": "2"}}}}}))
        admin_port, token = localstack.free_port(), secrets.token_hex(16)
        gw_proc, url = localstack.start_gateway(root / "gateway", routes, env={
            "GATEWAY_ADMIN_PORT": str(admin_port), "GATEWAY_ADMIN_TOKEN": token})
        try:
            yield Stack(url, f"http://127.0.0.1:{admin_port}", token, routes, ts)
        finally:
            gw_proc.stop()
    finally:
        ts_proc.stop()


def _load(stack: Stack) -> Load:
    """CLIENTS v2 REST clients until stopped (at most MAX_REQUESTS in all)."""
    return Load(stack.url, "", EXPECTED, mix=(("v2-rest", CLIENTS),), max_requests=MAX_REQUESTS)


def _admin(stack: Stack) -> httpx.AsyncClient:
    return admin_client(stack.admin_url, stack.admin_token)


async def _wait(admin: httpx.AsyncClient, done: Any, timeout_s: float) -> dict[str, Any]:
    return await wait_rollout(admin, MODEL, done, timeout_s)


async def _ts_versions(stack: Stack) -> list[str]:
    async with httpx.AsyncClient(timeout=CALL_TIMEOUT_S) as client:
        r = await client.get(f"{stack.ts.management_url}/models/{MODEL}/all",
                             headers=stack.ts.auth_headers("management"))
    assert r.status_code == 200, r.text
    return sorted(str(d["modelVersion"]) for d in r.json())


async def test_deploy_of_a_missing_archive_fails_with_traffic_untouched(stack: Stack) -> None:
    before = stack.routes.read_text()
    async with _admin(stack) as admin:
        with _load(stack) as load:
            await asyncio.sleep(0.3)
            r = await admin.post("/rollouts", json={
                "model": MODEL, "to_version": 2, "steps": [50, 100], "dwell_s": 0.5, "min_requests": 5,
                "deploy": {"archive": "no-such-model.mar", "timeout_s": 20}, "warmup": {"body": X, "count": 2},
                "retire": True})
            assert r.status_code == 200, r.text
            ro = await _wait(admin, lambda b: b["state"] != "running", 30)
            await asyncio.sleep(0.3)
            await load.finish()
    assert ro["state"] == "failed", ro
    assert "no-such-model.mar" in ro["reason"] and "failed" in ro["reason"], ro["reason"]
    assert [h["event"] for h in ro["history"]] == ["started", "deploying", "failed"], ro["history"]
    assert stack.routes.read_text() == before  # the routes file was never written
    assert await _ts_versions(stack) == ["1"]
    assert load.results and not load.bad, load.bad[:5]
    assert {r.version for r in load.results} == {"1"}


async def test_a_failing_warmup_fails_the_rollout_with_traffic_untouched(stack: Stack) -> None:
    """scale-2 deploys, but the second warm-up sample does not fit it (BYTES for its FP32 input): the rollout
    fails before any step, with the reason; version 2 stays registered, unused."""
    before = stack.routes.read_text()
    bad = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["not a number"]}]}
    async with _admin(stack) as admin:
        with _load(stack) as load:
            await asyncio.sleep(0.3)
            r = await admin.post("/rollouts", json={
                "model": MODEL, "to_version": 2, "steps": [50, 100], "dwell_s": 0.5, "min_requests": 5,
                "deploy": {"archive": "scale-2.mar", "timeout_s": 60}, "warmup": [X, bad, X]})
            assert r.status_code == 200, r.text
            ro = await _wait(admin, lambda b: b["state"] != "running", 60)
            await asyncio.sleep(0.3)
            await load.finish()
    assert ro["state"] == "failed", ro
    assert ro["reason"].startswith("warm-up sample 1 of 3 to version 2 failed: "), ro["reason"]
    assert "'BYTES' does not match the model's 'FP32'" in ro["reason"], ro["reason"]
    assert [h["event"] for h in ro["history"]] == ["started", "deploying", "deployed", "warming_up", "failed"]
    assert stack.routes.read_text() == before
    assert load.results and not load.bad, load.bad[:5]
    assert {r.version for r in load.results} == {"1"}
    print(f"\nfailed warm-up: {ro['reason']}; {len(load.results)} requests, 0 failed, all version 1")


async def test_deploy_warmup_canary_drain_retire(stack: Stack) -> None:
    async with _admin(stack) as admin:
        with _load(stack) as load:
            await asyncio.sleep(0.3)
            r = await admin.post("/rollouts", json={
                "model": MODEL, "to_version": 2, "steps": [50, 100], "dwell_s": 1.0, "min_requests": 10,
                "max_error_rate": 0.0, "deploy": {"archive": "scale-2.mar", "workers": 1, "timeout_s": 60},
                "warmup": {"body": X, "count": 4}, "retire": True, "who": "lifecycle-test"})
            assert r.status_code == 200, r.text
            ro = await _wait(admin, lambda b: b["state"] != "running" and b["phase"] not in ("promoted", "retiring",
                                                                                             "canary"), 45)
            promoted_at = next((h["at"] for h in ro["history"] if h["event"] == "promoted"), None)
            await asyncio.sleep(0.5)
            await load.finish()
    events = [h["event"] for h in ro["history"]]
    assert ro["state"] == "promoted" and ro["phase"] == "retired", (ro["phase"], ro["history"][-1])
    assert events == ["started", "deploying", "deployed", "warming_up", "warmed_up", "step", "step_passed",
                      "promoted", "backend_default", "draining", "drained", "unregistered"], events
    assert await _ts_versions(stack) == ["2"]
    routes = yaml.safe_load(stack.routes.read_text())["models"][MODEL]
    assert str(routes["default_version"]) == "2" and routes.get("experiment") is None, routes
    assert load.results and not load.bad, (len(load.bad), load.bad[:5])
    versions = [r.version for r in load.results]
    assert "1" in versions and "2" in versions
    assert promoted_at is not None
    # Requests that finished after the promotion (plus a margin for those already on their way) are all v2.
    late = [r.version for r in load.results if r.finished > promoted_at + 0.5]
    assert late and set(late) == {"2"}, set(late)
    async with httpx.AsyncClient(base_url=stack.url, timeout=CALL_TIMEOUT_S) as client:
        r = await client.post(f"/v2/models/{MODEL}/infer", json=X)
    assert r.status_code == 200 and r.headers.get("x-model-version") == "2", r.text
    assert np.allclose(r.json()["outputs"][0]["data"], [3.0, 6.0, 9.0])
