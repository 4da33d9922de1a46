"""The gateway abused as an operator would (issue 12), against real local processes on 127.0.0.1, every loop bounded
in count and time: thousands of idle and slow-header connections, keep-alive clients, a flood of clients against
TorchServe, a backend that hangs (SIGSTOP) or dies (SIGKILL), a black hole among a backend's endpoints, load shared
by two TF Servings, slow gRPC calls across connection ageing, exact timeouts. Each scenario returns its figures.

:class:`AbuseStack` starts the processes: a TorchServe of its own (``scale`` v1, a job queue of 8, so that it can
be overrun), two TF Servings (real or the stand-in; ``affine``), the fast test backends (one answering at once, one
after 5 s, a gRPC one after a minute), two black holes (one that accepts connections and never answers, one that
accepts none) and the gateway, with :func:`routes`.

Used with small numbers by tests/integration/test_resilience.py and with the issue's numbers by
load_tests/bench_resilience.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import resource
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import yaml

from gateway.dev import localstack
from gateway.dev.devstack import MODEL_REPO
from gateway.protos import services
from gateway.protos import v2_pb2 as v2

REPO_ROOT = Path(__file__).resolve().parents[2]
X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
SCHEMA_X3 = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
             "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]}
TS_QUEUE = 8  # the stack's TorchServe job queue: small, so that a flood can overrun it
SHED = {"max_inflight": 8, "max_queue": 16, "max_wait_s": 0.5}  # the flood's backend admission: TorchServe's queue
HANG = {"max_inflight": 4, "max_queue": 8, "max_wait_s": 0.25}
EXACT_TIMEOUT_S = 5.3  # above aiohttp's 5 s threshold for rounding timeouts up to whole seconds
SLOW_CALL_S = 5.0
AFFINE_ONLY = 'model_config_list {\n  config {\n    name: "affine"\n    base_path: "/models/affine"\n' \
              '    model_platform: "tensorflow"\n    model_version_policy { all {} }\n  }\n}\n'


def raise_fd_limit() -> int:
    """This process's soft open-file limit raised to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


# ------------------------------------------------------------------------------------------------------ the stack


class Acceptor:
    """Accepts connections and never answers: a backend that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


class SynDrop:
    """Accepts nothing: a listening socket whose one-place backlog is full, so the kernel drops every further SYN
    and a client's connect hangs until its timeout (a node gone without a trace)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers: list[socket.socket] = []
        while True:
            filler = socket.socket()
            filler.settimeout(0.3)
            try:
                filler.connect(("127.0.0.1", self.port))
            except OSError:
                filler.close()
                break
            self.fillers.append(filler)

    def close(self) -> None:
        for s in (*self.fillers, self.sock):
            s.close()


@dataclass
class AbuseStack:
    workdir: Path
    torchserve: localstack.TorchServeEndpoints
    tf_a: localstack.TFServingEndpoints
    tf_b: localstack.TFServingEndpoints
    fast_url: str
    slow_url: str
    slow_grpc_target: str
    acceptor: Acceptor
    syndrop: SynDrop
    down_port: int
    processes: dict[str, localstack.ManagedProcess] = field(default_factory=dict)
    gateway_url: str = ""
    grpc_target: str = ""

    @property
    def gateway_pid(self) -> int:
        return self.processes["gateway"].popen.pid

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
        self.acceptor.close()
        self.syndrop.close()


def start_stack(workdir: Path, *, tf_a: localstack.TFServingEndpoints | None = None,
                gateway_env: dict[str, str] | None = None) -> AbuseStack:
    """Every process of the stack (TorchServe and the TF Servings started side by side), then the gateway."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "affine.config").write_text(AFFINE_ONLY)
    started: dict[str, localstack.ManagedProcess] = {}

    def tfserving(name: str) -> localstack.TFServingEndpoints:
        proc, endpoints = localstack.start_tfserving(workdir / name, workdir / "affine.config",
                                                     MODEL_REPO / "tfserving", wait_models=("affine",))
        started[name] = proc
        return endpoints

    def torchserve() -> localstack.TorchServeEndpoints:
        proc, endpoints = localstack.start_torchserve(
            workdir / "torchserve", MODEL_REPO / "torchserve", (("scale", "1", "scale-1.mar"),), token_auth=False,
            extra_config={"job_queue_size": str(TS_QUEUE)})
        started["torchserve"] = proc
        return endpoints

    fast, slow, slow_grpc = (localstack.free_port() for _ in range(3))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for name, argv in (("fast", ["load_tests/fast_backend.py", "--port", str(fast)]),
                       ("slow", ["load_tests/fast_backend.py", "--port", str(slow), "--delay-s", str(SLOW_CALL_S)]),
                       ("slow_grpc", ["load_tests/fast_grpc_backend.py", "--port", str(slow_grpc), "--delay-s", "60"])):
        started[name] = localstack.spawn_process(name, [sys.executable, *argv], cwd=REPO_ROOT, env=env,
                                                 log_path=workdir / f"{name}.log")
    try:
        with ThreadPoolExecutor(3) as pool:
            ts = pool.submit(torchserve)
            tf_b = pool.submit(tfserving, "tf_b")
            tf_a_future = pool.submit(tfserving, "tf_a") if tf_a is None else None
            stack = AbuseStack(workdir=workdir, torchserve=ts.result(), tf_b=tf_b.result(),
                               tf_a=tf_a if tf_a_future is None else tf_a_future.result(),
                               fast_url=f"http://127.0.0.1:{fast}", slow_url=f"http://127.0.0.1:{slow}",
                               slow_grpc_target=f"127.0.0.1:{slow_grpc}", acceptor=Acceptor(), syndrop=SynDrop(),
                               down_port=localstack.free_port(), processes=started)
        for port in (fast, slow, slow_grpc):
            _wait_port(port, 20)
        routes_file = workdir / "routes.yaml"
        routes_file.write_text(yaml.safe_dump(routes(stack)))
        grpc_port = localstack.free_port()
        proc, url = localstack.start_gateway(workdir / "gateway", routes_file, env={
            "GATEWAY_GRPC_PORT": str(grpc_port), "GATEWAY_ADMIN_PORT": "0", "GATEWAY_HEADER_TIMEOUT_S": "2",
            "GATEWAY_BODY_TIMEOUT_S": "2", "GATEWAY_DRAIN_S": "1.5", "GATEWAY_ACCESS_LOG_SAMPLE": "1",
            **(gateway_env or {})})
    except BaseException:
        for proc in started.values():
            proc.stop()
        raise
    stack.processes["gateway"] = proc
    stack.gateway_url, stack.grpc_target = url, f"127.0.0.1:{grpc_port}"
    return stack


def another_gateway(stack: AbuseStack, name: str, env: dict[str, str]) -> str:
    """One more gateway on the stack's routes with other settings (a baseline); stopped with the stack."""
    proc, url = localstack.start_gateway(stack.workdir / name, stack.workdir / "routes.yaml", env={
        "GATEWAY_ADMIN_PORT": "0", "GATEWAY_DRAIN_S": "0", "GATEWAY_ACCESS_LOG_SAMPLE": "1", **env})
    stack.processes[name] = proc
    return url


def _wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s")
        time.sleep(0.1)


def routes(stack: AbuseStack) -> dict[str, Any]:
    ts, quick = stack.torchserve, {"interval_s": 0.25, "timeout_s": 0.25}
    backends: dict[str, dict[str, Any]] = {
        "ts_shed": {"kind": "torchserve", "url": ts.inference_url, "timeout_s": 5, "admission": SHED},
        "ts_hang": {"kind": "torchserve", "url": ts.inference_url, "timeout_s": 1, "admission": HANG,
                    "health_check": quick},
        "ts_ab": {"kind": "torchserve", "url": ts.inference_url, "timeout_s": 5, "health_check": quick,
                  "admission": {"max_inflight": 4, "max_queue": 64, "max_wait_s": 3}},
        # The admission above TorchServe's own queue: its queue-full answers reach the gateway.
        "ts_busy": {"kind": "torchserve", "url": ts.inference_url, "transport": "grpc",
                    "grpc_target": ts.grpc_inference_target, "timeout_s": 10,
                    "admission": {"max_inflight": 400, "max_queue": 0}},
        # As the gateway was before issue 12 (no limit, no health checks, no ejection): the benchmark's baseline.
        "ts_open": {"kind": "torchserve", "url": ts.inference_url, "timeout_s": 30, "health_check": False,
                    "outlier_ejection": {"consecutive_failures": 0},
                    "admission": {"max_inflight": 100_000, "max_queue": 0}},
        "tf_pair": {"kind": "tfserving", "url": [stack.tf_a.rest_url, stack.tf_b.rest_url]},
        # Passive ejection alone; a retry budget for every try that can fail at once (the hole's connect timeouts
        # end together): the budget is not what this backend shows.
        "tf_trio": {"kind": "tfserving", "url": [stack.tf_a.rest_url, stack.tf_b.rest_url,
                                                 f"http://127.0.0.1:{stack.syndrop.port}"],
                    "connect_timeout_s": 1, "health_check": False, "retries": {"min_concurrency": 16}},
        "tf_b": {"kind": "tfserving", "url": stack.tf_b.rest_url, "connect_timeout_s": 1, "health_check": quick},
        # Thousands of clients at once: a deep queue in front of its 128 connections (more would overwhelm this
        # one-process backend on shared cores), so that the connection layer is what is measured.
        "fast": {"kind": "tfserving", "url": stack.fast_url,
                 "admission": {"max_inflight": 128, "max_queue": 8192, "max_wait_s": 30}},
        "slow": {"kind": "tfserving", "url": stack.slow_url, "timeout_s": 10, "health_check": False},
        "hang_rest": {"kind": "tfserving", "url": f"http://127.0.0.1:{stack.acceptor.port}",
                      "timeout_s": EXACT_TIMEOUT_S, "health_check": False},
        "hang_grpc": {"kind": "tfserving", "url": "http://127.0.0.1:9", "transport": "grpc",
                      "grpc_target": stack.slow_grpc_target, "timeout_s": EXACT_TIMEOUT_S, "health_check": False},
        "down": {"kind": "torchserve", "url": f"http://127.0.0.1:{stack.down_port}", "transport": "grpc",
                 "grpc_target": f"127.0.0.1:{stack.down_port}", "health_check": False},
    }

    def model(backend: str, name: str, version: Any = 1, **extra: Any) -> dict[str, Any]:
        return {"schema": SCHEMA_X3, "versions": {1: {"backend": backend, "model": name, "version": version}},
                **extra}

    ab_versions = {1: {"backend": "ts_ab", "model": "scale", "version": "1"},
                   2: {"backend": "tf_b", "model": "affine", "version": 1}}
    variants = [{"name": "torch", "version": 1, "weight": 50}, {"name": "tf", "version": 2, "weight": 50}]
    models = {
        "shed": model("ts_shed", "scale", "1"), "hang": model("ts_hang", "scale", "1"),
        "open": model("ts_open", "scale", "1"),
        "busy": model("ts_busy", "scale", "1"), "pair": model("tf_pair", "affine"),
        "trio": model("tf_trio", "affine"), "fast": model("fast", "fast"), "slow": model("slow", "fast"),
        "hang_rest": model("hang_rest", "m"), "hang_grpc": model("hang_grpc", "m"), "down": model("down", "m", "1"),
        "ab_failover": {"schema": SCHEMA_X3, "versions": ab_versions,
                        "experiment": {"variants": variants, "failover": "torch"}},
        "ab_plain": {"schema": SCHEMA_X3, "versions": ab_versions, "experiment": {"variants": variants}},
    }
    return {"revision": 1, "backends": backends, "models": models}


# ------------------------------------------------------------------------------------------------- measurements


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class AccessLog:
    """The gateway's own timings: its JSON access log (GATEWAY_ACCESS_LOG_SAMPLE=1), read from a mark on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size

    def lines(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        out = []
        for line in data.decode(errors="replace").splitlines():
            start = line.find("{\"ts\"")
            if start >= 0:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line[start:]))
        return out


def gateway_log(stack: AbuseStack) -> Path:
    return stack.processes["gateway"].log_path


async def post(session: aiohttp.ClientSession, url: str, body: Any = X3,
               headers: dict[str, str] | None = None, timeout_s: float = 30) -> tuple[int, float, str, dict[str, str]]:
    """(status, seconds, body text, headers); status 0 when the request failed without an answer."""
    started = time.perf_counter()
    try:
        async with session.post(url, json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            text = await resp.text()
            return resp.status, time.perf_counter() - started, text, dict(resp.headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, time.perf_counter() - started, f"{type(exc).__name__}: {exc}", {}


# ---------------------------------------------------------------------------------------------------- scenarios


@dataclass
class IdleResult:
    idle: int
    slow: int
    served: int
    failed: int
    served_p99_s: float
    idle_closed: int
    slow_closed: int
    closed_after_s: tuple[float, float]  # p50, max: from a connection's opening to its close by the gateway

    def lines(self) -> list[str]:
        return [f"{self.idle} idle + {self.slow} slow-header connections: {self.served} requests served meanwhile, "
                f"{self.failed} failed (p99 {ms(self.served_p99_s)}); closed by the gateway: {self.idle_closed}/"
                f"{self.idle} idle and {self.slow_closed}/{self.slow} slow ones, {self.closed_after_s[0]:.2f} s "
                f"(p50) / {self.closed_after_s[1]:.2f} s (max) after they opened"]


async def idle_and_slow_connections(url: str, idle: int, slow: int, header_timeout_s: float) -> IdleResult:
    """``idle`` connections that send nothing and ``slow`` that send a request head a line at a time, every 0.5 s,
    while a client keeps sending requests; when the gateway closed each of them."""
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    closed: list[tuple[bool, float]] = []  # (slow, seconds from open to close)

    async def watch(reader: asyncio.StreamReader, opened: float, is_slow: bool) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(4096):
                pass
        closed.append((is_slow, time.monotonic() - opened))

    conns, watchers = [], []
    for i in range(idle + slow):
        opened = time.monotonic()
        reader, writer = await asyncio.open_connection(host, int(port))
        conns.append(writer)
        watchers.append(asyncio.create_task(watch(reader, opened, i >= idle)))
    slow_writers = conns[idle:]
    for w in slow_writers:
        w.write(b"POST /v2/models/fast/infer HTTP/1.1\r\nHost: gateway\r\n")
    stop = time.monotonic() + header_timeout_s + 5

    async def dribble() -> None:
        while len(closed) < len(conns) and time.monotonic() < stop:
            for w in slow_writers:
                if not w.is_closing():
                    with contextlib.suppress(OSError, RuntimeError):
                        w.write(b"X-Slow: 1\r\n")
            await asyncio.sleep(0.5)

    latencies, failed = [], 0
    dribbler = asyncio.create_task(dribble())
    async with aiohttp.ClientSession() as session:
        while (len(closed) < len(conns) or len(latencies) < 20) and time.monotonic() < stop:
            status, seconds, _, _ = await post(session, f"{url}/v2/models/fast/infer", timeout_s=10)
            latencies.append(seconds)
            failed += status != 200
            await asyncio.sleep(0.02)
    await dribbler
    for w in conns:
        w.close()
    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    after = [seconds for _, seconds in closed]
    return IdleResult(idle, slow, len(latencies) - failed, failed, pct(latencies, 0.99),
                      sum(1 for s, _ in closed if not s), sum(1 for s, _ in closed if s),
                      (pct(after, 0.5), max(after, default=float("nan"))))


@dataclass
class KeepAliveResult:
    clients: int
    requests: int
    failed: int
    errors: Counter[str]
    longest_gap_s: float
    closed_idle_by_gateway: int

    def lines(self) -> list[str]:
        return [f"{self.clients} keep-alive clients (client keep-alive 15 s, gaps up to {self.longest_gap_s:.1f} s): "
                f"{self.requests} requests, {self.failed} failed {dict(self.errors) or ''}".rstrip() +
                f"; {self.closed_idle_by_gateway} idle connections closed by the gateway meanwhile"]


async def closed_connections(url: str, reason: str) -> int:
    """The gateway's count of REST connections it closed for ``reason`` (gateway_connections_closed_total)."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{url}/metrics")).text
    found = re.search(r'gateway_connections_closed_total\{listener="rest",reason="' + reason + r'"\} (\S+)', text)
    return int(float(found.group(1))) if found else 0


async def keepalive_clients(url: str, clients: int, rounds: int, gap_s: tuple[float, float] = (3.0, 14.5),
                            client_keepalive_s: float = 15.0) -> KeepAliveResult:
    """Each client its own connection (aiohttp's keep-alive pool of one, closing it after ``client_keepalive_s``
    idle), a request, a pause in ``gap_s``, ``rounds`` times: the pauses straddle what servers commonly close idle
    connections after (uvicorn's default 5 s), so a server closing first would fail some of these requests."""
    errors: Counter[str] = Counter()
    gaps: list[float] = []
    requests = 0
    idle_closes = await closed_connections(url, "idle")

    async def client(i: int) -> None:
        nonlocal requests
        connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=client_keepalive_s)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.sleep(random.uniform(0, gap_s[0]))
            for r in range(rounds):
                status, _, text, _ = await post(session, f"{url}/v2/models/fast/infer")
                requests += 1
                if status != 200:
                    errors[f"{status} {text[:60]}"] += 1
                if r < rounds - 1:
                    gap = random.uniform(*gap_s)
                    gaps.append(gap)
                    await asyncio.sleep(gap)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return KeepAliveResult(clients, requests, sum(errors.values()), errors, max(gaps, default=0.0),
                           await closed_connections(url, "idle") - idle_closes)


@dataclass
class FloodResult:
    clients: int
    duration_s: float
    statuses: Counter[int]
    accepted_p50_s: float  # as the gateway's access log timed them
    accepted_p99_s: float
    accepted_client_p99_s: float  # at the clients (same busy cores)
    uncontended_p99_s: float
    shed_client_p50_s: float
    shed_client_p99_s: float
    shed_gateway_p50_s: float  # refused at once (the queue was full), as the gateway's access log timed them
    shed_gateway_p99_s: float
    shed_at_once: int
    shed_after_wait: int  # refused after max_wait_s in the queue
    shed_own: int  # 503s the gateway answered itself (Retry-After)
    backend_busy: int  # 503s that were TorchServe's own queue-full answer
    rss_before_mib: float
    rss_peak_mib: float
    client_errors: Counter[str]

    def lines(self) -> list[str]:
        total = sum(self.statuses.values())
        return [f"{self.clients} clients against TorchServe for {self.duration_s:.0f} s: {total} requests "
                f"{dict(self.statuses)} ({self.statuses[200] / self.duration_s:.0f} answered/s); {self.shed_own} "
                f"shed by the gateway itself, {self.backend_busy} by "
                f"TorchServe's queue" + (f"; without an answer: {dict(self.client_errors)}" if self.client_errors
                                         else ""),
                f"  accepted: in the gateway p50 {ms(self.accepted_p50_s)}, p99 {ms(self.accepted_p99_s)} (uncontended "
                f"p99 {ms(self.uncontended_p99_s)}); at the clients p99 {ms(self.accepted_client_p99_s)}",
                f"  shed: {self.shed_at_once} at once (queue full), in the gateway p50 {ms(self.shed_gateway_p50_s)} "
                f"p99 {ms(self.shed_gateway_p99_s)}; {self.shed_after_wait} after max_wait_s in the queue; at the "
                f"clients (same busy cores) p50 {ms(self.shed_client_p50_s)}, p99 {ms(self.shed_client_p99_s)}",
                f"  gateway RSS {self.rss_before_mib:.0f} MiB before, {self.rss_peak_mib:.0f} MiB at most"]


async def flood(stack: AbuseStack, clients: int, duration_s: float, model: str = "shed") -> FloodResult:
    """``clients`` closed-loop clients POST /predictions/{model} (TorchServe pass-through) for ``duration_s``; a
    client that is refused waits what Retry-After says, give or take half of it (so they do not come back in
    step)."""
    url = f"{stack.gateway_url}/predictions/{model}"
    async with aiohttp.ClientSession() as session:
        uncontended = [(await post(session, url))[1] for _ in range(100)]
    log = AccessLog(gateway_log(stack))
    rss_before = rss_mib(stack.gateway_pid)
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    accepted: list[float] = []
    shed: list[float] = []
    own = busy = 0
    peak = rss_before
    stop = time.monotonic() + duration_s

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal own, busy
        while time.monotonic() < stop:
            status, seconds, text, headers = await post(session, url, timeout_s=30)
            statuses[status] += 1
            if status == 0:
                errors[text.split(":")[0]] += 1
            if status == 200:
                accepted.append(seconds)
            elif status == 503:
                shed.append(seconds)
                own += "Retry-After" in headers
                busy += "has no worker" in text
                retry_after = float(headers.get("Retry-After", "1"))
                await asyncio.sleep(random.uniform(0.5, 1.5) * retry_after)

    async def watch() -> None:
        nonlocal peak
        while time.monotonic() < stop:
            peak = max(peak, rss_mib(stack.gateway_pid))
            await asyncio.sleep(0.25)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(watch(), *(client(session) for _ in range(clients)))
    logged = [line for line in log.lines() if line.get("model") == model]
    lines = [line for line in logged if line.get("status") == "503"]
    shed_in_gateway = [line["duration_s"] for line in lines if line.get("error") == "Overloaded:queue_full"]
    waited = sum(1 for line in lines if line.get("error") == "Overloaded:wait_timeout")
    served = [line["duration_s"] for line in logged if line.get("status") == "200"]
    return FloodResult(clients, duration_s, statuses, pct(served, 0.5), pct(served, 0.99), pct(accepted, 0.99),
                       pct(uncontended, 0.99), pct(shed, 0.5), pct(shed, 0.99), pct(shed_in_gateway, 0.5),
                       pct(shed_in_gateway, 0.99), len(shed_in_gateway), waited, own, busy, rss_before, peak, errors)


@dataclass
class HangResult:
    hang_s: float
    rate: float
    outcomes: Counter[str]
    slowest_during_s: float
    ts_pending_after: int
    recovered_after_s: float
    max_queue_seen: int

    def lines(self) -> list[str]:
        return [f"TorchServe stopped (SIGSTOP) for {self.hang_s:g} s under {self.rate:g} req/s: "
                f"{dict(sorted(self.outcomes.items()))}; "
                f"slowest answer while it hung {ms(self.slowest_during_s)}, longest admission queue "
                f"{self.max_queue_seen}; after SIGCONT TorchServe had {self.ts_pending_after} jobs queued (its "
                f"queue: {TS_QUEUE}) and requests succeeded again {self.recovered_after_s:.2f} s later"]


async def backend_hang(stack: AbuseStack, hang_s: float, rate: float, model: str = "hang",
                       backend: str = "ts_hang") -> HangResult:
    """Requests at a steady ``rate`` (open loop: one every 1/rate s whatever the answers) for 2 s, then TorchServe
    (its whole process group) stopped for ``hang_s``, then 4 s more."""
    url = f"{stack.gateway_url}/predictions/{model}"
    ts = stack.processes["torchserve"]
    records: list[tuple[float, int, float, str]] = []  # started (since the hang began), status, seconds, text
    hang_start = time.monotonic() + 2
    stop = hang_start + hang_s + 4
    max_queue = 0

    async def one(session: aiohttp.ClientSession) -> None:
        started = time.monotonic()
        status, seconds, text, _ = await post(session, url, timeout_s=30)
        records.append((started - hang_start, status, seconds, text))

    async def queue_watch() -> None:
        nonlocal max_queue
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < stop:
                text = (await client.get(f"{stack.gateway_url}/metrics")).text
                for m in re.finditer(r'gateway_admission_queue_length\{name="' + backend + r'",scope="backend"\} (\S+)',
                                     text):
                    max_queue = max(max_queue, int(float(m.group(1))))
                await asyncio.sleep(0.1)

    pending_after = -1

    async def stopper() -> None:
        nonlocal pending_after
        await asyncio.sleep(max(0.0, hang_start - time.monotonic()))
        os.killpg(ts.pgid, signal.SIGSTOP)
        try:
            await asyncio.sleep(hang_s)
        finally:
            os.killpg(ts.pgid, signal.SIGCONT)
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"{stack.torchserve.management_url}/models/scale/1")
            pending_after = int(r.json()[0]["jobQueueStatus"]["pendingRequests"])

    tasks: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        helpers = [asyncio.create_task(stopper()), asyncio.create_task(queue_watch())]
        next_at = time.monotonic()
        while next_at < stop:
            tasks.append(asyncio.create_task(one(session)))
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks, *helpers)
    outcomes: Counter[str] = Counter()
    for started, status, _, text in records:
        phase = "before" if started < 0 else "hang" if started < hang_s else "after"
        kind = ("ok" if status == 200 else "503 TorchServe's queue full" if "has no worker" in text
                else "503 shed" if "at its limit" in text or "is busy" in text
                else "503 no endpoint" if "no endpoint" in text else "504" if status == 504 else f"{status} other")
        outcomes[f"{phase}: {kind}"] += 1
    during = [seconds for started, _, seconds, _ in records if 0 <= started < hang_s]
    recovered = min((started - hang_s for started, status, _, _ in records if started >= hang_s and status == 200),
                    default=float("nan"))
    return HangResult(hang_s, rate, outcomes, max(during, default=0.0), pending_after, recovered, max_queue)


@dataclass
class KillResult:
    model: str
    requests: int
    failed: int
    last_failure_after_s: float
    failure_p50_gateway_s: float
    failure_p99_gateway_s: float
    served_by: Counter[str]

    def lines(self) -> list[str]:
        return [f"{self.model}: one variant's backend killed (-9): {self.failed} of {self.requests} requests failed, "
                f"the last {self.last_failure_after_s:.2f} s after the kill; failures took p50 "
                f"{ms(self.failure_p50_gateway_s)}, p99 {ms(self.failure_p99_gateway_s)} in the gateway; answers "
                "after the kill by variant "
                f"{dict(self.served_by)}"]


async def kill_variant_backend(stack: AbuseStack, duration_s: float, clients: int = 8) -> list[KillResult]:
    """A/B models whose variant "tf" is on a TF Serving that is killed (-9) a second in: ``ab_failover`` names the
    other variant as its failover, ``ab_plain`` does not."""
    log = AccessLog(gateway_log(stack))
    killed_at = time.monotonic() + 1
    stop = killed_at + duration_s
    records: dict[str, list[tuple[float, int, str]]] = {"ab_failover": [], "ab_plain": []}

    async def client(session: aiohttp.ClientSession, model: str, i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            started = time.monotonic() - killed_at
            status, _, _, headers = await post(session, f"{stack.gateway_url}/v2/models/{model}/infer",
                                               headers={"x-user-id": f"user-{i}-{n}"})
            records[model].append((started, status, headers.get("x-model-variant", "")))
            await asyncio.sleep(0.01)

    async def killer() -> None:
        await asyncio.sleep(max(0.0, killed_at - time.monotonic()))
        os.killpg(stack.processes["tf_b"].pgid, signal.SIGKILL)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(killer(), *(client(session, model, i) for model in records for i in range(clients)))
    lines = log.lines()
    out = []
    for model, recs in records.items():
        after = [r for r in recs if r[0] >= 0]
        failures = [r for r in after if r[1] != 200]
        in_gateway = [line["duration_s"] for line in lines
                      if line.get("model") == model and line.get("status", "200") != "200"]
        out.append(KillResult(model, len(after), len(failures), max((r[0] for r in failures), default=0.0),
                              pct(in_gateway, 0.5), pct(in_gateway, 0.99), Counter(r[2] for r in after if r[1] == 200)))
    return out


@dataclass
class BalanceResult:
    model: str
    requests: int
    failed: int
    slow: int  # requests that took the connect timeout or more
    last_slow_at_s: float  # when the last of them started, from the first request
    after_last_slow: int  # requests started after it
    after_last_slow_max_s: float  # and the longest of them
    per_server: dict[str, int]
    p99_s: float
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def worst_share_off(self) -> float:
        """How far the busiest or idlest server is from an even share, relative to it (0.1: 10 % off)."""
        total, even = sum(self.per_server.values()), 1 / max(1, len(self.per_server))
        return max(abs(n / max(1, total) - even) / even for n in self.per_server.values())

    def lines(self) -> list[str]:
        total = sum(self.per_server.values())
        shares = ", ".join(f"{name} {n} ({n / max(1, total):.1%})" for name, n in self.per_server.items())
        slow = (f"{self.slow} took the connect timeout, the last started {self.last_slow_at_s:.2f} s in; the "
                f"{self.after_last_slow} after it took at most {ms(self.after_last_slow_max_s)}" if self.slow
                else "none took the connect timeout")
        failed = f"{self.failed} failed {dict(self.failures)}" if self.failed else "0 failed"
        return [f"{self.model}: {self.requests} requests, {failed}, {slow}; p99 {ms(self.p99_s)}; "
                f"served by {shares}: {self.worst_share_off:.1%} off an even share at most"]


async def tf_counts(stack: AbuseStack) -> dict[str, int]:
    """Predict calls each TF Serving answered OK for ``affine`` (its own metrics)."""
    out = {}
    async with httpx.AsyncClient(timeout=5) as client:
        for name, tf in (("tf_a", stack.tf_a), ("tf_b", stack.tf_b)):
            text = (await client.get(tf.metrics_url)).text
            found = re.search(r':tensorflow:serving:request_count\{model_name="affine",status="OK"\} (\S+)', text)
            out[name] = int(float(found.group(1))) if found else 0
    return out


async def balanced(stack: AbuseStack, model: str, requests: int, clients: int = 8, slow_s: float = 0.9,
                   min_s: float = 0.0) -> BalanceResult:
    """``requests`` over ``clients`` keep-alive clients to ``model`` (more, up to ten times as many, until ``min_s``
    have passed); how each TF Serving's count moved."""
    before = await tf_counts(stack)
    done: list[tuple[float, int, float]] = []  # started, status, seconds
    failures: Counter[str] = Counter()
    counter = iter(range(requests * 10))
    first = time.monotonic()

    async def client(session: aiohttp.ClientSession) -> None:
        for taken in counter:
            if taken >= requests and time.monotonic() - first >= min_s:
                return
            started = time.monotonic() - first
            status, seconds, text, _ = await post(session, f"{stack.gateway_url}/v2/models/{model}/infer")
            done.append((started, status, seconds))
            if status != 200:
                failures[f"{status} {text[:80]}"] += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    after = await tf_counts(stack)
    last_slow = max((t for t, _, s in done if s >= slow_s), default=-1.0)
    later = [s for t, _, s in done if t > last_slow]
    return BalanceResult(model, len(done), sum(1 for _, st, _ in done if st != 200),
                         sum(1 for _, _, s in done if s >= slow_s), last_slow, len(later), max(later, default=0.0),
                         {k: after[k] - before[k] for k in after}, pct([s for _, _, s in done], 0.99), failures)


@dataclass
class SlowCallResult:
    calls: int
    ok: int
    cut: Counter[str]
    max_age_s: float
    longest_s: float

    def lines(self) -> list[str]:
        return [f"v2 gRPC calls of {SLOW_CALL_S:g} s through connections aged every {self.max_age_s:.2f} s: "
                f"{self.calls} calls, {self.ok} answered, {sum(self.cut.values())} cut {dict(self.cut) or ''}"
                .rstrip() + f" (longest {self.longest_s:.2f} s)"]


async def slow_grpc_calls(target: str, clients: int, duration_s: float, max_age_s: float) -> SlowCallResult:
    """``clients`` each making v2 gRPC ModelInfer calls on ``slow`` (its backend answers 5 s later) for
    ``duration_s``, each client on its own channel (so every connection is aged while calls run on it)."""
    request = v2.ModelInferRequest(model_name="slow")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    cut: Counter[str] = Counter()
    ok = calls = 0
    longest = 0.0
    stop = time.monotonic() + duration_s

    async def client(i: int) -> None:
        nonlocal ok, calls, longest
        async with grpc.aio.insecure_channel(target) as channel:
            infer = channel.unary_unary(services.V2_MODEL_INFER.path,
                                        request_serializer=v2.ModelInferRequest.SerializeToString,
                                        response_deserializer=v2.ModelInferResponse.FromString)
            await asyncio.sleep(i * SLOW_CALL_S / max(1, clients))
            while time.monotonic() < stop:
                started = time.monotonic()
                calls += 1
                try:
                    await infer(request, timeout=SLOW_CALL_S * 4)
                    ok += 1
                except grpc.aio.AioRpcError as exc:
                    cut[f"{exc.code().name}: {(exc.details() or '')[:80]}"] += 1
                longest = max(longest, time.monotonic() - started)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return SlowCallResult(calls, ok, cut, max_age_s, longest)


def printed(title: str, lines: Sequence[str]) -> None:
    print(f"\n[{title}]")
    for line in lines:
        print(f"  {line}")
