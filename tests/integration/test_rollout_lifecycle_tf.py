"""One rollout as the whole lifecycle for a TF Serving target: deploy -> wait AVAILABLE -> warm-up -> canary -> drain
-> retire, against our own TF Serving (the real tensorflow_model_server when on PATH, else the stand-in) that polls
its models.config every second, and our own gateway (its own routes file and admin port), under a small load driver
(3 v2 REST clients: `affine` v1 y=0.5x+2, v2 y=0.5x+3). The gateway edits TF Serving's models.config (named by
the backend's model_config_file) and reloads TF Serving with the same whole list.

1. A deploy of a version whose directory does not exist: the rollout fails with what TF Serving reported (it
   never listed it), the routes file is not written, models.config is back to its original text, no request fails.
2. A deploy of a version whose directory holds no SavedModel: the rollout fails with TF Serving's load error,
   the same checks.
3. 1 -> 2 with deploy, 3 warm-up samples, steps 50, 100 (short dwell), retire: no request fails, v1 is no
   longer AVAILABLE at the end (GetModelStatus), models.config lists only version 2, every answer after
   promotion is v2's."""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from gateway.control import tf_models_config as tmc
from gateway.control.backend_control import TFServingControl
from gateway.dev import localstack
from gateway.dev.devstack import MODEL_REPO
from gateway.routes.schema import BackendConfig

from .adminapi import admin_client, wait_rollout
from .loaddriver import Load

MODEL = "affine"
EXPECTED = {MODEL: {"1": lambda x: 0.5 * x + 2, "2": lambda x: 0.5 * x + 3}}
MISSING, BROKEN = 4, 3  # version 4 has no directory; version 3's directory holds no SavedModel
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
    models_config: Path
    tf: localstack.TFServingEndpoints


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("rollout_lifecycle_tf")
    models = root / "models"
    shutil.copytree(MODEL_REPO / "tfserving" / "affine", models / "affine")
    (models / "affine" / str(BROKEN)).mkdir()
    template = root / "models.config.template"
    template.write_text('model_config_list { config { name: "affine" base_path: "/models/affine" '
                        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }\n')
    # TF Serving re-reads models.config every second (poll_seconds=1): the file is the source of truth. A version
    # that fails to load fails at once (no retries a minute apart).
    tf_proc, tf = localstack.start_tfserving(root / "tfserving", template, models, wait_models=(MODEL,),
                                             extra_args=["--max_num_load_retries=0"])
    try:
        models_config = root / "tfserving" / "models.config"
        routes = root / "routes.yaml"
        routes.write_text(yaml.safe_dump({
            "backends": {"tf": {"kind": "tfserving", "url": tf.rest_url, "grpc_target": tf.grpc_target,
                                "model_config_file": str(models_config), "timeout_s": 10}},
            "models": {MODEL: {"default_version": 1, "versions": {
                v: {"backend": "tf", "model": MODEL, "version": v} for v in (1, 2, BROKEN, MISSING)}}}}))
        admin_port, token = localstack.free_port(), secrets.token_hex(16)
        gw_proc, url = localstack.start_gateway(root / "gateway", routes, env={
            "GATEWAY_ADMIN_PORT": str(admin_port), "GATEWAY_ADMIN_TOKEN": token})
        try:
            yield Stack(url, f"http://127.0.0.1:{admin_port}", token, routes, models_config, tf)
        finally:
            gw_proc.stop()
    finally:
        tf_proc.stop()


def _load(stack: Stack) -> Load:
    """CLIENTS v2 REST clients until stopped (at most MAX_REQUESTS in all)."""
    return Load(stack.url, "", EXPECTED, mix=(("v2-rest", CLIENTS),), max_requests=MAX_REQUESTS)


def _admin(stack: Stack) -> httpx.AsyncClient:
    return admin_client(stack.admin_url, stack.admin_token)


async def _wait(admin: httpx.AsyncClient, done: Any, timeout_s: float) -> dict[str, Any]:
    return await wait_rollout(admin, MODEL, done, timeout_s)


async def _tf_status(stack: Stack) -> dict[str, str]:
    control = TFServingControl(BackendConfig(name="tf", kind="tfserving", url=stack.tf.rest_url,
                                             grpc_target=stack.tf.grpc_target))
    try:
        return await control.status(MODEL)
    finally:
        await control.close()


async def _failed_deploy(stack: Stack, version: int, timeout_s: float) -> tuple[dict[str, Any], Load]:
    routes_before, config_before = stack.routes.read_text(), stack.models_config.read_text()
    async with _admin(stack) as admin:
        with _load(stack) as load:
            await asyncio.sleep(0.3)
            r = await admin.post("/rollouts", json={
                "model": MODEL, "to_version": version, "steps": [50, 100], "dwell_s": 0.5, "min_requests": 5,
                "deploy": {"timeout_s": timeout_s}, "warmup": {"body": X, "count": 2}, "retire": True})
            assert r.status_code == 200, r.text
            ro = await _wait(admin, lambda b: b["state"] != "running", timeout_s + 30)
            await asyncio.sleep(1.5)  # TF Serving's poller re-reads the restored file meanwhile
            await load.finish()
    assert ro["state"] == "failed", ro
    assert [h["event"] for h in ro["history"]] == ["started", "deploying", "failed"], ro["history"]
    assert f"deploy of {MODEL} version {version} on TF Serving 'tf' failed" in ro["reason"], ro["reason"]
    assert f"{stack.models_config} restored" in ro["reason"], ro["reason"]
    assert stack.routes.read_text() == routes_before  # the routes file was never written
    assert stack.models_config.read_text() == config_before  # the file TF Serving polls is back as it was
    status = await _tf_status(stack)
    assert status.get("1") == "AVAILABLE" and status.get(str(version)) in (None, "END"), status
    assert load.results and not load.bad, load.bad[:5]
    assert {r.version for r in load.results} == {"1"}
    return ro, load


async def test_deploy_of_a_missing_version_directory_fails_with_traffic_untouched(stack: Stack) -> None:
    ro, load = await _failed_deploy(stack, MISSING, timeout_s=3)
    # TF Serving never lists a version it does not find under base_path: that is what it reports.
    assert re.search(rf"version {MISSING} not AVAILABLE after [0-9.]+s \(last: not listed: TF Serving lists only "
                     r"the versions it finds as directories under the model's base_path\)", ro["reason"]), ro["reason"]
    print(f"missing directory: {len(load.results)} requests, {len(load.bad)} failed; {ro['reason']}")


async def test_deploy_of_a_broken_version_fails_with_tf_servings_error(stack: Stack) -> None:
    ro, load = await _failed_deploy(stack, BROKEN, timeout_s=30)
    assert f"failed to load model '{MODEL}' version {BROKEN}: " in ro["reason"], ro["reason"]
    assert "Could not find SavedModel .pb or .pbtxt" in ro["reason"], ro["reason"]  # TF Serving's own message
    print(f"broken version: {len(load.results)} requests, {len(load.bad)} failed; {ro['reason']}")


async def test_deploy_warmup_canary_drain_retire(stack: Stack) -> None:
    async with _admin(stack) as admin:
        with _load(stack) as load:
            await asyncio.sleep(0.3)
            r = await admin.post("/rollouts", json={
                "model": MODEL, "to_version": 2, "steps": [50, 100], "dwell_s": 1.0, "min_requests": 10,
                "max_error_rate": 0.0, "deploy": {"timeout_s": 60}, "warmup": {"body": X, "count": 3},
                "retire": True, "who": "lifecycle-test"})
            assert r.status_code == 200, r.text
            ro = await _wait(admin, lambda b: b["state"] != "running" and b["phase"] not in ("promoted", "retiring",
                                                                                             "canary"), 90)
            promoted_at = next((h["at"] for h in ro["history"] if h["event"] == "promoted"), None)
            await asyncio.sleep(0.5)
            await load.finish()
    events = [h["event"] for h in ro["history"]]
    assert ro["state"] == "promoted" and ro["phase"] == "retired", (ro["phase"], ro["history"][-1])
    assert events == ["started", "deploying", "deployed", "warming_up", "warmed_up", "step", "step_passed",
                      "promoted", "draining", "drained", "unloaded"], events
    status = await _tf_status(stack)
    assert status.get("2") == "AVAILABLE" and status.get("1") in (None, "END"), status
    config = tmc.parse(stack.models_config.read_text())
    affine = tmc.entry(config, MODEL)
    assert tmc.policy_of(affine) == "specific" and list(affine.model_version_policy.specific.versions) == [2]
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
    assert np.allclose(r.json()["outputs"][0]["data"], [3.5, 4.0, 4.5])
    print(f"1 -> 2: {len(load.results)} requests ({versions.count('1')} v1, {versions.count('2')} v2), "
          f"{len(load.bad)} failed, {len(late)} after promotion all v2")
