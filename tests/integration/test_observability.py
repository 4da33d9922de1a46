"""The dashboards and rules against a real Prometheus (Debian's binary) scraping a real gateway (two workers),
TorchServe, TF Serving (its /monitoring/prometheus/metrics) and a GPU exporter's page: after traffic through every
front, an A/B experiment, shadows, failing backends and a canary rollout that rolls back, every dashboard panel's
query (and every template variable's) returns at least one series, every rule evaluates without error, and the
rolled-back rollout fires its alert. `promtool check metrics` finds nothing to say about the gateway's /metrics."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
import yaml

from gateway.dev import localstack
from tests.observability.artifacts import RULES, queries, variable_queries

from .adminapi import admin_client, wait_rollout
from .conftest import Blackhole, build_routes
from .localhttp import LocalHttp

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None, reason="prometheus/promtool not installed "
                                "(scripts/bootstrap installs Debian's prometheus package)")

# A DCGM exporter's page for one GPU (the metric names and labels of dcgm-exporter's default counters): the GPU
# panels have no real exporter on a machine without GPUs.
DCGM_PAGE = """\
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-test-0",device="nvidia0",modelName="Test GPU",Hostname="node-1"} 41
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-test-0",device="nvidia0",modelName="Test GPU",Hostname="node-1"} 5120
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{gpu="0",UUID="GPU-test-0",device="nvidia0",modelName="Test GPU",Hostname="node-1"} 19456
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-test-0",device="nvidia0",modelName="Test GPU",Hostname="node-1"} 72.5
"""

X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
X4 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, torchserve: localstack.TorchServeEndpoints,
             tfserving: localstack.TFServingEndpoints, blackhole: Blackhole) -> Iterator[dict[str, Any]]:
    """A two-worker gateway (shadows limited to one pending per worker, so that some are dropped), a GPU page,
    and Prometheus scraping all of them every second with the project's rules loaded."""
    work = tmp_path_factory.mktemp("observability")
    routes_file = work / "routes.yaml"
    routes_file.write_text(yaml.safe_dump(build_routes(torchserve, tfserving, blackhole.port)))
    grpc_port, admin_port, token = localstack.free_port(), localstack.free_port(), secrets.token_urlsafe(24)
    proc, url = localstack.start_gateway(work / "gateway", routes_file, env={
        "GATEWAY_WORKERS": "2", "GATEWAY_GRPC_PORT": str(grpc_port), "GATEWAY_ADMIN_PORT": str(admin_port),
        "GATEWAY_ADMIN_TOKEN": token, "GATEWAY_SHADOW_MAX_PENDING": "1", "GATEWAY_ROUTES_POLL_S": "0.2",
        "GATEWAY_ACCESS_LOG_SAMPLE": "0.01"})
    gpu = LocalHttp(lambda *_: (200, "text/plain; version=0.0.4", DCGM_PAGE.encode()))
    prom_port = localstack.free_port()
    ts_metrics = torchserve.metrics_url.removeprefix("http://")
    tf_host = tfserving.rest_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(p) for p in sorted(RULES.glob("*.yml"))],
        "scrape_configs": [
            {"job_name": "gateway", "static_configs": [{"targets": [url.removeprefix("http://")]}]},
            {"job_name": "torchserve", "static_configs": [{"targets": [ts_metrics]}]},
            {"job_name": "tfserving", "metrics_path": "/monitoring/prometheus/metrics",
             "static_configs": [{"targets": [tf_host]}]},
            {"job_name": "dcgm", "static_configs": [{"targets": [f"127.0.0.1:{gpu.port}"]}]},
        ]}
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    assert PROMETHEUS is not None
    prometheus = localstack.spawn_process(
        "prometheus", [PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
                       f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        cwd=work, env={}, log_path=work / "prometheus.log")
    try:
        yield {"gateway": url, "grpc": f"127.0.0.1:{grpc_port}", "admin": f"http://127.0.0.1:{admin_port}",
               "token": token, "prometheus": f"http://127.0.0.1:{prom_port}", "work": work, "gpu": gpu}
    finally:
        prometheus.stop()
        gpu.close()
        proc.stop()


async def _traffic(env: dict[str, Any], stop: asyncio.Event) -> int:
    """Every front, the experiment, the shadows, and failures (a backend that is down, one that hangs, bad input)
    until ``stop``; returns the number of requests."""
    sent = 0
    triton = tritongrpc.InferenceServerClient(url=env["grpc"])
    async with httpx.AsyncClient(base_url=env["gateway"], timeout=10) as client:
        while not stop.is_set():
            calls = [
                client.post("/v2/models/scale/infer", json=X3, headers={"x-request-id": f"r{sent}"}),
                client.post("/v2/models/affine/infer", json=X3),
                client.post("/v2/models/canary_scale/infer", json=X3),
                client.post("/v2/models/mlp_port/infer", json=X4),
                client.post("/v2/models/mlp_next/infer", json=X4),
                client.post("/v2/models/scale_slow_shadow/infer", json=X3),
                client.post("/v1/models/affine:predict", json={"instances": [[1, 2, 3]]}),
                client.post("/predictions/scale/1", json=X3),
                client.post("/v2/models/ghost/infer", json=X3),
                client.post("/v2/models/sleepy/infer", json=X3),
                client.post("/v2/models/scale/infer", json={"inputs": [{"name": "x"}]}),  # refused by the gateway
                # Passed through unchanged, refused by the model servers themselves.
                client.post("/predictions/scale/1", content=b"not a tensor", headers={"content-type": "text/plain"}),
                client.post("/v1/models/affine:predict", json={"instances": [["not a number"]]}),
                *[client.post("/v2/models/mlp_ab/infer", json=X4, headers={"x-user-id": f"u{sent}-{i}"})
                  for i in range(4)],
            ]
            await asyncio.gather(*calls, return_exceptions=True)
            for model in ("scale_grpc", "affine_grpc"):
                inp = tritongrpc.InferInput("x", [1, 3], "FP32")
                inp.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32))
                await asyncio.to_thread(triton.infer, model, [inp])
            sent += len(calls) + 2
    triton.close()
    return sent


async def _rollout_that_rolls_back(env: dict[str, Any]) -> dict[str, Any]:
    """canary_scale 1 -> 3, where version 3's backend is down: the error-rate guard rolls it back."""
    async with admin_client(env["admin"], env["token"]) as admin:
        r = await admin.post("/rollouts", json={"model": "canary_scale", "to_version": 3, "steps": [30, 100],
                                                "dwell_s": 3, "max_error_rate": 0.05, "max_p99_s": 2.0,
                                                "max_p99_ratio": 5, "min_requests": 5, "who": "test"})
        assert r.status_code == 200, r.text
        return await wait_rollout(admin, "canary_scale", lambda ro: ro["state"] != "running", 30)


def _query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    assert r.status_code == 200, f"{promql}: {r.text}"
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.timeout(240)
def test_every_panel_query_returns_series_against_a_real_prometheus(observed: dict[str, Any]) -> None:
    prometheus = observed["prometheus"]
    _wait(lambda: _healthy(prometheus), 30, "Prometheus to answer")

    async def drive() -> tuple[int, dict[str, Any]]:
        stop = asyncio.Event()
        traffic = asyncio.create_task(_traffic(observed, stop))
        await asyncio.sleep(4)
        rollout = await _rollout_that_rolls_back(observed)
        await asyncio.sleep(4)
        stop.set()
        return await traffic, rollout

    sent, rollout = asyncio.run(drive())
    assert rollout["state"] == "rolled_back", rollout

    _wait(lambda: all(s["value"][1] == "1" for s in _query(prometheus, "up")) and
          len(_query(prometheus, "up")) == 4, 20, "every target up")
    # The rollback's alert (no `for`): firing within a rule evaluation or two.
    _wait(lambda: bool(_query(prometheus, 'ALERTS{alertname="GatewayRolloutRolledBack", model="canary_scale", '
                                          'alertstate="firing"}')), 20, "GatewayRolloutRolledBack to fire")

    expressions = [(str(q), q.promql) for q in queries()] + [(f"{d} / variable {v}", e)
                                                             for d, v, e in variable_queries()]
    empty: list[str] = []
    deadline = time.monotonic() + 20
    for name, promql in expressions:
        while not _query(prometheus, promql):
            if time.monotonic() > deadline:  # one shared budget: data that is there shows at once
                empty.append(f"{name}: {promql}")
                break
            time.sleep(1)
    print(f"\n{sent} requests; {len(expressions)} dashboard queries, {len(empty)} empty")
    assert not empty, "\n".join(empty)

    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    unhealthy = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] != "ok"]
    assert sum(len(g["rules"]) for g in rules) > 40
    assert not unhealthy, unhealthy


def test_promtool_finds_nothing_to_say_about_the_gateways_metrics(observed: dict[str, Any]) -> None:
    assert httpx.post(f"{observed['gateway']}/v2/models/scale/infer", json=X3, timeout=10).status_code == 200
    body = httpx.get(f"{observed['gateway']}/metrics", timeout=10).text
    assert "gateway_backend_request_duration_seconds_bucket" in body and 'pid="' in body
    assert PROMTOOL is not None
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def _healthy(prometheus: str) -> bool:
    try:
        return httpx.get(f"{prometheus}/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
