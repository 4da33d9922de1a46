"""The files docker-compose.yml and the Helm chart mount are the ones the local processes run with: TorchServe's
config.properties, TF Serving's models.config and monitoring config, the compose routes, Prometheus' config and the
two model-level readiness probes. Each is used here with only its addresses, ports and paths replaced, and the test
checks that nothing else differs: the routes validate and serve on both backends, the models load, every scrape
path answers a real Prometheus, the probes tell loaded from not loaded."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.dev import localstack
from gateway.dev.devstack import EXAMPLE_ROUTES, MODEL_REPO, TF_MODELS, TORCHSERVE_MODELS

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_ROUTES = DEPLOY / "compose" / "routes.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
TF_READY = DEPLOY / "tfserving" / "ready.sh"
TS_READY = DEPLOY / "torchserve" / "ready.py"
TIMEOUT_S = 30.0
TORCHSERVE_DEFAULT_LIMIT = 6_553_500  # max_request_size and max_response_size when config.properties is silent
X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
X4 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}


# ----------------------------------------------------------------------------- TorchServe


def test_torchserve_runs_the_deployments_config_with_only_addresses_and_store_replaced(stack_dir: Path,
        torchserve: localstack.TorchServeEndpoints) -> None:
    assert set(localstack.TORCHSERVE_LOCAL_KEYS) == {
        "inference_address", "management_address", "metrics_address", "grpc_inference_address",
        "grpc_management_address", "grpc_inference_port", "grpc_management_port", "model_store"}
    shared = localstack.read_properties(localstack.TORCHSERVE_CONFIG.read_text())
    local = localstack.read_properties((stack_dir / "torchserve" / "config.properties").read_text())
    differs = {k for k in shared.keys() | local.keys() if shared.get(k) != local.get(k)}
    assert differs == set(localstack.TORCHSERVE_LOCAL_KEYS)
    assert local["model_store"] == str(MODEL_REPO.joinpath("torchserve").resolve())
    assert shared["metrics_mode"] == "prometheus" and int(shared["max_request_size"]) == 64 * 1024 * 1024
    # Token authorization is on, as in compose: the probe and the gateway both read key_file.json.
    assert torchserve.key_file is not None and torchserve.key_file.exists()
    assert httpx.get(f"{torchserve.inference_url}/ping", timeout=TIMEOUT_S).status_code == 400


def test_torchserve_probe_is_model_level_and_passes_token_auth(stack_dir: Path,
        torchserve: localstack.TorchServeEndpoints) -> None:
    def probe(*models: str) -> subprocess.CompletedProcess[str]:
        # From TorchServe's working directory, like the container's healthcheck (key_file.json is there).
        return subprocess.run([sys.executable, str(TS_READY), "--management", torchserve.management_url, *models],
                              cwd=stack_dir / "torchserve", capture_output=True, text=True, timeout=TIMEOUT_S)

    names = sorted({name for name, _v, _a in TORCHSERVE_MODELS})
    assert {"mlp", "scale", "digits", "digits_onnx"} <= set(names)
    ok = probe(*names)
    assert ok.returncode == 0, ok.stderr
    missing = probe("mlp", "nosuchmodel")
    assert missing.returncode == 1 and "model nosuchmodel not ready: 404" in missing.stderr
    # Without the key TorchServe refuses even the management API: the probe reads it, it does not bypass auth.
    keyless = subprocess.run([sys.executable, str(TS_READY), "--management", torchserve.management_url, "mlp"],
                             cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert keyless.returncode == 1 and "InvalidKeyException" in keyless.stderr


# ----------------------------------------------------------------------------- TF Serving


def test_tfserving_runs_the_deployments_models_and_monitoring_config(tfserving: localstack.TFServingEndpoints) -> None:
    assert tfserving.model_config_file is not None
    shared = (MODEL_REPO / "tfserving" / "models.config").read_text().splitlines()
    local = tfserving.model_config_file.read_text().splitlines()
    changed = [(a, b) for a, b in zip(shared, local, strict=True) if a != b]
    assert changed and all("base_path" in a and "/models/" in a for a, _ in changed), changed
    assert [b.replace(str((MODEL_REPO / "tfserving").resolve()), "/models") for _, b in changed] == [
        a for a, _ in changed]
    metrics = httpx.get(f"{tfserving.rest_url}/monitoring/prometheus/metrics", timeout=TIMEOUT_S)
    assert metrics.status_code == 200 and ":tensorflow:serving:" in metrics.text


def test_tfserving_probe_waits_for_available(tfserving: localstack.TFServingEndpoints) -> None:
    port = tfserving.rest_url.rsplit(":", 1)[1]

    def probe(*models: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(TF_READY), port, *models], capture_output=True, text=True,
                              timeout=TIMEOUT_S)

    ok = probe(*TF_MODELS)
    assert ok.returncode == 0, ok.stderr
    missing = probe("affine", "nosuchmodel")
    assert missing.returncode == 1 and "model nosuchmodel has no AVAILABLE version" in missing.stderr
    closed = subprocess.run(["bash", str(TF_READY), str(localstack.free_port()), "affine"], capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert closed.returncode == 1


# ----------------------------------------------------------------------------- routes


@pytest.fixture(scope="module")
def compose_gateway(stack_dir: Path, torchserve: localstack.TorchServeEndpoints,
                    tfserving: localstack.TFServingEndpoints) -> Iterator[str]:
    """The gateway on deploy/compose/routes.yaml itself, its ${VAR:-service name} addresses set to the local ones."""
    env = {"TFSERVING_URL": tfserving.rest_url, "TFSERVING_GRPC_TARGET": tfserving.grpc_target,
           "TFSERVING_MODEL_CONFIG": str(tfserving.model_config_file), "TORCHSERVE_URL": torchserve.inference_url,
           "TORCHSERVE_MANAGEMENT_URL": torchserve.management_url, "TORCHSERVE_KEY_FILE": str(torchserve.key_file),
           "GATEWAY_ADMIN_PORT": "0"}
    proc, url = localstack.start_gateway(stack_dir / "compose-gateway", COMPOSE_ROUTES, env=env)
    yield url
    proc.stop()


def test_compose_routes_serve_every_model_on_both_backends(compose_gateway: str) -> None:
    with httpx.Client(base_url=compose_gateway, timeout=TIMEOUT_S) as client:
        for model, body, backend in (("affine", X3, "tfserving"), ("mlp", X4, "tfserving"),
                                     ("mlp_torch", X4, "torchserve"), ("scale", X3, "torchserve")):
            r = client.post(f"/v2/models/{model}/infer", json=body)
            assert r.status_code == 200 and r.headers["x-backend"] == backend, (model, r.text)
        r = client.post("/v2/models/multi/infer", json={"inputs": [
            {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
            {"name": "b", "shape": [1, 2], "datatype": "INT64", "data": [3, 4]},
            {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
        assert r.status_code == 200, r.text
        assert client.get("/v2/health/ready").status_code == 200


def test_torchserve_takes_bodies_up_to_the_gateways_limit(compose_gateway: str) -> None:
    """TorchServe's own default (6.5 MB) would refuse this pass-through body; the shared config raises it."""
    # Long numbers: few enough of them for a busy machine to answer within the routes' 10 s.
    rows = 230_000  # ~6.9 MB of JSON in, ~13 MB out
    data = [1.2345678, 2.3456789, 3.4567891] * rows
    content = json.dumps({"inputs": [{"name": "x", "shape": [rows, 3], "datatype": "FP32", "data": data}]}).encode()
    assert len(content) > TORCHSERVE_DEFAULT_LIMIT
    r = httpx.post(f"{compose_gateway}/predictions/scale/1", content=content,
                   headers={"content-type": "application/json"}, timeout=120)
    assert r.status_code == 200, r.text[:300]
    assert len(r.content) > TORCHSERVE_DEFAULT_LIMIT and r.json()["outputs"][0]["shape"] == [rows, 3]


def test_compose_routes_serve_the_example_models() -> None:
    compose = yaml.safe_load(COMPOSE_ROUTES.read_text())
    example = yaml.safe_load(EXAMPLE_ROUTES.read_text())
    assert compose["models"] == example["models"]
    assert compose["backends"].keys() == example["backends"].keys()


# ----------------------------------------------------------------------------- Prometheus


def _without_targets(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config.pop("rule_files", None)
    for job in config["scrape_configs"]:
        job.pop("static_configs")
    return config


def test_prometheus_config_scrapes_all_three(tmp_path: Path, compose_gateway: str,
                                             torchserve: localstack.TorchServeEndpoints,
                                             tfserving: localstack.TFServingEndpoints) -> None:
    shared = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    local = copy.deepcopy(shared)
    address = {"gateway": compose_gateway, "torchserve": torchserve.metrics_url, "tfserving": tfserving.rest_url}
    for job in local["scrape_configs"]:
        job["static_configs"] = [{"targets": [address[job["job_name"]].removeprefix("http://")]}]
    local["rule_files"] = [str(PROMETHEUS_CONFIG.parent / pattern) for pattern in shared["rule_files"]]
    assert _without_targets(local) == _without_targets(shared)
    assert sorted(address) == sorted(job["job_name"] for job in shared["scrape_configs"])
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(local))

    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: scripts/bootstrap installs Debian's prometheus package"
    port = localstack.free_port()
    proc = localstack.spawn_process(
        "prometheus", [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                       f"--web.listen-address=127.0.0.1:{port}"],
        cwd=tmp_path, env={}, log_path=tmp_path / "prometheus.log")
    try:
        health: dict[str, str] = {}
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while set(health.values()) != {"up"} or len(health) != 3:
                assert proc.running(), proc.log_tail()
                assert time.monotonic() < deadline, (health, proc.log_tail())
                time.sleep(0.5)
                try:
                    targets = client.get("/api/v1/targets").json()["data"]["activeTargets"]
                except (httpx.TransportError, ValueError):
                    continue
                health = {t["labels"]["job"]: t["health"] for t in targets}
                errors = [t["lastError"] for t in targets if t["health"] == "down"]
                assert not errors, errors
            series = client.get("/api/v1/query", params={"query": "count by (job) (up)"}).json()["data"]["result"]
            assert sorted(s["metric"]["job"] for s in series) == ["gateway", "tfserving", "torchserve"]
    finally:
        proc.stop()
