"""Real processes for integration tests: TorchServe (token auth on), TF Serving (real binary or the stand-in),
and the gateway itself as its own process, wired by a routes file built from examples/routes.local.yaml."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.dev import localstack
from gateway.dev.devstack import EXAMPLE_ROUTES, MODEL_REPO, TF_MODELS, TORCHSERVE_MODELS

MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Gateway:
    url: str
    grpc_target: str
    routes_file: Path
    process: localstack.ManagedProcess
    admin_url: str = ""  # the admin API (its own port and token)
    admin_token: str = ""

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def torchserve(stack_dir: Path) -> Iterator[localstack.TorchServeEndpoints]:
    proc, endpoints = localstack.start_torchserve(
        stack_dir / "torchserve", MODEL_REPO / "torchserve", TORCHSERVE_MODELS, token_auth=True,
        defaults={"mlp": "1", "scale": "2"})
    yield endpoints
    proc.stop()


@pytest.fixture(scope="session")
def tfserving(stack_dir: Path) -> Iterator[localstack.TFServingEndpoints]:
    proc, endpoints = localstack.start_tfserving(
        stack_dir / "tfserving", MODEL_REPO / "tfserving" / "models.config", MODEL_REPO / "tfserving",
        wait_models=TF_MODELS)
    yield endpoints
    proc.stop()


class Blackhole:
    """A TCP server that accepts connections and never answers: a backend that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture(scope="session")
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


def build_routes(ts: localstack.TorchServeEndpoints, tf: localstack.TFServingEndpoints, hole_port: int) -> dict:  # type: ignore[type-arg]
    """The example routes with real URLs, plus targets that fail on purpose."""
    routes = yaml.safe_load(EXAMPLE_ROUTES.read_text())
    backends = routes["backends"]
    backends["tfserving"]["url"] = tf.rest_url
    backends["torchserve"].update(url=ts.inference_url, management_url=ts.management_url,
                                  token_file=str(ts.key_file))
    # The same servers over their gRPC APIs: every front must reach both backend kinds over both transports.
    backends["tfserving_grpc"] = {"kind": "tfserving", "url": tf.rest_url, "transport": "grpc",
                                  "grpc_target": tf.grpc_target, "timeout_s": 10}
    backends["torchserve_grpc"] = {"kind": "torchserve", "url": ts.inference_url, "transport": "grpc",
                                   "grpc_target": ts.grpc_inference_target, "management_url": ts.management_url,
                                   "grpc_management_target": ts.grpc_management_target,
                                   "token_file": str(ts.key_file), "timeout_s": 10}
    backends["down"] = {"kind": "torchserve", "url": f"http://127.0.0.1:{localstack.free_port()}",
                        "management_url": f"http://127.0.0.1:{localstack.free_port()}", "connect_timeout_s": 1}
    backends["hanging"] = {"kind": "tfserving", "url": f"http://127.0.0.1:{hole_port}", "timeout_s": 0.5}
    backends["hanging_long"] = {"kind": "tfserving", "url": f"http://127.0.0.1:{hole_port}", "timeout_s": 30}
    models = routes["models"]
    models["affine_grpc"] = {**models["affine"], "versions": {
        v: {**t, "backend": "tfserving_grpc"} for v, t in models["affine"]["versions"].items()}}
    models["scale_grpc"] = {**models["scale"], "versions": {
        v: {**t, "backend": "torchserve_grpc"} for v, t in models["scale"]["versions"].items()}}
    mlp_schema = models["mlp_torch"]["schema"]
    mlp_versions = {1: {"backend": "tfserving", "model": "mlp", "version": 1},
                    2: {"backend": "torchserve", "model": "mlp", "version": "1"},
                    3: {"backend": "tfserving", "model": "mlp", "version": 2}}
    scale_x = models["scale"]["schema"]
    models.update({
        # The same weights on both frameworks, split 50/50 by a sticky user key, assignments logged.
        "mlp_ab": {"schema": mlp_schema, "versions": mlp_versions, "experiment": {
            "name": "port", "sticky_key": {"header": "x-user-id"}, "log_assignments": True,
            "variants": [{"name": "tf", "version": 1, "weight": 50}, {"name": "torch", "version": 2,
                                                                         "weight": 50}]}},
        "mlp_locked": {"schema": mlp_schema, "versions": mlp_versions, "allow_overrides": False},
        # Shadows: the TorchServe port of the same weights (must agree), and the next version (must not).
        "mlp_port": {"schema": mlp_schema, "versions": mlp_versions, "default_version": 1,
                     "shadow": {"version": 2, "percent": 100, "tolerance": 1e-4}},
        "mlp_next": {"schema": mlp_schema, "versions": mlp_versions, "default_version": 1,
                     "shadow": {"version": 3, "percent": 100, "tolerance": 1e-4}},
        # Shadows that hang or fail must not touch the primary.
        "scale_slow_shadow": {"schema": scale_x, "default_version": 1, "shadow": {"version": 2, "percent": 100,
                                                                                   "timeout_s": 3},
                              "versions": {1: {"backend": "torchserve", "model": "scale", "version": "1"},
                                           2: {"backend": "hanging_long", "model": "scale", "version": 1}}},
        "scale_failing_shadow": {"schema": scale_x, "default_version": 1, "shadow": {"version": 2, "percent": 100},
                                 "versions": {1: {"backend": "torchserve", "model": "scale", "version": "1"},
                                              2: {"backend": "down", "model": "scale", "version": "1"}}},
    })
    # Only the zero-downtime switch test changes these (default 1 -> 2 and back).
    models["switch_scale"] = {**models["scale"], "default_version": 1, "labels": {}}
    models["switch_affine"] = {**models["affine"], "default_version": 1, "labels": {}}
    # Only the canary rollout test changes this one: v1 y=2x, v2 y=3x (TorchServe), v3 a backend that is down.
    models["canary_scale"] = {**models["scale"], "default_version": 1, "labels": {}, "versions": {
        1: {"backend": "torchserve", "model": "scale", "version": "1"},
        2: {"backend": "torchserve", "model": "scale", "version": "2"},
        3: {"backend": "down", "model": "scale", "version": "1"}}}
    routes["models"].update({
        "ghost": {"versions": {1: {"backend": "down", "model": "ghost", "version": "1"}}},
        "sleepy": {"versions": {1: {"backend": "hanging", "model": "sleepy", "version": 1}}},
        "unloaded": {"versions": {1: {"backend": "torchserve", "model": "scale", "version": "9"},
                                  2: {"backend": "tfserving", "model": "affine", "version": 9}}},
    })
    return routes  # type: ignore[no-any-return]


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
