"""Real processes for integration tests: TorchServe (token auth on), TF Serving (real binary or the stand-in),
and the gateway itself as its own process, wired by a routes file built from examples/routes.local.yaml."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.dev import localstack
from gateway.dev.devstack import MODEL_REPO, TF_MODELS, TORCHSERVE_DEFAULTS, TORCHSERVE_MODELS

from .stack import MAX_BODY_BYTES, Blackhole, Gateway, build_routes


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def torchserve(stack_dir: Path) -> Iterator[localstack.TorchServeEndpoints]:
    proc, endpoints = localstack.start_torchserve(
        stack_dir / "torchserve", MODEL_REPO / "torchserve", TORCHSERVE_MODELS, token_auth=True,
        defaults=TORCHSERVE_DEFAULTS)
    yield endpoints
    proc.stop()


@pytest.fixture(scope="session")
def tfserving(stack_dir: Path) -> Iterator[localstack.TFServingEndpoints]:
    proc, endpoints = localstack.start_tfserving(
        stack_dir / "tfserving", MODEL_REPO / "tfserving" / "models.config", MODEL_REPO / "tfserving",
        wait_models=TF_MODELS)
    yield endpoints
    proc.stop()


@pytest.fixture(scope="session")
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


@pytest.fixture(scope="session")
def gateway(stack_dir: Path, torchserve: localstack.TorchServeEndpoints, tfserving: localstack.TFServingEndpoints,
            blackhole: Blackhole) -> Iterator[Gateway]:
    routes_file = stack_dir / "routes.yaml"
    routes_file.write_text(yaml.safe_dump(build_routes(torchserve, tfserving, blackhole.port)))
    grpc_port, admin_port, admin_token = localstack.free_port(), localstack.free_port(), secrets.token_urlsafe(24)
    proc, url = localstack.start_gateway(
        stack_dir / "gateway", routes_file,
        env={"GATEWAY_MAX_BODY_BYTES": str(MAX_BODY_BYTES), "GATEWAY_ROUTES_POLL_S": "0.2",
             "GATEWAY_GRPC_PORT": str(grpc_port), "GATEWAY_ADMIN_PORT": str(admin_port),
             "GATEWAY_ADMIN_TOKEN": admin_token})
    yield Gateway(url=url, grpc_target=f"127.0.0.1:{grpc_port}", routes_file=routes_file, process=proc,
                  admin_url=f"http://127.0.0.1:{admin_port}", admin_token=admin_token)
    proc.stop()


@pytest.fixture()
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as c:
        yield c
