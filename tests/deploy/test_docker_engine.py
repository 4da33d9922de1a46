"""Where a Docker engine runs (the `docker` SDK finds one): the gateway image and the derived TorchServe image are
built and inspected, the compose stack serves inference on both real model servers (the digits models too, a PNG
through TorchServe's handler) and Prometheus scrapes all three, and the TF Serving contract tests run against the
official tensorflow/serving image. Without an engine every test here skips: "no Docker engine"."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import httpx
import pytest
import requests
import yaml

from gateway.dev import localstack
from tests.deploy.test_torchserve_image import HANDLER_PYTHON
from tests.deploy.tools import REPO, tool

IMAGE_SIZE_LIMIT = 250 * 1000 * 1000  # the README's target, bytes as `docker images` counts them
COMPOSE_TIMEOUT_S = 900
X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
DIGIT_PNG = REPO / "examples" / "digits" / "7.png"


def _find_engine() -> tuple[docker.DockerClient | None, str]:
    # docker-py leaves its socket open when the engine is not there; that warning is the expected answer here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        client = None
        try:
            client = docker.from_env(timeout=10)
            client.ping()
            return client, ""
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            if client is not None:
                client.close()
            reason = type(exc).__name__
        client = None
        gc.collect()
    return None, reason


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    client, reason = _find_engine()
    if client is None:
        pytest.skip(f"no Docker engine ({reason})")
    yield client
    client.close()


@pytest.fixture(scope="module")
def image(engine: docker.DockerClient) -> Any:
    built, _logs = engine.images.build(path=str(REPO), target="gateway", tag="model-gateway:test", rm=True)
    return built


def test_image_is_small_non_root_and_carries_only_the_gateway(engine: docker.DockerClient, image: Any) -> None:
    assert image.attrs["Size"] < IMAGE_SIZE_LIMIT, f"{image.attrs['Size'] / 1e6:.0f} MB"
    config = image.attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["gateway", "serve"]
    assert "/v2/health/ready" in " ".join(config["Healthcheck"]["Test"])
    probe = ("import importlib.util as u, shutil, gateway.protos.services; "
             "print([m for m in ('tensorflow', 'torch', 'grpc_tools', 'pip') if u.find_spec(m)], "
             "[c for c in ('gcc', 'cc', 'make') if shutil.which(c)])")
    # A read-only root filesystem: importing the gateway (protos included) writes nothing.
    out = engine.containers.run(image, entrypoint=["python", "-c", probe], read_only=True, remove=True)
    assert out.decode().strip() == "[] []"


@pytest.fixture(scope="module")
def stack(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`docker compose up --wait` with the host ports moved to free ones and its own project name."""
    ports = {name: localstack.free_port() for name in ("gateway", "grpc", "admin", "prometheus", "grafana")}
    override = tmp_path_factory.mktemp("compose") / "ports.yml"
    override.write_text(f"""
services:
  gateway:
    ports: !override ["127.0.0.1:{ports['gateway']}:8000", "127.0.0.1:{ports['grpc']}:8001",
                      "127.0.0.1:{ports['admin']}:8002"]
  prometheus:
    ports: !override ["127.0.0.1:{ports['prometheus']}:9090"]
  grafana:
    ports: !override ["127.0.0.1:{ports['grafana']}:3000"]
""")
    project = f"mgtest-{uuid.uuid4().hex[:8]}"
    base = [tool("docker-compose"), "-p", project, "-f", str(REPO / "docker-compose.yml"), "-f", str(override)]
    up = subprocess.run([*base, "up", "--build", "--detach", "--wait", "--wait-timeout", str(COMPOSE_TIMEOUT_S)],
                        cwd=REPO, capture_output=True, text=True, timeout=COMPOSE_TIMEOUT_S + 300)
    try:
        if up.returncode != 0:
            logs = subprocess.run([*base, "logs", "--tail", "80"], cwd=REPO, capture_output=True, text=True,
                                  timeout=120)
            pytest.fail(f"compose up failed:\n{up.stderr[-4000:]}\n{logs.stdout[-8000:]}")
        yield {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    finally:
        subprocess.run([*base, "down", "--volumes", "--remove-orphans"], cwd=REPO, capture_output=True,
                       timeout=300)


def test_compose_stack_serves_inference_on_both_model_servers(stack: dict[str, str]) -> None:
    with httpx.Client(base_url=stack["gateway"], timeout=30) as client:
        for model, backend in (("affine", "tfserving"), ("scale", "torchserve")):
            r = client.post(f"/v2/models/{model}/infer", json=X3)
            assert r.status_code == 200 and r.headers["x-backend"] == backend, r.text
        r = client.post("/v1/models/affine/labels/stable:predict", json={"instances": [[1, 2, 3]]})
        assert r.status_code == 200 and r.json()["predictions"] == [[2.5, 3.0, 3.5]], r.text
        r = client.post("/predictions/scale/1", json=X3)  # TorchServe with token auth, through the shared key file
        assert r.status_code == 200, r.text
    assert httpx.get(f"{stack['admin']}/healthz", timeout=10).json() == {"status": "ok"}


def test_compose_stack_serves_the_digits_models_and_a_png(stack: dict[str, str]) -> None:
    """TorchServe's image has what the digits archives need: ONNX Runtime (digits_onnx) and Pillow (a PNG body)."""
    heldout = json.loads((REPO / "model_repo" / "digits" / "heldout.json").read_text())
    pixels, label = heldout["images"][0], heldout["labels"][0]
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": pixels}]}
    with httpx.Client(base_url=stack["gateway"], timeout=30) as client:
        for model, backend in (("digits_onnx", "torchserve"), ("digits_torch", "torchserve"), ("digits", None)):
            r = client.post(f"/v2/models/{model}/infer", json=body, headers={"x-user-id": "engine-test"})
            assert r.status_code == 200, (model, r.text)
            assert backend is None or r.headers["x-backend"] == backend
            probabilities = r.json()["outputs"][0]["data"]
            assert max(range(10), key=probabilities.__getitem__) == label, (model, probabilities)
        for model in ("digits_torch", "digits_onnx"):
            r = client.post(f"/predictions/{model}", content=DIGIT_PNG.read_bytes(),
                            headers={"content-type": "image/png"})
            assert r.status_code == 200 and r.json()["label"] == "7", (model, r.text)


def test_torchserve_image_runs_the_handlers_python_and_imports_its_additions(engine: docker.DockerClient,
                                                                             stack: dict[str, str]) -> None:
    """The handler is checked for HANDLER_PYTHON (vermin): the image built by compose must not be older."""
    image = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["torchserve"]["image"]
    probe = "import sys, onnxruntime, PIL.Image; print('%d.%d' % sys.version_info[:2])"
    out = engine.containers.run(image, entrypoint=["python", "-c", probe], user="10001:10001", read_only=True,
                                remove=True)
    version = tuple(int(part) for part in out.decode().strip().split("."))
    assert version >= tuple(int(part) for part in HANDLER_PYTHON.split(".")), version


def test_compose_prometheus_scrapes_all_three_and_grafana_is_provisioned(stack: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    health: dict[str, str] = {}
    while time.monotonic() < deadline and set(health.values()) != {"up"}:
        targets = httpx.get(f"{stack['prometheus']}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        time.sleep(1)
    assert health == {"gateway": "up", "torchserve": "up", "tfserving": "up"}
    assert httpx.get(f"{stack['grafana']}/api/health", timeout=10).status_code == 200
    sources = httpx.get(f"{stack['grafana']}/api/datasources", timeout=10)
    assert sources.status_code == 200 and [s["uid"] for s in sources.json()] == ["prometheus"]


def test_tfserving_contract_tests_pass_against_the_official_image(engine: docker.DockerClient) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    official = compose["services"]["tfserving"]["image"]
    engine.images.pull(official)
    contract = sorted(str(p) for p in (REPO / "tests" / "contract").glob("test_tfserving_*.py")
                      if p.name != "test_tfserving_standin.py")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *contract],
                          cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "TFSERVING_DOCKER_IMAGE": official})
    assert done.returncode == 0, done.stdout[-6000:]
    assert " passed" in done.stdout.splitlines()[-1], json.dumps(done.stdout.splitlines()[-3:])

