"""The integration tests' stack: the gateway process as the tests see it, a backend that hangs, and the routes
file the session's gateway serves (examples/routes.local.yaml with the real ports, plus targets that fail on
purpose). Fixtures that start them are in conftest.py."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from gateway.dev import localstack
from gateway.dev.devstack import EXAMPLE_ROUTES

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
    # Without health checks, which would take them out of service (calls then fail at once): these test timeouts.
    backends["hanging"] = {"kind": "tfserving", "url": f"http://127.0.0.1:{hole_port}", "timeout_s": 0.5,
                           "health_check": False}
    backends["hanging_long"] = {"kind": "tfserving", "url": f"http://127.0.0.1:{hole_port}", "timeout_s": 30,
                                "health_check": False}
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
