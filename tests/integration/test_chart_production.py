"""The Helm chart's production values run for real: the gateway started with the very environment the chart renders
(values-production.yaml, one replica, admin TLS on), its Secrets and ConfigMaps stood up as the kubelet mounts them
(tests/deploy/chartkit.py), in front of real TorchServe and TF Serving. The kubelet's probes and the Prometheus scrape
get in without credentials over TLS, an inference without a key is refused, the rendered `helm test` script passes
with its key and its CA, and a Secret update (the kubelet's ..data swap) brings new API keys and a new certificate
without a restart. API keys are made with `gateway auth add-key`, as NOTES.txt tells."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest

from gateway.dev import localstack
from tests.deploy.chartkit import CHART, container, env_of, find, project, render, stand_up, values_from

from ..securitykit import CA, serial_of

SITE = {"gateway": {"auth": {"policy": {"tenants": {
            "helm-test": {"models": {"affine": {}, "scale": {}, "digits_onnx": {}}},
            "team-a": {"models": {"affine": {}}}}}, "keysSecret": "mg-api-keys"},
        "tls": {"secretName": "mg-tls"}, "admin": {"tls": {"enabled": True}}},
        "helmTest": {"apiKeySecret": "mg-helm-test-key"}}
X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
DEADLINE_S = 30.0


def add_key(keys_file: Path, tenant: str, policy_file: Path) -> str:
    """`gateway auth add-key KEYS TENANT --policy POLICY`: the key it prints once."""
    done = subprocess.run([sys.executable, "-m", "gateway", "auth", "add-key", str(keys_file), tenant,
                           "--policy", str(policy_file)], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


@dataclass
class Release:
    url: str
    admin_url: str
    ca: CA
    ca_file: Path
    pod: Path  # the gateway pod's mounts, one directory per volume
    docs: list[dict[str, Any]]
    keys: dict[str, str]  # tenant -> API key
    policy_file: Path
    test_env: dict[str, str]  # the helm test container's, its files stood up too

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.ca_file)),
                            timeout=30, **kwargs)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory, torchserve: localstack.TorchServeEndpoints,
            tfserving: localstack.TFServingEndpoints) -> Iterator[Release]:
    root = tmp_path_factory.mktemp("chart-production")
    with helm.Chart.load(CHART) as chart:
        docs = render(chart, values_from(("values-production.yaml", SITE)))
    deployment = find(docs, "Deployment", "gateway")
    gateway = container(deployment, "gateway")
    policy_file = root / "auth.yaml"
    policy_file.write_text(find(docs, "ConfigMap", "auth")["data"]["auth.yaml"])
    keys_file = root / "keys.yaml"
    keys = {tenant: add_key(keys_file, tenant, policy_file) for tenant in ("helm-test", "team-a")}
    ca = CA()
    server = ca.issue()  # localhost and 127.0.0.1: the test reaches the "Service" there
    sources = {"mg-api-keys": {"keys.yaml": keys_file.read_bytes()},
               "mg-tls": {"tls.crt": server.cert_pem, "tls.key": server.key_pem, "ca.crt": ca.pem},
               "mg-helm-test-key": {"key": keys["helm-test"].encode()}}
    env = stand_up(docs, deployment, gateway, root / "pod", sources)
    admin_port = localstack.free_port()
    # Only addresses change: the listeners on loopback and free ports, the Services' names to the local processes.
    env.update({"GATEWAY_GRPC_PORT": str(localstack.free_port()), "GATEWAY_ADMIN_HOST": "127.0.0.1",
                "GATEWAY_ADMIN_PORT": str(admin_port), "TFSERVING_URL": tfserving.rest_url,
                "TFSERVING_GRPC_TARGET": tfserving.grpc_target, "TORCHSERVE_URL": torchserve.inference_url,
                "TORCHSERVE_MANAGEMENT_URL": torchserve.management_url,
                "TORCHSERVE_KEY_FILE": str(torchserve.key_file)})
    del env["GATEWAY_PORT"]
    routes = root / "routes.yaml"
    routes.write_text(find(docs, "ConfigMap", "routes")["data"]["routes.yaml"])
    ca_file = ca.write(root / "ca.pem")
    proc, url = localstack.start_gateway(root / "gateway", routes, env=env, ca_file=ca_file)
    job = find(docs, "Job", "test")
    test_env = stand_up(docs, job, container(job), root / "helm-test", sources)
    test_env["GATEWAY_URL"] = url.replace("127.0.0.1", "localhost")
    try:
        yield Release(url=url, admin_url=f"https://127.0.0.1:{admin_port}", ca=ca, ca_file=ca_file, pod=root / "pod",
                      docs=docs, keys=keys, policy_file=policy_file, test_env=test_env)
    finally:
        proc.stop()


def test_probes_and_the_scrape_get_in_without_credentials_over_tls(release: Release) -> None:
    deployment = find(release.docs, "Deployment", "gateway")
    gateway = container(deployment, "gateway")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    with release.client() as client:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = gateway[probe]["httpGet"]
            assert get["scheme"] == "HTTPS" and release.url.startswith("https://")
            assert client.get(get["path"]).status_code == 200, probe
        assert annotations["prometheus.io/scheme"] == "https"
        scrape = client.get(annotations["prometheus.io/path"])
        assert scrape.status_code == 200 and "gateway_" in scrape.text
        refused = client.post("/v2/models/affine/infer", json=X3)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        other = client.post("/v2/models/scale/infer", json=X3, headers={"x-api-key": release.keys["team-a"]})
        assert other.status_code == 403  # team-a may call affine only


def test_the_rendered_helm_test_passes_with_its_key_and_ca(release: Release) -> None:
    job = find(release.docs, "Job", "test")
    tester = container(job)
    assert tester["command"] == ["python", "-c"]
    done = subprocess.run([sys.executable, "-c", tester["args"][0]], env=release.test_env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    models = [r["model"] for r in json.loads(env_of(tester)["REQUESTS"])]
    assert [line.split()[0] for line in done.stdout.splitlines() if line.endswith(" ok")] == models
    without_key = {k: v for k, v in release.test_env.items() if k != "API_KEY_FILE"}
    refused = subprocess.run([sys.executable, "-c", tester["args"][0]], env=without_key, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0 and "401" in refused.stderr


def test_admin_api_over_tls_with_its_token(release: Release) -> None:
    token = (release.pod / "admin-token" / "token").read_text()
    verify = ssl.create_default_context(cafile=str(release.ca_file))
    with httpx.Client(base_url=release.admin_url, verify=verify, timeout=30) as admin:
        assert admin.get("/routes", headers={"authorization": f"Bearer {token}"}).status_code == 200
        assert admin.get("/routes").status_code == 401


def _wait(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE_S} s"
        time.sleep(0.2)


def test_a_secret_update_brings_new_keys_and_a_new_certificate_without_a_restart(release: Release,
                                                                                 tmp_path: Path) -> None:
    # The keys Secret replaced by one holding only a new key (a fresh file: a new salt too).
    fresh = tmp_path / "keys.yaml"
    new_key = add_key(fresh, "team-a", release.policy_file)
    project(release.pod / "auth-keys", {"keys.yaml": fresh.read_bytes()})
    with release.client() as client:
        def status(key: str) -> int:
            return client.post("/v2/models/affine/infer", json=X3, headers={"x-api-key": key}).status_code

        _wait(lambda: status(new_key) == 200, "the new key admitted")
        assert status(release.keys["team-a"]) == 401 and status(release.keys["helm-test"]) == 401
    # The TLS Secret renewed: the next handshakes carry the new certificate.
    renewed = release.ca.issue()
    project(release.pod / "tls", {"tls.crt": renewed.cert_pem, "tls.key": renewed.key_pem})
    port = int(release.url.rsplit(":", 1)[1])

    def served_serial() -> int:
        context = ssl.create_default_context(cafile=str(release.ca_file))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return serial_of(der)

    _wait(lambda: served_serial() == renewed.serial, "the renewed certificate served")
    with release.client() as client:
        assert client.post("/v2/models/affine/infer", json=X3,
                           headers={"authorization": f"Bearer {new_key}"}).status_code == 200

