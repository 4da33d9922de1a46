"""docker-compose.yml and its GPU override: validated by the Compose binary itself (`docker compose config`, no
engine needed), then asserted on in the form Compose resolves them to."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.dev.devstack import TF_MODELS, TORCHSERVE_MODELS
from gateway.settings import Settings
from tests.deploy.tools import REPO, tool

COMPOSE = REPO / "docker-compose.yml"
GPU = REPO / "docker-compose.gpu.yml"
MODEL_SERVERS = ("tfserving", "torchserve")


def compose(*files: Path, args: tuple[str, ...] = ("config", "-q")) -> subprocess.CompletedProcess[str]:
    argv = [tool("docker-compose"), "--project-directory", str(REPO)]
    for file in files:
        argv += ["-f", str(file)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(REPO)})


def resolved(*files: Path) -> dict[str, Any]:
    done = compose(*files, args=("config", "--format", "json"))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cpu() -> dict[str, Any]:
    return resolved(COMPOSE)


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return resolved(COMPOSE, GPU)


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, GPU)], ids=["compose", "compose+gpu"])
def test_compose_config_is_valid(files: tuple[Path, ...]) -> None:
    done = compose(*files)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_compose_config_catches_a_gpu_reservation_without_capabilities(tmp_path: Path) -> None:
    broken = tmp_path / "gpu.yml"
    broken.write_text(GPU.read_text().replace("capabilities: [gpu]", ""))
    done = compose(COMPOSE, broken)
    assert done.returncode != 0 and "missing property 'capabilities'" in done.stderr


def test_every_service_is_health_checked_and_waited_for(cpu: dict[str, Any]) -> None:
    services = cpu["services"]
    assert set(services) == {"init", "gateway", "tfserving", "torchserve", "prometheus", "grafana"}
    for name, service in services.items():
        if name == "init":  # one-shot: the others wait for it to complete
            assert service["restart"] == "no" and "healthcheck" not in service
            continue
        assert service["healthcheck"]["test"][0] == "CMD", name
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency == "init" else "service_healthy"
            assert condition["condition"] == expected, (name, dependency)
    assert set(services["gateway"]["depends_on"]) == {"init", *MODEL_SERVERS}
    assert set(services["grafana"]["depends_on"]) == {"prometheus"}


def test_admin_port_is_published_on_localhost_only(cpu: dict[str, Any]) -> None:
    published = {int(p["target"]): p.get("host_ip") for p in cpu["services"]["gateway"]["ports"]}
    defaults = Settings()
    assert published == {defaults.port: None, defaults.grpc_port: None, defaults.admin_port: "127.0.0.1"}
    env = cpu["services"]["gateway"]["environment"]
    assert env["GATEWAY_ADMIN_HOST"] == "0.0.0.0" and env["GATEWAY_ADMIN_TOKEN_FILE"].startswith("/srv/gateway/")
    for name in ("prometheus", "grafana"):
        assert all(p.get("host_ip") == "127.0.0.1" for p in cpu["services"][name]["ports"]), name
    for name in ("init", *MODEL_SERVERS):
        assert "ports" not in cpu["services"][name], name  # reachable from the gateway only


def test_images_are_pinned_and_the_gpu_override_switches_both_model_servers(cpu: dict[str, Any],
                                                                           gpu: dict[str, Any]) -> None:
    for name, service in cpu["services"].items():
        image = service["image"]
        if name in ("init", "gateway"):
            assert image == "model-gateway:local" and service["build"]["context"] == str(REPO)
            continue
        tag = image.rpartition(":")[2]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+(-cpu)?", tag), image
    for name in MODEL_SERVERS:
        cpu_image, gpu_image = cpu["services"][name]["image"], gpu["services"][name]["image"]
        assert gpu_image == cpu_image.removesuffix("-cpu") + "-gpu", (cpu_image, gpu_image)
        devices = gpu["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
        assert "deploy" not in cpu["services"][name]
    assert set(gpu["services"]) == set(cpu["services"])
    # TorchServe: derived from the official image of the same tag (deploy/torchserve/Dockerfile), the GPU one too.
    for files, variant in ((cpu, "cpu"), (gpu, "gpu")):
        ts = files["services"]["torchserve"]
        assert ts["image"] == f"model-gateway-torchserve:0.12.0-{variant}"
        assert ts["build"]["context"] == str(REPO / "deploy" / "torchserve")
        assert ts["build"]["args"] == {"TORCHSERVE_IMAGE": f"pytorch/torchserve:0.12.0-{variant}"}
    dockerfile = (REPO / "deploy/torchserve/Dockerfile").read_text()
    assert f"ARG TORCHSERVE_IMAGE={cpu['services']['torchserve']['build']['args']['TORCHSERVE_IMAGE']}\n" in dockerfile


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["target"]: volume for volume in service.get("volumes", [])}


def test_mounts_are_the_files_the_local_stack_runs_with(cpu: dict[str, Any]) -> None:
    services = cpu["services"]
    binds = {(name, target): Path(v["source"]).relative_to(REPO).as_posix()
             for name, service in services.items() for target, v in _mounts(service).items() if v["type"] == "bind"}
    assert binds == {
        ("init", "/seed/routes.yaml"): "deploy/compose/routes.yaml",
        ("init", "/seed/models.config"): "model_repo/tfserving/models.config",
        ("tfserving", "/models"): "model_repo/tfserving",
        ("tfserving", "/etc/tfserving"): "deploy/tfserving",
        ("torchserve", "/etc/torchserve"): "deploy/torchserve",
        ("torchserve", "/srv/model-store"): "model_repo/torchserve",
        ("prometheus", "/etc/prometheus"): "deploy/prometheus",
        ("grafana", "/etc/grafana/provisioning"): "deploy/grafana/provisioning",
        ("grafana", "/var/lib/grafana/dashboards"): "deploy/grafana/dashboards",
    }
    assert all(_mounts(services[name])[target].get("read_only") for name, target in binds if name != "init")
    for relative in binds.values():
        assert (REPO / relative).exists(), relative
    ts_config = (REPO / "deploy/torchserve/config.properties").read_text()
    assert "model_store=/srv/model-store\n" in ts_config
    assert "/models/" in (REPO / "model_repo/tfserving/models.config").read_text()


def test_model_servers_load_and_probe_the_local_stacks_models(cpu: dict[str, Any]) -> None:
    ts = cpu["services"]["torchserve"]
    argv = ts["command"]
    archives = argv[argv.index("--models") + 1:]
    assert archives == [archive for _name, _version, archive in TORCHSERVE_MODELS]
    assert argv[argv.index("--ts-config") + 1] == "/etc/torchserve/config.properties"
    assert ts["healthcheck"]["test"][1:] == ["python", "/etc/torchserve/ready.py",
                                             *sorted({name for name, _v, _a in TORCHSERVE_MODELS})]
    tf = cpu["services"]["tfserving"]
    assert tf["healthcheck"]["test"][1:] == ["bash", "/etc/tfserving/ready.sh", "8501", *TF_MODELS]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in tf["command"])
    assert flags["model_config_file"] == "/srv/tfserving/models.config"
    assert flags["monitoring_config_file"] == "/etc/tfserving/monitoring.config"
    assert int(flags["model_config_file_poll_wait_seconds"]) > 0


def test_gateway_reads_torchserve_keys_and_shares_tf_models_config(cpu: dict[str, Any]) -> None:
    """Token auth on: TorchServe writes key_file.json (0600) where the gateway reads it, as the same uid."""
    services = cpu["services"]
    gateway, ts, tf = services["gateway"], services["torchserve"], services["tfserving"]
    user = re.search(r"^USER (\d+):(\d+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert user and ts["user"] == f"{user[1]}:{user[2]}"
    assert _mounts(ts)[ts["working_dir"]]["source"] == _mounts(gateway)["/srv/torchserve"]["source"]
    assert _mounts(gateway)["/srv/torchserve"]["read_only"]
    assert gateway["environment"]["TORCHSERVE_KEY_FILE"] == "/srv/torchserve/key_file.json"
    assert "--disable-token-auth" not in ts["command"]
    config = gateway["environment"]["TFSERVING_MODEL_CONFIG"]
    assert any(f"--model_config_file={config}" == arg for arg in tf["command"])
    assert _mounts(tf)["/srv/tfserving"]["source"] == _mounts(gateway)["/srv/tfserving"]["source"]
    routes = yaml.safe_load((REPO / "deploy/compose/routes.yaml").read_text())
    assert routes["backends"]["torchserve"]["token_file"] == "${TORCHSERVE_KEY_FILE:-}"
    assert routes["backends"]["tfserving"]["model_config_file"] == "${TFSERVING_MODEL_CONFIG:-}"


def test_gateway_stops_after_its_drain_and_longest_backend_call(cpu: dict[str, Any]) -> None:
    grace = int(cpu["services"]["gateway"]["stop_grace_period"].removesuffix("s"))
    routes = yaml.safe_load((REPO / "deploy/compose/routes.yaml").read_text())
    longest = max(float(backend["timeout_s"]) for backend in routes["backends"].values())
    assert grace > Settings().drain_s + longest


def test_grafana_provisions_prometheus_and_opens_on_the_gateway_overview(cpu: dict[str, Any]) -> None:
    env = cpu["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == "/var/lib/grafana/dashboards/gateway-overview.json"
    provisioning = REPO / "deploy/grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    provider = yaml.safe_load((provisioning / "dashboards/model-gateway.yaml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
