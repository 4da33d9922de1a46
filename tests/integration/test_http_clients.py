"""The REST backends' HTTP client (gateway/backends/http.py) over each transport, aiohttp and pyreqwest
(GATEWAY_HTTP_CLIENT), against real sockets: what a try answers, Unsent / Dropped / BackendTimeout as the
endpoint pool relies on, exact limits, a stale keep-alive connection replaced once, the Host header and TLS name
of an endpoint resolved to an address, TLS and mutual TLS; then the REST adapters over both against the real
TorchServe and TF Serving, and a gateway process started with each setting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from gateway import tracing
from gateway.backends.endpoints import Dropped, EndpointPool, Unsent
from gateway.backends.http import HttpClient
from gateway.backends.tfserving import TFServingBackend
from gateway.backends.torchserve import TorchServeBackend
from gateway.dev import localstack
from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError
from gateway.routes.schema import BackendConfig, BackendTLS
from gateway.settings import HTTP_CLIENTS
from gateway.types import InferRequest, ModelRef, Target, Tensor

from ..securitykit import CA
from .stack import Blackhole

pytestmark = pytest.mark.parametrize("kind", HTTP_CLIENTS)
LATE_S = 1.0  # how far past its limit a try may end on a busy machine


def config(port: int = 1, **changes: Any) -> BackendConfig:
    fields: dict[str, Any] = {"name": "b", "kind": "tfserving", "url": f"http://127.0.0.1:{port}", "timeout_s": 10,
                              "dns_refresh_s": 0, "health_check": None, **changes}
    return BackendConfig(**fields)


@dataclass
class Backend:
    """An HTTP/1.1 server on 127.0.0.1 whose behaviour each test picks; it records the request heads it read."""

    behave: Callable[[Backend, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    tls: ssl.SSLContext | None = None
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    server: asyncio.Server | None = None

    async def head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if length:
            await reader.readexactly(length)
        self.heads.append(head)
        return head

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(Exception):
            await self.behave(self, reader, writer)
        writer.close()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serving(behave: Callable[[Backend, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                  tls: ssl.SSLContext | None = None) -> AsyncIterator[Backend]:
    backend = Backend(behave, tls)
    backend.server = await asyncio.start_server(backend._serve, "127.0.0.1", 0, ssl=tls)
    backend.port = backend.server.sockets[0].getsockname()[1]
    try:
        yield backend
    finally:
        backend.server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


async def answers(backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await backend.head(reader)
        writer.write(OK)
        await writer.drain()


async def answers_once_then_closes(backend: Backend, reader: asyncio.StreamReader,
                                   writer: asyncio.StreamWriter) -> None:
    """Keep-alive in its headers, then the connection closed while idle (a backend's own idle timeout)."""
    await backend.head(reader)
    writer.write(OK)
    await writer.drain()
    await asyncio.sleep(0.05)


async def reads_then_closes(backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await backend.head(reader)


async def never_answers(backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await backend.head(reader)
    await asyncio.sleep(60)


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def full_backlog() -> Any:
    """A port whose accept queue is full: SYNs go unanswered, so a connection attempt hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(listener.getsockname())
            fillers.append(s)
        yield listener.getsockname()[1]
    finally:
        for s in fillers:
            s.close()
        listener.close()


@contextlib.asynccontextmanager
async def client(kind: str, cfg: BackendConfig, pool: EndpointPool | None = None) -> AsyncIterator[HttpClient]:
    http = HttpClient(cfg, pool, client=kind)
    try:
        yield http
    finally:
        await http.close()


async def test_an_answer_comes_back_with_the_headers_sent(kind: str) -> None:
    async with serving(answers) as backend, client(kind, config(backend.port)) as http:
        token = tracing.outgoing.set((("traceparent", "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"),))
        try:
            result = await http.send("POST", backend.url + "/v1/models/m:predict", body=b'{"instances":[1]}',
                                     headers={"Content-Type": "application/json"}, limit=5)
        finally:
            tracing.outgoing.reset(token)
        assert (result.status, result.body, result.content_type) == (200, b'{"ok":true}', "application/json")
        head = backend.heads[-1].decode().lower()
        assert head.startswith("post /v1/models/m:predict http/1.1")
        assert "content-type: application/json" in head and f"traceparent: 00-{'ab' * 16}" in head
        assert f"host: 127.0.0.1:{backend.port}" in head and "content-length: 17" in head
        for _ in range(3):  # kept alive: one connection
            await http.send("GET", backend.url + "/v1/models/m", body=None, headers=None, limit=5)
        assert backend.connections == 1


async def test_an_endpoint_resolved_from_a_name_gets_that_name_as_its_host(kind: str) -> None:
    async with serving(answers) as backend, client(kind, config(backend.port)) as http:
        await http.send("GET", backend.url + "/v1/models/m", body=None, headers=None, limit=5,
                        host=f"tf.backend.test:{backend.port}")
        assert f"host: tf.backend.test:{backend.port}\r\n" in backend.heads[-1].decode().lower()


async def test_an_endpoint_that_left_the_pool_has_its_connections_closed(kind: str) -> None:
    async with serving(answers) as backend, client(kind, config(backend.port)) as http:
        await http.send("GET", backend.url + "/v1/models/m", body=None, headers=None, limit=5)
        await http.transport.release(backend.url)
        await http.send("GET", backend.url + "/v1/models/m", body=None, headers=None, limit=5)
        # pyreqwest: that endpoint's client closed, a new one opened; aiohttp: its pool is shared (idle ones age out)
        assert backend.connections == (2 if kind == "pyreqwest" else 1)


async def test_no_connection_is_unsent_and_goes_to_another_endpoint(kind: str) -> None:
    dead = f"http://127.0.0.1:{refused_port()}"
    async with serving(answers) as backend:
        with pytest.raises(Unsent, match="unreachable"):
            async with client(kind, config()) as http:
                await http.send("GET", dead + "/v1/models/m", body=None, headers=None, limit=5)
        cfg = config(backend.port, urls=(dead, backend.url))
        pool = EndpointPool(cfg, cfg.inference_urls)
        async with client(kind, cfg, pool) as http:
            for _ in range(6):  # every call answered: the refused tries went to the other endpoint
                assert (await http.call("GET", "/v1/models/m")).status == 200
        await pool.close()


async def test_no_connection_within_the_connect_timeout_is_unsent_at_that_time(kind: str) -> None:
    with full_backlog() as port:
        async with client(kind, config(port, connect_timeout_s=0.4)) as http:
            began = time.monotonic()
            with pytest.raises(Unsent, match=r"no connection within 0\.4s"):
                await http.send("GET", f"http://127.0.0.1:{port}/", body=None, headers=None, limit=5)
            assert 0.4 <= time.monotonic() - began < 0.4 + LATE_S


async def test_no_answer_within_the_limit_is_a_timeout_at_that_time(kind: str) -> None:
    async with serving(never_answers) as backend, client(kind, config(backend.port)) as http:
        for limit in (0.3, 1.25):  # exact, not rounded to whole seconds
            began = time.monotonic()
            with pytest.raises(BackendTimeout, match=f"did not answer within {limit:g}s"):
                await http.send("POST", backend.url + "/p", body=b"{}", headers=None, limit=limit)
            assert limit <= time.monotonic() - began < limit + LATE_S
    with full_backlog() as port:  # the try's limit also bounds the connection attempt
        async with client(kind, config(port, connect_timeout_s=5)) as http:
            began = time.monotonic()
            with pytest.raises(BackendTimeout):
                await http.send("GET", f"http://127.0.0.1:{port}/", body=None, headers=None, limit=0.5)
            assert 0.5 <= time.monotonic() - began < 0.5 + LATE_S


async def test_a_connection_lost_after_sending_is_dropped_after_one_replacement(kind: str) -> None:
    async with serving(reads_then_closes) as backend, client(kind, config(backend.port)) as http:
        with pytest.raises(Dropped, match="unreachable"):
            await http.send("POST", backend.url + "/p", body=b"{}", headers=None, limit=5)
        assert len(backend.heads) == 2  # sent once, then once more on a new connection


async def test_a_keepalive_connection_the_backend_closed_while_idle_is_replaced(kind: str) -> None:
    async with serving(answers_once_then_closes) as backend, client(kind, config(backend.port)) as http:
        for _ in range(4):
            result = await http.send("POST", backend.url + "/p", body=b"{}", headers=None, limit=5)
            assert result.status == 200
            await asyncio.sleep(0.2)  # the backend has closed it by now
        assert backend.connections >= 4 and len(backend.heads) >= 4


async def test_calls_past_max_connections_wait_within_their_limit(kind: str) -> None:
    async with serving(never_answers) as backend, client(kind, config(backend.port, max_connections=1)) as http:
        first = asyncio.create_task(http.send("POST", backend.url + "/p", body=b"{}", headers=None, limit=3))
        while not backend.heads:
            await asyncio.sleep(0.01)
        began = time.monotonic()
        with pytest.raises(BackendTimeout):
            await http.send("POST", backend.url + "/p", body=b"{}", headers=None, limit=0.5)
        assert 0.5 <= time.monotonic() - began < 0.5 + LATE_S and backend.connections == 1
        with pytest.raises(BackendTimeout):
            await first


# --- TLS ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = CA()
    ca.write(d / "ca.pem")
    ca.issue(names=("tf.backend.test",)).write(d / "server.pem", d / "server.key")
    ca.issue("gateway", client=True).write(d / "client.pem", d / "client.key")
    return {"ca": d / "ca.pem", **{n: d / n for n in ("server.pem", "server.key", "client.pem", "client.key")}}


def server_tls(pki: dict[str, Path], *, mutual: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server.pem"], pki["server.key"])
    if mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki["ca"])
    return context


async def test_tls_is_verified_against_the_ca_and_the_endpoints_name(kind: str, pki: dict[str, Path]) -> None:
    async with serving(answers, server_tls(pki, mutual=False)) as backend:
        cfg = config(backend.port, tls=BackendTLS(ca_file=pki["ca"]))
        async with client(kind, cfg) as http:
            result = await http.send("GET", backend.url + "/v1/models/m", body=None, headers=None, limit=5,
                                     host=f"tf.backend.test:{backend.port}")
            assert result.status == 200
            with pytest.raises(Unsent):  # the certificate is not 127.0.0.1's: no connection
                await http.send("GET", backend.url + "/v1/models/m", body=None, headers=None, limit=5)
        async with client(kind, config(backend.port)) as http:  # the system's CAs do not know this one
            with pytest.raises(Unsent):
                await http.send("GET", backend.url + "/", body=None, headers=None, limit=5,
                                host=f"tf.backend.test:{backend.port}")
        assert len(backend.heads) == 1


async def test_mutual_tls_presents_the_gateways_certificate(kind: str, pki: dict[str, Path]) -> None:
    async with serving(answers, server_tls(pki, mutual=True)) as backend:
        host = f"tf.backend.test:{backend.port}"
        cfg = config(backend.port, tls=BackendTLS(ca_file=pki["ca"], cert_file=pki["client.pem"],
                                                  key_file=pki["client.key"]))
        async with client(kind, cfg) as http:
            result = await http.send("GET", backend.url + "/", body=None, headers=None, limit=5, host=host)
            assert result.status == 200
        async with client(kind, config(backend.port, tls=BackendTLS(ca_file=pki["ca"]))) as http:
            with pytest.raises(BackendUnavailable):  # refused during or right after the handshake
                await http.send("GET", backend.url + "/", body=None, headers=None, limit=5, host=host)
        assert len(backend.heads) == 1


# --- the REST adapters over each client against the real backends ---------------------------------------------------

def target(model: str, version: str) -> Target:
    return Target(backend="b", model=model, version=version, logical_model=model, logical_version=version)


X3 = np.array([[1, 2, 3], [-4, 0.5, 10]], np.float32)


async def test_tfserving_rest_adapter(kind: str, tfserving: localstack.TFServingEndpoints) -> None:
    tf = TFServingBackend(config(url=tfserving.rest_url, name="tf"), kind)
    try:
        response = await tf.infer(target("affine", "1"), InferRequest(ModelRef("m"), (Tensor("x", "FP32", X3),)))
        np.testing.assert_allclose(response.outputs[0].data, 0.5 * X3 + 2, rtol=1e-6)
        assert (await tf.status(target("affine", "1"))).state == "AVAILABLE"
        with pytest.raises(GatewayError, match="no_such_model"):
            await tf.infer(target("no_such_model", "1"), InferRequest(ModelRef("m"), (Tensor("x", "FP32", X3),)))
    finally:
        await tf.close()


async def test_torchserve_rest_adapter(kind: str, torchserve: localstack.TorchServeEndpoints) -> None:
    ts = TorchServeBackend(config(kind="torchserve", url=torchserve.inference_url, name="ts",
                                  management_url=torchserve.management_url, token_file=torchserve.key_file), kind)
    try:
        response = await ts.infer(target("scale", "1"), InferRequest(ModelRef("m"), (Tensor("x", "FP32", X3),)))
        np.testing.assert_allclose(response.outputs[0].data, 2 * X3, rtol=1e-6)
        assert (await ts.status(target("scale", "1"))).state == "AVAILABLE"
    finally:
        await ts.close()


# --- a gateway process with GATEWAY_HTTP_CLIENT set ----------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_a_gateway_calls_its_rest_backends_with_the_chosen_client(kind: str, tmp_path: Path, blackhole: Blackhole,
                                                                 tfserving: localstack.TFServingEndpoints) -> None:
    """Mutual TLS to a backend named by a host name (resolved, called by that name) beside an endpoint that refuses,
    a real TF Serving, and a backend that never answers (504 at its exact timeout_s)."""
    ca = CA()
    ca_file = ca.write(tmp_path / "ca.pem")
    ca.issue().write(tmp_path / "backend.crt", tmp_path / "backend.key")
    ca.issue("model-gateway", client=True).write(tmp_path / "client.crt", tmp_path / "client.key")
    port = localstack.free_port()
    fast = localstack.spawn_process(
        "fast-mtls", [sys.executable, str(REPO / "load_tests" / "fast_backend.py"), "--port", str(port),
                      "--tls-cert", str(tmp_path / "backend.crt"), "--tls-key", str(tmp_path / "backend.key"),
                      "--client-ca", str(ca_file)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, log_path=tmp_path / "fast.log")
    tls = {"ca_file": str(ca_file), "cert_file": str(tmp_path / "client.crt"), "key_file": str(tmp_path / "client.key")}
    routes = {"revision": 1, "backends": {
        "fast_mtls": {"kind": "tfserving", "url": [f"https://localhost:{port}", f"https://127.0.0.1:{refused_port()}"],
                      "tls": tls, "timeout_s": 10, "health_check": False},
        "tf": {"kind": "tfserving", "url": tfserving.rest_url, "timeout_s": 10},
        "hanging": {"kind": "tfserving", "url": f"http://127.0.0.1:{blackhole.port}", "timeout_s": 1.3,
                    "health_check": False}},
        "models": {name: {"versions": {1: {"backend": backend, "model": model, "version": 1}}}
                   for name, backend, model in (("fast", "fast_mtls", "fast"), ("affine", "tf", "affine"),
                                                ("hang", "hanging", "fast"))}}
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump(routes))
    try:
        proc, url = localstack.start_gateway(tmp_path / "gateway", tmp_path / "routes.yaml",
                                             env={"GATEWAY_HTTP_CLIENT": kind, "GATEWAY_GRPC_PORT": "0",
                                                  "GATEWAY_ADMIN_PORT": "0"})
    except BaseException:
        fast.stop()
        raise
    try:
        with httpx.Client(base_url=url, timeout=30) as gw:
            for _ in range(8):  # every call answered: the refusing endpoint's tries went to the other one
                r = gw.post("/v1/models/fast:predict", json={"instances": [[1, 2, 3]]})
                assert r.status_code == 200 and len(r.json()["predictions"]) == 8, r.text
            r = gw.post("/v1/models/affine:predict", json={"instances": [[1, 2, 3]]})
            assert r.status_code == 200 and r.json()["predictions"] == [[2.5, 3.0, 3.5]], r.text
            began = time.monotonic()
            r = gw.post("/v1/models/hang:predict", json={"instances": [[1, 2, 3]]})
            assert r.status_code == 504 and "1.3s" in r.text, r.text
            assert 1.3 <= time.monotonic() - began < 1.3 + LATE_S
        assert loaded_in_group(proc.pgid, "_pyreqwest") == (kind == "pyreqwest")  # the setting chose the client
    finally:
        proc.stop()
        fast.stop()


def loaded_in_group(pgid: int, library: str) -> bool:
    """Whether a live process of the group has mapped a shared library whose path contains ``library``."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError):
            stat = (entry / "stat").read_text()
            if entry.name.isdigit() and stat[stat.rfind(")") + 2:].split()[2] == str(pgid) and \
                    library in (entry / "maps").read_text():
                return True
    return False
