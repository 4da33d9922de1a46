"""The gateway's overhead, measured side by side with a direct-to-backend baseline in one run.

Starts, on free 127.0.0.1 ports:

* a FAST test backend (``load_tests/fast_backend.py``: raw ASGI on uvicorn + httptools + uvloop, fixed
  TF Serving-shaped answers), which isolates the gateway's own cost;
* the real backends through :mod:`gateway.dev.localstack`: TorchServe with the model_repo archives (token
  auth on) and TF Serving (the real binary when on PATH, else the stand-in) with model_repo/tfserving;
* a FAST test gRPC backend (``load_tests/fast_grpc_backend.py``: grpc.aio, TF Serving's PredictionService
  and ModelService with fixed answers), which isolates the cost of the gateway's gRPC fronts;
* with ``--auth``, a second gateway, the same in every way but client authentication (an API key, and a JWT
  verified against a JWKS file; gateway/auth/): the fast scenarios get its rows beside the first gateway's, so
  the cost of authentication per request is read side by side in one run;
* with ``--pyreqwest``, a gateway twin with the other HTTP client for its REST backends
  (``GATEWAY_HTTP_CLIENT=pyreqwest``; gateway/backends/http.py): the REST scenarios get its rows
  ``[pyreqwest]`` beside the first gateway's (aiohttp), so the two clients are compared in one run;
* the gateway itself (``localstack.start_gateway``, 1 worker, its gRPC front on a free port) with a routes
  file made from examples/routes.local.yaml plus a model ``fast`` served by the fast backend, ``fast_grpc``
  served by the fast gRPC backend, and ``affine_grpc`` / ``scale_grpc``: the real backends over their gRPC
  APIs (``transport: grpc``);
* the references in front of the fast backend, for the ``fastapi_vs_raw`` scenario: nginx (one worker, a
  keep-alive upstream pool, no access log; its row is left out, with the reason, where nginx is not installed) and
  ``load_tests/reference_proxy.py``: the bare Python stack (a raw ASGI app on uvicorn forwarding with pyreqwest,
  and with aiohttp) and the same aiohttp forwarding as a FastAPI route;
* with ``--baseline-repo DIR``, a second gateway from another checkout (e.g. ``main``: ``git worktree add`` or
  ``git archive main | tar -x -C DIR``), same interpreter and routes: every REST gateway row gets a twin row
  ``[baseline]`` measured in the same run, interleaved, to show a change did not slow the hot path.

Then, per scenario, the SAME request is sent direct to the backend and through the gateway, one after the
other, at concurrency C and at concurrency 1: req/s, p50/p99 latency, the ratio gateway/direct and the
added p50.  The gateway's RSS and its CPU time per request (from /proc) are reported as well.  REST and gRPC
scenarios are measured with different load generators and printed in separate tables: compare a gateway
row with the direct row above it, not REST figures with gRPC figures.

Load comes from ``wrk`` (Lua script: POST body, headers, p50/p99 as JSON from the ``done`` hook); when
wrk is not installed, a Python closed-loop generator (aiohttp) is used instead, which is much slower
itself.  Either way the load generator runs on the same cores as the gateway and the backends and competes
with them for CPU: on a small machine every req/s is below what the servers could do alone.  Processes this
benchmark did not start show up in the "other CPU %" column (noise).

gRPC load comes from ``load_tests/grpc_load.py``: a closed-loop grpc.aio client in its own process (one for
the whole run, driven over a pipe), C calls in flight over a few channels (one HTTP/2 connection each),
pre-serialized request bytes and no response parsing.  It is Python too, on the same cores: its own CPU per
call is of the same order as a grpc.aio server's, so gRPC req/s are far below the REST ones (wrk is C).

    python load_tests/bench_overhead.py [--duration S] [--connections C] [--quick] [--json FILE]
                                        [--repeat N] [--scenarios a,b] [--loadgen auto|wrk|python]
                                        [--grpc-channels N] [--grpc-warmup S] [--baseline-repo DIR]
                                        [--auth] [--pyreqwest]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from google.protobuf.message import Message

from gateway.codecs import tf_proto, v2_grpc, v2_json
from gateway.dev import localstack
from gateway.dev.devstack import EXAMPLE_ROUTES, MODEL_REPO, TF_MODELS, TOY_TORCHSERVE_MODELS
from gateway.protos import services as svc
from gateway.protos import tf_serving_pb2 as tfs
from gateway.protos import torchserve_inference_pb2 as tsi
from gateway.protos import v2_pb2 as v2
from gateway.types import ModelRef, Tensor
from gateway.types import Target as RouteTarget

HERE = Path(__file__).resolve().parent
FAST_BACKEND = HERE / "fast_backend.py"
FAST_GRPC_BACKEND = HERE / "fast_grpc_backend.py"
REFERENCE_PROXY = HERE / "reference_proxy.py"
GRPC_LOAD = HERE / "grpc_load.py"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
JSON_MARK = "BENCH_JSON "

# ~1 KB request: 64 rows of 3 floats, all exactly representable in float32 so the body the gateway
# builds when it translates (columnar TF JSON, v2 JSON) is byte-for-byte the body sent direct.
ROWS = [[i * 0.5, i * 0.5 + 0.25, i * 0.5 + 0.5] for i in range(64)]
FLAT = [v for row in ROWS for v in row]


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


TF_ROW_BODY = _dumps({"instances": ROWS})
TF_COLUMNAR_BODY = _dumps({"inputs": {"x": ROWS}})
V2_BODY = _dumps({"inputs": [{"name": "x", "shape": [len(ROWS), 3], "datatype": "FP32", "data": FLAT}]})
JSON_HEADERS = {"Content-Type": "application/json"}

# The same 64 x 3 floats for gRPC: a TensorProto (tensor_content, what TF clients send) and a v2
# ModelInferRequest with raw_input_contents (what tritonclient sends).
X = np.array(ROWS, dtype=np.float32)


def wire(message: Message) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def tf_predict_request(model: str, version: int) -> bytes:
    request = tfs.PredictRequest()
    request.model_spec.name = model
    request.model_spec.version.value = version
    request.inputs["x"].CopyFrom(tf_proto.tensor_to_proto(Tensor("x", "FP32", X)))
    return wire(request)


def v2_infer_request(model: str, version: str) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="x", datatype="FP32", shape=list(X.shape))
    request.raw_input_contents.append(X.tobytes())
    return request


def gateway_sends_tf(request: v2.ModelInferRequest, model: str, version: str) -> bytes:
    """The PredictRequest the gateway sends a TF Serving gRPC backend for this v2 request (its own codecs)."""
    decoded = v2_grpc.decode_infer_request(request, ModelRef(request.model_name, request.model_version))
    target = RouteTarget(backend="-", model=model, version=version, logical_model=request.model_name,
                         logical_version=request.model_version)
    return wire(tf_proto.encode_predict_request(decoded, target))


def gateway_sends_ts(request: v2.ModelInferRequest, model: str, version: str) -> bytes:
    """The Predictions request the gateway sends a TorchServe gRPC backend for this v2 request: the v2 JSON
    body the handler reads as data[0]["body"]."""
    decoded = v2_grpc.decode_infer_request(request, ModelRef(request.model_name, request.model_version))
    return wire(tsi.PredictionsRequest(model_name=model, model_version=version,
                                       input={"body": v2_json.encode_request(decoded)}))


# --------------------------------------------------------------------------------------------
# What is measured
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    label: str  # short name in the table
    role: str  # "direct" or "gateway"
    url: str  # REST: the URL; gRPC: host:port
    body: bytes  # REST: the POST body; gRPC: the serialized request message
    headers: dict[str, str]  # REST: headers; gRPC: metadata
    grpc_method: str = ""  # gRPC: the method path (/package.Service/Method); empty for REST
    process: str = "gateway"  # whose CPU per request the row reports: the gateway, a reference proxy, the
    # baseline, or the gateway with authentication on (--auth)

    @property
    def protocol(self) -> str:
        return "grpc" if self.grpc_method else "rest"

    @property
    def where(self) -> str:
        return f"grpc://{self.url}{self.grpc_method}" if self.grpc_method else self.url


@dataclass
class Scenario:
    key: str
    title: str
    backend: str  # which process group serves it: "fast", "tfserving", "torchserve"
    direct: Target
    gateways: list[Target]
    note: str = ""
    skipped: str = ""  # why it was not measured

    @property
    def protocol(self) -> str:
        return self.direct.protocol


@dataclass
class Measurement:
    scenario: str
    target: str
    role: str
    url: str
    concurrency: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]
    non_2xx: int
    gateway_cpu_us_per_req: float | None = None
    backend_cpu_us_per_req: float | None = None
    loadgen_cpu_us_per_req: float | None = None
    machine_busy_pct: float | None = None  # all cores, everything running
    other_cpu_pct: float | None = None  # of all cores, used by processes this benchmark did not start
    ratio_rps: float | None = None  # gateway / direct
    added_p50_ms: float | None = None  # gateway p50 - direct p50
    runs: list[dict[str, Any]] | None = None  # the single runs behind the medians (with --repeat)

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    max_us: float
    errors: dict[str, int] = field(default_factory=dict)  # connect/read/write/timeout/status(non-2xx)


# --------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------


def _lua_long_string(data: str) -> str:
    level = 1
    while f"]{'=' * level}]" in data:
        level += 1
    eq = "=" * level
    return f"[{eq}[{data}]{eq}]"


_WRK_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,' ..
    '"mean_us":%.1f,"max_us":%.1f,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class WrkLoad:
    """wrk with a Lua script: POST body + headers; the ``done`` hook prints the figures as one JSON line."""

    name = "wrk"

    def __init__(self, binary: str, threads: int, workdir: Path) -> None:
        self.binary = binary
        self.threads = threads
        self.workdir = workdir
        self._scripts: dict[tuple[bytes, tuple[tuple[str, str], ...]], Path] = {}
        self._running: subprocess.Popen[str] | None = None
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
            self.version = (out.stdout or out.stderr).splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError, IndexError):
            self.version = "wrk (version unknown)"

    def describe(self, connections: int) -> str:
        return f"{self.version}; {min(self.threads, connections)} thread(s)"

    def _script(self, target: Target) -> Path:
        key = (target.body, tuple(sorted(target.headers.items())))
        path = self._scripts.get(key)
        if path is None:
            lines = ['wrk.method = "POST"', f"wrk.body = {_lua_long_string(target.body.decode())}"]
            lines += [f"wrk.headers[ {_lua_long_string(k)} ] = {_lua_long_string(v)}"
                      for k, v in target.headers.items()]
            path = self.workdir / f"wrk-{len(self._scripts)}.lua"
            path.write_text("\n".join(lines) + "\n" + _WRK_DONE, encoding="utf-8")
            self._scripts[key] = path
        return path

    def run(self, target: Target, connections: int, seconds: int) -> LoadResult:
        threads = max(1, min(self.threads, connections))
        argv = [self.binary, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, seconds)}s",
                "--timeout", "10s", "-s", str(self._script(target)), target.url]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._running = proc
        try:
            out, _ = proc.communicate(timeout=seconds + 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self._running = None
        line = next((ln for ln in out.splitlines() if ln.startswith(JSON_MARK)), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed (exit {proc.returncode}): {' '.join(argv)}\n{out}")
        d = json.loads(line[len(JSON_MARK):])
        return LoadResult(
            requests=int(d["requests"]), duration_s=d["duration_us"] / 1e6, p50_us=d["p50_us"], p90_us=d["p90_us"],
            p99_us=d["p99_us"], mean_us=d["mean_us"], max_us=d["max_us"],
            errors={k: int(d[k]) for k in ("connect", "read", "write", "timeout", "status")},
        )


class PythonLoad:
    """Closed-loop fallback: C aiohttp workers, each sending the next request when the last one answered.

    Far slower than wrk (it is Python on the same cores): it caps the measurable req/s well below what
    the direct backend can do, so ratios against the direct baseline understate the gateway's cost.
    """

    name = "python-aiohttp"

    def __init__(self) -> None:
        import aiohttp

        self.version = f"Python closed-loop generator (aiohttp {aiohttp.__version__})"

    def describe(self, connections: int) -> str:
        return f"{self.version}; 1 process"

    def run(self, target: Target, connections: int, seconds: int) -> LoadResult:
        factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        with contextlib.suppress(ImportError):
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(self._run(target, connections, float(max(1, seconds))))

    @staticmethod
    async def _run(target: Target, connections: int, seconds: float) -> LoadResult:
        import aiohttp

        latencies: list[float] = []
        errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
        connector = aiohttp.TCPConnector(limit=connections)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",),
                                         timeout=timeout) as session:
            start = time.perf_counter()
            end = start + seconds

            async def worker() -> None:
                clock = time.perf_counter
                while clock() < end:
                    t0 = clock()
                    try:
                        async with session.post(target.url, data=target.body, headers=target.headers) as resp:
                            await resp.read()
                            status = resp.status
                    except aiohttp.ClientConnectorError:
                        errors["connect"] += 1
                        continue
                    except TimeoutError:
                        errors["timeout"] += 1
                        continue
                    except aiohttp.ClientError:
                        errors["read"] += 1
                        continue
                    latencies.append(clock() - t0)
                    if not 200 <= status < 300:
                        errors["status"] += 1

            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - start
        latencies.sort()

        def pct(p: float) -> float:
            if not latencies:
                return 0.0
            return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6

        return LoadResult(
            requests=len(latencies) + errors["connect"] + errors["read"] + errors["timeout"], duration_s=elapsed,
            p50_us=pct(50), p90_us=pct(90), p99_us=pct(99),
            mean_us=(sum(latencies) / len(latencies) * 1e6) if latencies else 0.0,
            max_us=latencies[-1] * 1e6 if latencies else 0.0, errors=errors,
        )


class GrpcLoad:
    """Closed-loop grpc.aio load (load_tests/grpc_load.py) in ONE separate process for the whole run, driven
    over its stdin/stdout: it never shares the benchmark's loop (nor, of course, the servers'), and no
    interpreter starts per measurement. Its CPU is read from /proc (it is not a reaped child until the end)."""

    name = "python-grpc-aio"

    def __init__(self, channels: int, workdir: Path) -> None:
        self.channels = channels
        grpcio = importlib.metadata.version("grpcio")  # grpc itself is never imported in this process
        self.version = f"grpc.aio closed-loop generator (grpcio {grpcio}), pre-serialized requests"
        self._log = open(workdir / "grpc_load.log", "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen([sys.executable, str(GRPC_LOAD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, cwd=workdir)

    def describe(self, connections: int) -> str:
        return f"{self.version}; 1 process, {max(1, min(self.channels, connections))} channel(s)"

    def _ask(self, cmd: dict[str, Any], wait_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the gRPC load generator exited ({self.proc.returncode}); see grpc_load.log")
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        # One command, one answer line: nothing can sit in the pipe's read buffer beyond it, so select() on the
        # descriptor tells whether the answer has started to come.
        ready, _, _ = select.select([self.proc.stdout], [], [], wait_s)
        if not ready:
            self.close()
            raise RuntimeError(f"the gRPC load generator did not answer within {wait_s:.0f} s")
        line = self.proc.stdout.readline()
        if not line.startswith(JSON_MARK):
            raise RuntimeError(f"the gRPC load generator answered {line!r}; see grpc_load.log")
        doc: dict[str, Any] = json.loads(line[len(JSON_MARK):])
        if "failure" in doc:
            raise RuntimeError(f"the gRPC load generator failed: {doc['failure']}")
        return doc

    def _cmd(self, target: Target, **extra: Any) -> dict[str, Any]:
        return {"target": target.url, "method": target.grpc_method, "metadata": list(target.headers.items()),
                "request_b64": base64.b64encode(target.body).decode(), **extra}

    def call(self, target: Target, timeout_s: float = 30) -> tuple[str, str, bytes]:
        """One call: (status code name, details, response bytes)."""
        doc = self._ask(self._cmd(target, op="call", timeout_s=timeout_s), timeout_s + 30)
        return doc["code"], doc["details"], base64.b64decode(doc["response_b64"])

    def run(self, target: Target, connections: int, seconds: float) -> LoadResult:
        doc = self._ask(self._cmd(target, op="run", concurrency=connections, seconds=seconds,
                                  channels=self.channels, timeout_s=10), seconds + 60)
        return LoadResult(requests=int(doc["requests"]), duration_s=doc["duration_s"], p50_us=doc["p50_us"],
                          p90_us=doc["p90_us"], p99_us=doc["p99_us"], mean_us=doc["mean_us"], max_us=doc["max_us"],
                          errors={k: int(v) for k, v in doc["errors"].items()})

    def cpu_seconds(self) -> float:
        return _proc_cpu_seconds(self.proc.pid) if self.proc.poll() is None else 0.0

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # end of input: it exits
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


def pick_load_generator(choice: str, threads: int, workdir: Path) -> WrkLoad | PythonLoad:
    binary = shutil.which("wrk")
    if choice == "python":
        return PythonLoad()
    if binary is None:
        if choice == "wrk":
            raise SystemExit("wrk is not installed (Debian: apt-get update && apt-get install -y wrk)")
        print("NOTE: wrk is not installed (Debian: `apt-get update && apt-get install -y wrk`); falling back to a\n"
              "      Python aiohttp closed-loop load generator, which is itself CPU-bound well below what the\n"
              "      backends and the gateway can do: absolute req/s and ratios are much less meaningful.\n",
              flush=True)
        return PythonLoad()
    return WrkLoad(binary, threads, workdir)


# --------------------------------------------------------------------------------------------
# /proc readings
# --------------------------------------------------------------------------------------------


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid):
            pids.append(int(entry.name))
    return pids


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in the process group (the gateway's group is just its process)."""
    return sum(_proc_cpu_seconds(pid) for pid in _group_pids(pgid))


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds summed over all cores since boot, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (total - idle) / CLK_TCK, total / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU of this process plus its reaped children (wrk), i.e. the load generator's CPU."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def other_load(seconds: float = 1.0) -> float:
    """Share (0..1) of all cores busy over ``seconds``, measured before this benchmark starts anything."""
    b0, t0 = machine_cpu()
    time.sleep(seconds)
    b1, t1 = machine_cpu()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of one process, in kB."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------------------------
# Stack
# --------------------------------------------------------------------------------------------


@dataclass
class Endpoints:
    fast_url: str
    fast_proc: localstack.ManagedProcess
    gateway_url: str
    gateway_proc: localstack.ManagedProcess
    ts: localstack.TorchServeEndpoints | None
    ts_proc: localstack.ManagedProcess | None
    tf: localstack.TFServingEndpoints | None
    tf_proc: localstack.ManagedProcess | None
    failures: dict[str, str]
    fast_grpc_target: str = ""  # host:port of the fast gRPC backend ("" when it did not start)
    fast_grpc_proc: localstack.ManagedProcess | None = None
    gateway_grpc_target: str = ""  # host:port of the gateway's gRPC front ("" when turned off)
    # Other processes a row measures, by Target.process: the reference proxies, the baseline gateway.
    others: dict[str, tuple[localstack.ManagedProcess, str]] = field(default_factory=dict)
    auth: AuthGateway | None = None  # --auth: the second gateway, with client authentication on (also in others)


def wait_ready(proc: localstack.ManagedProcess, what: str, ready: Callable[[], bool]) -> None:
    """Until ``ready()`` (errors count as not yet), at most 30 s; the process is stopped when it does not come up."""
    deadline = time.monotonic() + 30
    try:
        while True:
            if not proc.running():
                raise localstack.LocalStackError(f"{what} exited:\n{proc.log_tail()}")
            with contextlib.suppress(httpx.TransportError, OSError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise localstack.LocalStackError(f"{what} not ready in 30 s:\n{proc.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        proc.stop()
        raise


@dataclass
class AuthGateway:
    url: str
    proc: localstack.ManagedProcess
    grpc_target: str
    key_headers: dict[str, str]  # an API key
    jwt_headers: dict[str, str]  # a JWT (RS256, verified against a JWKS file)


def start_fast_backend(workdir: Path) -> tuple[localstack.ManagedProcess, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = localstack.free_port()
    proc = localstack.spawn_process("fast-backend", [sys.executable, str(FAST_BACKEND), "--port", str(port)],
                                    cwd=workdir, env=dict(os.environ), log_path=workdir / "fast_backend.log")
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=2.0) as client:
        wait_ready(proc, "fast backend", lambda: client.get(f"{url}/v1/models/fast/versions/1").status_code == 200)
    return proc, url


def start_fast_grpc_backend(workdir: Path) -> tuple[localstack.ManagedProcess, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = localstack.free_port()
    env = dict(os.environ)
    repo_root = str(HERE.parent)
    env["PYTHONPATH"] = repo_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = localstack.spawn_process("fast-grpc-backend",
                                    [sys.executable, str(FAST_GRPC_BACKEND), "--port", str(port)],
                                    cwd=workdir, env=env, log_path=workdir / "fast_grpc_backend.log")

    def listening() -> bool:
        # It prints "listening" once the server has started (the port is bound before that).
        if "listening" not in proc.log_tail():
            return False
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True

    wait_ready(proc, "fast gRPC backend", listening)
    return proc, f"127.0.0.1:{port}"


def start_reference_proxy(framework: str, backend_url: str, workdir: Path,
                          client: str = "aiohttp") -> tuple[localstack.ManagedProcess, str]:
    """load_tests/reference_proxy.py in front of the fast backend; ready when a forwarded request answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = localstack.free_port()
    proc = localstack.spawn_process(f"{framework}-{client}-proxy", [
        sys.executable, str(REFERENCE_PROXY), "--framework", framework, "--client", client, "--port", str(port),
        "--backend", backend_url], cwd=workdir, env=dict(os.environ), log_path=workdir / f"{framework}_proxy.log")
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=2.0) as client_:
        wait_ready(proc, f"{framework} proxy ({client})", lambda: client_.post(
            f"{url}/v1/models/fast/versions/1:predict", content=TF_ROW_BODY).status_code == 200)
    return proc, url


NGINX_CONF = """# nginx as a reverse proxy in front of the fast backend: the benchmark's reference proxy.
worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    client_max_body_size 64m;
    keepalive_requests 1000000;
    upstream backend {{ server {backend}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_nginx(backend_url: str, workdir: Path) -> tuple[localstack.ManagedProcess, str]:
    """nginx (one worker, keep-alive upstream pool, no access log) in front of the fast backend: the reference the
    issue measures the gateway against. Skipped with its reason where nginx is not installed."""
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if binary is None:
        raise localstack.LocalStackError("nginx is not installed (Debian: apt-get install -y nginx-light)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = localstack.free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workdir=workdir, port=port, backend=backend_url.removeprefix("http://")))
    for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / temp).mkdir(exist_ok=True)
        (workdir / temp).chmod(0o777)  # the worker may run as another user than the master (root: nobody)
    argv = [binary, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")]
    proc = localstack.spawn_process("nginx", argv, cwd=workdir, env=dict(os.environ), log_path=workdir / "nginx.log")
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=2.0) as client:
        wait_ready(proc, "nginx", lambda: client.post(
            f"{url}/v1/models/fast/versions/1:predict", content=TF_ROW_BODY).status_code == 200)
    return proc, url


def start_baseline_gateway(code_root: Path, routes: Path, workdir: Path,
                           env: dict[str, str]) -> tuple[localstack.ManagedProcess, str]:
    """The gateway of another checkout (its protos built first), with this interpreter and the same routes."""
    pythonpath = {**os.environ, "PYTHONPATH": str(code_root)}
    subprocess.run([sys.executable, "-m", "gateway.protos"], cwd=code_root, env=pythonpath, check=True,
                   capture_output=True, timeout=120)
    return localstack.start_gateway(workdir, routes, code_root=code_root,
                                    env={**env, "GATEWAY_GRPC_PORT": "0", "PYTHONDONTWRITEBYTECODE": "1"})


def write_routes(path: Path, fast_url: str, ts: localstack.TorchServeEndpoints | None,
                 tf: localstack.TFServingEndpoints | None, fast_grpc_target: str = "") -> None:
    routes = yaml.safe_load(EXAMPLE_ROUTES.read_text())
    backends = routes["backends"]
    # A backend that failed to start points at a closed port: its models answer 503, the rest still works.
    backends["tfserving"]["url"] = tf.rest_url if tf else f"http://127.0.0.1:{localstack.free_port()}"
    if ts is not None:
        backends["torchserve"].update(url=ts.inference_url, management_url=ts.management_url,
                                      token_file=str(ts.key_file) if ts.key_file else "")
    else:
        backends["torchserve"].update(url=f"http://127.0.0.1:{localstack.free_port()}",
                                      management_url=f"http://127.0.0.1:{localstack.free_port()}", token_file="")
    backends["fast"] = {"kind": "tfserving", "url": fast_url, "timeout_s": 10, "connect_timeout_s": 1}
    models = routes["models"]
    models["fast"] = {"versions": {1: {"backend": "fast", "model": "fast", "version": 1}}}
    # The same servers over gRPC (transport: grpc): a closed port when one did not start, as above.
    closed = f"127.0.0.1:{localstack.free_port()}"
    backends["fast_grpc"] = {"kind": "tfserving", "url": fast_url, "transport": "grpc",
                             "grpc_target": fast_grpc_target or closed, "timeout_s": 10, "connect_timeout_s": 1}
    models["fast_grpc"] = {"versions": {1: {"backend": "fast_grpc", "model": "fast", "version": 1}}}
    backends["tfserving_grpc"] = {**backends["tfserving"], "transport": "grpc",
                                  "grpc_target": tf.grpc_target if tf else closed}
    backends["torchserve_grpc"] = {**backends["torchserve"], "transport": "grpc",
                                   "grpc_target": ts.grpc_inference_target if ts else closed}
    if ts is not None:
        backends["torchserve_grpc"]["grpc_management_target"] = ts.grpc_management_target
    models["affine_grpc"] = {**models["affine"], "versions": {
        v: {**t, "backend": "tfserving_grpc"} for v, t in models["affine"]["versions"].items()}}
    models["scale_grpc"] = {**models["scale"], "versions": {
        v: {**t, "backend": "torchserve_grpc"} for v, t in models["scale"]["versions"].items()}}
    path.write_text(yaml.safe_dump(routes, sort_keys=False), encoding="utf-8")


def start_auth_gateway(stack: localstack.Stack, workdir: Path, routes: Path, env: dict[str, str]) -> AuthGateway:
    """The second gateway: the same routes and settings, plus client authentication (one tenant granted every
    model, no rate limit: what is measured is the check itself)."""
    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    from gateway.auth.keys import add_key

    auth_dir = workdir / "auth"
    auth_dir.mkdir(parents=True, exist_ok=True)
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(signing.public_key()))
    (auth_dir / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "bench", "alg": "RS256"}]}))
    (auth_dir / "auth.yaml").write_text(yaml.safe_dump({
        "jwt": {"jwks_file": str(auth_dir / "jwks.json"), "algorithms": ["RS256"], "audience": "bench"},
        "tenants": {"bench": {"models": "*"}}}))
    key = add_key(auth_dir / "keys.yaml", "bench")
    token = pyjwt.encode({"tenant": "bench", "aud": "bench", "exp": int(time.time()) + 24 * 3600}, signing,
                         algorithm="RS256", headers={"kid": "bench"})
    grpc_port = localstack.free_port()
    auth_env = {**env, "GATEWAY_GRPC_PORT": str(grpc_port), "GATEWAY_AUTH_FILE": str(auth_dir / "auth.yaml"),
                "GATEWAY_AUTH_KEYS_FILE": str(auth_dir / "keys.yaml")}
    proc, url = stack.add_started(localstack.start_gateway(workdir / "gateway_auth", routes, env=auth_env))
    return AuthGateway(url, proc, f"127.0.0.1:{grpc_port}", {"authorization": f"Bearer {key}"},
                       {"authorization": f"Bearer {token}"})


def start_everything(stack: localstack.Stack, workdir: Path, gateway_env: dict[str, str] | None = None,
                     baseline_repo: Path | None = None, auth: bool = False, pyreqwest: bool = False) -> Endpoints:
    """Fast backend, TorchServe and TF Serving in parallel, then the gateway. A real backend that fails to
    start is reported and its scenarios skipped; the fast backend or the gateway failing is fatal."""
    failures: dict[str, str] = {}
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="start")
    futures: dict[str, Future[tuple[localstack.ManagedProcess, Any]]] = {
        "fast": pool.submit(start_fast_backend, workdir / "fast"),
        "fast_grpc": pool.submit(start_fast_grpc_backend, workdir / "fast_grpc"),
        "torchserve": pool.submit(
            # the toy models only: the scenarios use scale (the digits models would add ~7 s of registration)
            localstack.start_torchserve, workdir / "torchserve", MODEL_REPO / "torchserve", TOY_TORCHSERVE_MODELS,
            token_auth=True, defaults={"mlp": "1", "scale": "2"}),
        "tfserving": pool.submit(
            localstack.start_tfserving, workdir / "tfserving", MODEL_REPO / "tfserving" / "models.config",
            MODEL_REPO / "tfserving", wait_models=TF_MODELS),
    }
    results: dict[str, tuple[localstack.ManagedProcess, Any]] = {}
    try:
        wait_futures(list(futures.values()))
    finally:
        pool.shutdown(wait=True)  # on Ctrl-C: let the starts finish (bounded), so their processes get stopped
        for name, fut in futures.items():
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is None:
                results[name] = fut.result()
                stack.add(results[name][0])
            else:
                failures[name] = f"{type(exc).__name__}: {exc}"
    if "fast" not in results:
        raise SystemExit(f"the fast backend did not start: {failures.get('fast')}")
    for name, why in failures.items():
        print(f"WARNING: {name} did not start; its scenarios are skipped.\n{why}\n", file=sys.stderr, flush=True)
    fast_proc, fast_url = results["fast"]
    fast_grpc_proc, fast_grpc_target = results.get("fast_grpc", (None, ""))
    ts_proc, ts = results.get("torchserve", (None, None))
    tf_proc, tf = results.get("tfserving", (None, None))
    routes = workdir / "routes.yaml"
    write_routes(routes, fast_url, ts, tf, fast_grpc_target)
    env = dict(gateway_env or {})
    env.setdefault("GATEWAY_GRPC_PORT", str(localstack.free_port()))  # known here, so it can be measured
    grpc_port = int(env["GATEWAY_GRPC_PORT"])
    gw_proc, gw_url = stack.add_started(localstack.start_gateway(workdir / "gateway", routes, env=env))
    others: dict[str, tuple[localstack.ManagedProcess, str]] = {}
    references: dict[str, Callable[[], tuple[localstack.ManagedProcess, str]]] = {
        "raw_proxy": lambda: start_reference_proxy("raw", fast_url, workdir / "raw_proxy"),
        "raw_pyreqwest_proxy": lambda: start_reference_proxy("raw", fast_url, workdir / "raw_pyreqwest_proxy",
                                                             client="pyreqwest"),
        "fastapi_proxy": lambda: start_reference_proxy("fastapi", fast_url, workdir / "fastapi_proxy"),
        "nginx": lambda: start_nginx(fast_url, workdir / "nginx"),
    }
    for key, start in references.items():
        try:
            others[key] = stack.add_started(start())
        except localstack.LocalStackError as exc:
            failures[key] = str(exc)
            print(f"WARNING: the reference {key} did not start: {exc}", file=sys.stderr, flush=True)
    if baseline_repo is not None:
        others["baseline"] = stack.add_started(start_baseline_gateway(baseline_repo, routes, workdir / "baseline", env))
    if pyreqwest:  # REST rows only: its gRPC front stays off
        others["gateway_pyreqwest"] = stack.add_started(localstack.start_gateway(
            workdir / "gateway_pyreqwest", routes, env={**env, "GATEWAY_GRPC_PORT": "0",
                                                        "GATEWAY_HTTP_CLIENT": "pyreqwest"}))
    auth_gateway = start_auth_gateway(stack, workdir, routes, env) if auth else None
    if auth_gateway is not None:
        others["gateway_auth"] = (auth_gateway.proc, auth_gateway.url)
    return Endpoints(fast_url, fast_proc, gw_url, gw_proc, ts, ts_proc, tf, tf_proc, failures,
                     fast_grpc_target=fast_grpc_target, fast_grpc_proc=fast_grpc_proc,
                     gateway_grpc_target=f"127.0.0.1:{grpc_port}" if grpc_port else "", others=others,
                     auth=auth_gateway)


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


def build_scenarios(ep: Endpoints) -> list[Scenario]:
    g = ep.gateway_url
    out = [
        Scenario(
            "fast_tf_predict", "fast backend, TF predict", "fast",
            Target("direct", "direct", f"{ep.fast_url}/v1/models/fast/versions/1:predict", TF_ROW_BODY, JSON_HEADERS),
            [Target("gateway /v1 (pass-through)", "gateway", f"{g}/v1/models/fast/versions/1:predict", TF_ROW_BODY,
                    JSON_HEADERS)],
            note="TF front -> TF backend: body forwarded unchanged"),
        Scenario(
            "fast_v2_translate", "fast backend, v2 infer", "fast",
            Target("direct (TF columnar)", "direct", f"{ep.fast_url}/v1/models/fast/versions/1:predict",
                   TF_COLUMNAR_BODY, JSON_HEADERS),
            [Target("gateway /v2 -> TF (translate)", "gateway", f"{g}/v2/models/fast/versions/1/infer", V2_BODY,
                    JSON_HEADERS)],
            note="v2 JSON -> TF columnar JSON -> v2 JSON; direct sends the columnar body the gateway sends"),
    ]
    tf_direct = f"{ep.tf.rest_url}/v1/models/affine/versions/2:predict" if ep.tf else ""
    tf_kind = ("real TF Serving" if ep.tf.real_binary else "TF Serving stand-in") if ep.tf else "TF Serving"
    out.append(Scenario(
        "tfserving_affine", f"{tf_kind}, affine predict", "tfserving",
        Target("direct", "direct", tf_direct, TF_ROW_BODY, JSON_HEADERS),
        [Target("gateway /v1 (pass-through)", "gateway", f"{g}/v1/models/affine/versions/2:predict", TF_ROW_BODY,
                JSON_HEADERS)],
        skipped="" if ep.tf else f"TF Serving did not start: {ep.failures.get('tfserving', '?')}"))
    ts_headers = dict(JSON_HEADERS)
    skipped = ""
    if ep.ts is not None and ep.ts.key_file is not None:
        ts_headers.update(ep.ts.auth_headers("inference"))
    elif ep.ts is None:
        skipped = f"TorchServe did not start: {ep.failures.get('torchserve', '?')}"
    out.append(Scenario(
        "torchserve_scale", "TorchServe, scale v2", "torchserve",
        Target("direct (bearer key)", "direct", f"{ep.ts.inference_url}/predictions/scale/2" if ep.ts else "",
               V2_BODY, ts_headers),
        [Target("gateway /predictions (pass-through)", "gateway", f"{g}/predictions/scale/2", V2_BODY, JSON_HEADERS),
         Target("gateway /v2 -> TS (translate)", "gateway", f"{g}/v2/models/scale/versions/2/infer", V2_BODY,
                JSON_HEADERS)],
        skipped=skipped))
    out.append(fastapi_vs_raw(ep))
    if "baseline" in ep.others:
        for scenario in out:
            scenario.gateways = [twin for t in scenario.gateways for twin in (t, *baseline_twin(t, ep))]
    if "gateway_pyreqwest" in ep.others:
        for scenario in out[:-1]:  # not fastapi_vs_raw: it compares frameworks over the same client
            scenario.gateways = [twin for t in scenario.gateways for twin in (t, *client_twin(t, ep))]
    if ep.gateway_grpc_target:
        out += build_grpc_scenarios(ep, tf_kind)
    if ep.auth is not None:
        add_auth_targets(out, ep.auth)
    return out


REFERENCES = (("nginx", "nginx (1 worker, keep-alive upstream)"), ("raw_pyreqwest_proxy", "raw ASGI + pyreqwest"),
              ("raw_proxy", "raw ASGI + aiohttp"), ("fastapi_proxy", "FastAPI route + aiohttp"))


def fastapi_vs_raw(ep: Endpoints) -> Scenario:
    """The references for the same request to the same backend: nginx, the bare Python stacks (a raw ASGI app on
    uvicorn forwarding with pyreqwest or aiohttp) and a FastAPI route doing the same, beside the gateway's own path.
    nginx missing (not installed) leaves its row out, said in the output; a missing proxy skips the scenario."""
    path = "/v1/models/fast/versions/1:predict"
    proxies = [Target(label, "gateway", f"{ep.others[key][1]}{path}", TF_ROW_BODY, JSON_HEADERS, process=key)
               for key, label in REFERENCES if key in ep.others]
    missing = [key for key, _ in REFERENCES if key not in ep.others and key != "nginx"]
    return Scenario(
        "fastapi_vs_raw", "fast backend, TF predict: FastAPI vs raw ASGI", "fast",
        Target("direct", "direct", f"{ep.fast_url}{path}", TF_ROW_BODY, JSON_HEADERS),
        [*proxies, Target("gateway /v1 (pass-through)", "gateway", f"{ep.gateway_url}{path}", TF_ROW_BODY,
                          JSON_HEADERS)],
        note="nginx, then the same forwarding (body read, one pooled client) as a raw ASGI app over pyreqwest and "
             "aiohttp and as a FastAPI route (load_tests/reference_proxy.py), beside the gateway's route"
             + ("" if "nginx" in ep.others else f"; nginx: {ep.failures.get('nginx', '?')}"),
        skipped="; ".join(f"{key}: {ep.failures.get(key, '?')}" for key in missing))


def baseline_twin(target: Target, ep: Endpoints) -> list[Target]:
    """The same request to the baseline gateway (--baseline-repo), for a gateway target."""
    if target.process != "gateway" or target.protocol != "rest":
        return []
    url = ep.others["baseline"][1] + target.url.removeprefix(ep.gateway_url)
    return [Target(f"{target.label} [baseline]", "gateway", url, target.body, target.headers, process="baseline")]


def client_twin(target: Target, ep: Endpoints) -> list[Target]:
    """The same request to the gateway twin calling its REST backends with pyreqwest (--pyreqwest)."""
    if target.process != "gateway" or target.protocol != "rest":
        return []
    url = ep.others["gateway_pyreqwest"][1] + target.url.removeprefix(ep.gateway_url)
    return [Target(f"{target.label} [pyreqwest]", "gateway", url, target.body, target.headers,
                   process="gateway_pyreqwest")]


def add_auth_targets(scenarios: list[Scenario], auth: AuthGateway) -> None:
    """The fast scenarios' gateway rows once more, through the gateway with authentication on: an API key, a JWT."""
    for scenario in scenarios:
        if scenario.key not in ("fast_tf_predict", "fast_v2_translate", "grpc_fast_tf_predict"):
            continue
        plain = scenario.gateways[0]
        grpc_front = bool(plain.grpc_method)
        base = auth.grpc_target if grpc_front else auth.url
        url = base if grpc_front else plain.url.replace(plain.url.split("/v", 1)[0], auth.url, 1)
        for what, headers in (("API key", auth.key_headers), ("JWT", auth.jwt_headers)):
            scenario.gateways.append(Target(f"{plain.label} + {what}", "gateway", url, plain.body,
                                            {**plain.headers, **headers}, plain.grpc_method, process="gateway_auth"))


GRPC_SCENARIOS = ("grpc_fast_tf_predict", "grpc_fast_v2_translate", "grpc_tfserving_affine", "grpc_torchserve_scale")


def build_grpc_scenarios(ep: Endpoints, tf_kind: str) -> list[Scenario]:
    """The gRPC counterparts: the gateway's TF Serving gRPC front (Predict) and its v2 gRPC front (ModelInfer)
    in front of `transport: grpc` backends; direct sends the backend the message the gateway sends it."""
    g = ep.gateway_grpc_target
    predict, infer, predictions = svc.TF_PREDICT.path, svc.V2_MODEL_INFER.path, svc.TS_PREDICTIONS.path
    fast_skip = "" if ep.fast_grpc_target else f"fast gRPC backend did not start: {ep.failures.get('fast_grpc', '?')}"
    fast_v2 = v2_infer_request("fast_grpc", "1")
    out = [
        Scenario(
            "grpc_fast_tf_predict", "gRPC: fast backend, TF Predict", "fast_grpc",
            Target("direct (Predict)", "direct", ep.fast_grpc_target, tf_predict_request("fast", 1), {}, predict),
            [Target("gateway TF gRPC (pass-through)", "gateway", g, tf_predict_request("fast_grpc", 1), {}, predict)],
            note="TF gRPC front -> TF gRPC backend: only model_spec rewritten, TensorProtos untouched",
            skipped=fast_skip),
        Scenario(
            "grpc_fast_v2_translate", "gRPC: fast backend, v2 ModelInfer", "fast_grpc",
            Target("direct (Predict, TensorProto)", "direct", ep.fast_grpc_target,
                   gateway_sends_tf(fast_v2, "fast", "1"), {}, predict),
            [Target("gateway v2 gRPC -> TF gRPC (translate)", "gateway", g, wire(fast_v2), {}, infer)],
            note="v2 ModelInfer (raw_input_contents) -> PredictRequest (tensor_content) -> ModelInferResponse; "
                 "direct sends the PredictRequest the gateway sends",
            skipped=fast_skip),
    ]
    out.append(Scenario(
        "grpc_tfserving_affine", f"gRPC: {tf_kind}, affine Predict", "tfserving",
        Target("direct (Predict)", "direct", ep.tf.grpc_target if ep.tf else "", tf_predict_request("affine", 2), {},
               predict),
        [Target("gateway TF gRPC (pass-through)", "gateway", g, tf_predict_request("affine_grpc", 2), {}, predict)],
        note="TF gRPC front -> transport: grpc TF Serving backend",
        skipped="" if ep.tf else f"TF Serving did not start: {ep.failures.get('tfserving', '?')}"))
    ts_metadata: dict[str, str] = {}
    skipped = ""
    if ep.ts is not None and ep.ts.key_file is not None:
        ts_metadata = {k.lower(): v for k, v in ep.ts.auth_headers("inference").items()}
    elif ep.ts is None:
        skipped = f"TorchServe did not start: {ep.failures.get('torchserve', '?')}"
    scale_v2 = v2_infer_request("scale_grpc", "2")
    out.append(Scenario(
        "grpc_torchserve_scale", "gRPC: TorchServe, scale v2", "torchserve",
        Target("direct (Predictions, bearer key)", "direct", ep.ts.grpc_inference_target if ep.ts else "",
               gateway_sends_ts(scale_v2, "scale", "2"), ts_metadata, predictions),
        [Target("gateway v2 gRPC -> TS gRPC (translate)", "gateway", g, wire(scale_v2), {}, infer)],
        note="v2 ModelInfer -> Predictions with the v2 JSON body -> ModelInferResponse; direct sends the "
             "Predictions request the gateway sends",
        skipped=skipped))
    return out


def check_grpc_targets(scenario: Scenario, load: GrpcLoad) -> None:
    """One call per target (through the load generator: no gRPC in this process), and the answer must carry
    outputs: a wrong route, a refused key or a failed translation is reported, not measured as fast errors."""
    for t in (scenario.direct, *scenario.gateways):
        code, details, body = load.call(t)
        problem = "" if code == "OK" else f"answered {code}: {details[:300]}"
        if not problem:
            try:
                answer = svc.METHODS[t.grpc_method].response.FromString(body)
            except Exception as exc:  # DecodeError and friends
                answer, problem = None, f"unreadable answer: {exc}"
            if isinstance(answer, tfs.PredictResponse | v2.ModelInferResponse) and not answer.outputs:
                problem = "answered without outputs"
            elif isinstance(answer, tsi.PredictionResponse) and b'"outputs"' not in answer.prediction:
                problem = f"answered {answer.prediction[:300]!r}"
        if problem:
            scenario.skipped = f"{t.label}: {t.where} {problem}"
            return


def check_targets(scenario: Scenario) -> None:
    """One request per target before any load: a wrong URL or a refused key fails loudly, not as 'fast 4xx'."""
    with httpx.Client(timeout=30) as client:
        for t in (scenario.direct, *scenario.gateways):
            try:
                r = client.post(t.url, content=t.body, headers=t.headers)
            except httpx.HTTPError as exc:
                scenario.skipped = f"{t.label}: POST {t.url} failed: {type(exc).__name__}: {exc}"
                return
            if r.status_code != 200:
                scenario.skipped = f"{t.label}: POST {t.url} answered {r.status_code}: {r.text[:300]}"
                return


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, ep: Endpoints, load: WrkLoad | PythonLoad, duration: int, warmup: int,
                 grpc_load: GrpcLoad | None = None, grpc_warmup: float | None = None) -> None:
        self.ep = ep
        self.load = load
        self.grpc_load = grpc_load
        self.duration = duration
        self.warmup = warmup
        self.grpc_warmup = warmup if grpc_warmup is None else grpc_warmup
        self.groups: dict[str, localstack.ManagedProcess | None] = {
            "fast": ep.fast_proc, "fast_grpc": ep.fast_grpc_proc, "tfserving": ep.tf_proc, "torchserve": ep.ts_proc}
        self.prewarmed: set[int] = set()  # id() of targets whose next measurement needs no warm-up of its own
        self.servers = {"gateway": ep.gateway_proc, **{key: proc for key, (proc, _) in ep.others.items()}}

    def run_load(self, target: Target, connections: int, seconds: float) -> LoadResult:
        if target.protocol == "grpc":
            if self.grpc_load is None:
                raise RuntimeError("no gRPC load generator")
            return self.grpc_load.run(target, connections, seconds)
        return self.load.run(target, connections, max(1, round(seconds)))

    def loadgen_cpu(self) -> float:
        """This process, its reaped children (wrk) and the gRPC load generator process."""
        return own_cpu_seconds() + (self.grpc_load.cpu_seconds() if self.grpc_load else 0.0)

    def measure(self, scenario: Scenario, target: Target, connections: int) -> Measurement:
        warmup = self.grpc_warmup if target.protocol == "grpc" else self.warmup
        if id(target) in self.prewarmed:
            self.prewarmed.discard(id(target))
        elif warmup > 0:
            self.run_load(target, connections, warmup)
        backend = self.groups.get(scenario.backend)
        server = self.servers[target.process]
        ours = [p.pgid for p in (*self.servers.values(), *self.groups.values()) if p is not None]
        gw0 = cpu_seconds(server.pgid)
        be0 = cpu_seconds(backend.pgid) if backend else 0.0
        ours0 = sum(cpu_seconds(g) for g in ours)
        lg0 = self.loadgen_cpu()
        busy0, total0 = machine_cpu()
        res = self.run_load(target, connections, self.duration)
        busy1, total1 = machine_cpu()
        lg1 = self.loadgen_cpu()
        ours1 = sum(cpu_seconds(g) for g in ours)
        gw1 = cpu_seconds(server.pgid)
        be1 = cpu_seconds(backend.pgid) if backend else 0.0
        n = max(1, res.requests)
        span = total1 - total0
        other = (busy1 - busy0) - (ours1 - ours0) - (lg1 - lg0)
        return Measurement(
            scenario=scenario.key, target=target.label, role=target.role, url=target.where, concurrency=connections,
            requests=res.requests, duration_s=round(res.duration_s, 3),
            rps=round(res.requests / res.duration_s, 1) if res.duration_s > 0 else 0.0,
            p50_ms=round(res.p50_us / 1000, 3), p90_ms=round(res.p90_us / 1000, 3),
            p99_ms=round(res.p99_us / 1000, 3), mean_ms=round(res.mean_us / 1000, 3),
            max_ms=round(res.max_us / 1000, 3), errors=res.errors, non_2xx=res.errors.get("status", 0),
            gateway_cpu_us_per_req=round((gw1 - gw0) / n * 1e6, 1) if target.role == "gateway" else None,
            backend_cpu_us_per_req=round((be1 - be0) / n * 1e6, 1) if backend else None,
            loadgen_cpu_us_per_req=round((lg1 - lg0) / n * 1e6, 1),
            machine_busy_pct=round(100 * (busy1 - busy0) / span, 1) if span > 0 else None,
            other_cpu_pct=round(max(0.0, 100 * other / span), 1) if span > 0 else None,
        )


def run_scenarios(bench: Bench, scenarios: Sequence[Scenario], concurrencies: Sequence[int],
                  repeat: int = 1) -> list[Measurement]:
    """Direct, then each gateway path, per scenario and concurrency; ``repeat`` rounds of that sequence
    (interleaved, so slow drifts hit both sides alike) are folded into medians."""
    results: list[Measurement] = []
    for scenario in scenarios:
        if scenario.skipped:
            continue
        targets = [scenario.direct, *scenario.gateways]
        for c in concurrencies:
            runs: list[list[Measurement]] = [[] for _ in targets]
            for _ in range(repeat):
                for i, target in enumerate(targets):
                    m = bench.measure(scenario, target, c)
                    runs[i].append(m)
                    _progress(m)
            direct, *gateways = (median_of(r) for r in runs)
            results.append(direct)
            for m in gateways:
                if direct.rps > 0:
                    m.ratio_rps = round(m.rps / direct.rps, 3)
                m.added_p50_ms = round(m.p50_ms - direct.p50_ms, 3)
                results.append(m)
    return results


def median_of(runs: Sequence[Measurement]) -> Measurement:
    """One Measurement from repeated runs: the median of every figure, the sum of requests and errors."""
    if len(runs) == 1:
        return runs[0]

    def med(name: str) -> Any:
        values = [getattr(r, name) for r in runs if getattr(r, name) is not None]
        return round(statistics.median(values), 3) if values else None

    first = runs[0]
    errors = {k: sum(r.errors.get(k, 0) for r in runs) for k in first.errors}
    out = Measurement(
        scenario=first.scenario, target=first.target, role=first.role, url=first.url,
        concurrency=first.concurrency, requests=sum(r.requests for r in runs),
        duration_s=round(sum(r.duration_s for r in runs), 3), rps=med("rps"), p50_ms=med("p50_ms"),
        p90_ms=med("p90_ms"), p99_ms=med("p99_ms"), mean_ms=med("mean_ms"), max_ms=max(r.max_ms for r in runs),
        errors=errors, non_2xx=sum(r.non_2xx for r in runs),
        gateway_cpu_us_per_req=med("gateway_cpu_us_per_req"), backend_cpu_us_per_req=med("backend_cpu_us_per_req"),
        loadgen_cpu_us_per_req=med("loadgen_cpu_us_per_req"), machine_busy_pct=med("machine_busy_pct"),
        other_cpu_pct=med("other_cpu_pct"))
    out.runs = [{"rps": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "other_cpu_pct": r.other_cpu_pct}
                for r in runs]
    return out


def _progress(m: Measurement) -> None:
    print(f"  {m.scenario:<22} {m.target:<38} c={m.concurrency:<3} {m.rps:>9,.0f} req/s  p50 {m.p50_ms:.2f} ms  "
          f"p99 {m.p99_ms:.2f} ms  errors {m.error_total}", flush=True)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, signed: bool = False) -> str:
    if value is None:
        return "-"
    return format(value, ("+" if signed else "") + spec)


def render_table(scenarios: Sequence[Scenario], results: Sequence[Measurement]) -> str:
    header = ("scenario", "path", "c", "req/s", "p50 ms", "p99 ms", "gw/direct", "+p50 ms", "gw CPU us/req",
              "backend CPU us/req", "load CPU us/req", "other CPU %", "errors")
    rows: list[tuple[str, ...]] = []
    titles = {s.key: s.title for s in scenarios}
    last = None
    for m in results:
        title = titles.get(m.scenario, m.scenario) if m.scenario != last else ""
        last = m.scenario
        rows.append((title, m.target, str(m.concurrency), _fmt(m.rps, ",.0f"), _fmt(m.p50_ms, ".2f"),
                     _fmt(m.p99_ms, ".2f"), _fmt(m.ratio_rps, ".2f"), _fmt(m.added_p50_ms, ".2f", signed=True),
                     _fmt(m.gateway_cpu_us_per_req, ",.0f"), _fmt(m.backend_cpu_us_per_req, ",.0f"),
                     _fmt(m.loadgen_cpu_us_per_req, ",.0f"), _fmt(m.other_cpu_pct, ".0f"), str(m.error_total)))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    left = {0, 1}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                 strict=True)))

    out = [line(header), "  ".join("-" * w for w in widths)]
    for r in rows:
        if r[0] and len(out) > 2:
            out.append("")
        out.append(line(r))
    return "\n".join(out)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("uvicorn", "httptools", "uvloop", "aiohttp", "orjson", "grpcio", "protobuf"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=None, help="seconds per measurement (default 10, --quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up seconds before each measurement (default 2, "
                                                               "--quick 1)")
    p.add_argument("--connections", "-c", type=int, default=32, help="concurrency C (default 32)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: leaves the cores to the servers)")
    p.add_argument("--repeat", type=int, default=1, help="rounds of each measurement, reported as medians "
                                                         "(default 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: ~2 s per measurement, concurrency C only, "
                                                          "gateway paths warmed once up front")
    p.add_argument("--scenarios", default="", help="comma-separated scenario keys to run (default: all): "
                                                    "fast_tf_predict, fast_v2_translate, tfserving_affine, "
                                                    "torchserve_scale, fastapi_vs_raw, " + ", ".join(GRPC_SCENARIOS))
    p.add_argument("--grpc-channels", type=int, default=4,
                   help="gRPC channels (one HTTP/2 connection each) the C calls in flight are spread over (default 4)")
    p.add_argument("--grpc-warmup", type=float, default=None,
                   help="warm-up seconds before each gRPC measurement (default: --warmup, --quick 0.5)")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                   help="load generator (auto: wrk when installed, else Python)")
    p.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the gateway process (repeatable), e.g. GATEWAY_GRPC_PORT=0")
    p.add_argument("--baseline-repo", type=Path, help="also run the gateway of this checkout (e.g. main's) and "
                                                      "measure it beside this one on every REST path")
    p.add_argument("--auth", action="store_true",
                   help="also run a gateway with client authentication on and measure the fast scenarios through it "
                        "with an API key and with a JWT, beside the gateway without it")
    p.add_argument("--pyreqwest", action="store_true",
                   help="also run a gateway calling its REST backends with pyreqwest (GATEWAY_HTTP_CLIENT) and "
                        "measure the REST scenarios through it, beside the gateway with aiohttp")
    p.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    p.add_argument("--workdir", type=Path, help="where the processes' logs go (default: a temporary directory, "
                                                "removed at the end)")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 2 if args.quick else 10
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.grpc_warmup is None:
        args.grpc_warmup = 0.5 if args.quick else float(args.warmup)
    for item in args.gateway_env:
        if "=" not in item:
            p.error(f"--gateway-env {item!r}: expected KEY=VALUE")
    args.gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    if args.connections < 1 or args.duration < 1 or args.repeat < 1 or args.grpc_channels < 1:
        p.error("--connections, --duration, --repeat and --grpc-channels must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-")) if own_workdir else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, workdir)
    except KeyboardInterrupt:
        print("\ninterrupted: every process started here has been stopped", file=sys.stderr)
        return 130
    except localstack.LocalStackError as exc:
        print(f"\nERROR: {exc}\n(every process started here has been stopped)", file=sys.stderr)
        return 2
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, workdir: Path) -> int:
    load = pick_load_generator(args.loadgen, args.threads, workdir)
    grpc_load = GrpcLoad(args.grpc_channels, workdir)
    try:
        return _run_with(args, workdir, load, grpc_load)
    finally:
        grpc_load.close()


def _run_with(args: argparse.Namespace, workdir: Path, load: WrkLoad | PythonLoad, grpc_load: GrpcLoad) -> int:
    concurrencies = [args.connections] if args.quick else list(dict.fromkeys([args.connections, 1]))
    ncpu = os.cpu_count() or 1
    print(f"machine: {ncpu} CPU(s), {_cpu_model()}; Python {platform.python_version()}", flush=True)
    print(f"load generator (REST): {load.describe(args.connections)}; {args.duration} s per measurement after a "
          f"{args.warmup} s warm-up; concurrency {', '.join(map(str, concurrencies))}"
          + (f"; {args.repeat} rounds each, medians reported" if args.repeat > 1 else ""), flush=True)
    print(f"load generator (gRPC): {grpc_load.describe(args.connections)}, its own process (pid {grpc_load.proc.pid});"
          f" {args.duration} s per measurement after a {args.grpc_warmup:g} s warm-up", flush=True)
    print(f"NOTE: both load generators run on the same {ncpu} core(s) as the gateway and the backends and compete "
          "with them for CPU: every req/s is a lower bound of what the servers could do alone, and ratios compare "
          "runs that share the machine the same way. The gRPC one is Python (grpc.aio): it needs about as much CPU "
          "per call as the servers it drives, so gRPC req/s are not comparable with REST (wrk) req/s.\n",
          flush=True)

    background = other_load()
    print(f"CPU busy before starting anything: {100 * background:.0f}% of {ncpu} core(s)", flush=True)
    if background > 0.10:
        print("WARNING: other processes are using the CPU; the figures below will be noisy "
              "(see the 'other CPU %' column).", flush=True)

    with localstack.Stack() as stack:
        t0 = time.monotonic()
        print("starting the fast backends (REST, gRPC), TorchServe, TF Serving and the gateway ...", flush=True)
        ep = start_everything(stack, workdir, args.gateway_env,
                              args.baseline_repo.resolve() if args.baseline_repo else None, auth=args.auth,
                              pyreqwest=args.pyreqwest)
        tf_kind = ("real binary" if ep.tf.real_binary else "stand-in") if ep.tf else "not started"
        print(f"  started in {time.monotonic() - t0:.1f} s: gateway {ep.gateway_url} + gRPC "
              f"{ep.gateway_grpc_target or 'off'} (pid {ep.gateway_proc.pgid}), fast backend {ep.fast_url}, "
              f"fast gRPC backend {ep.fast_grpc_target or '-'}, TorchServe {ep.ts.inference_url if ep.ts else '-'} "
              f"+ gRPC {ep.ts.grpc_inference_target if ep.ts else '-'}, TF Serving "
              f"{ep.tf.rest_url if ep.tf else '-'} + gRPC {ep.tf.grpc_target if ep.tf else '-'} ({tf_kind})",
              flush=True)
        if not ep.gateway_grpc_target:
            print("NOTE: the gateway's gRPC front is off (GATEWAY_GRPC_PORT=0): no gRPC scenarios.", flush=True)
        if "gateway_pyreqwest" in ep.others:
            proc, url = ep.others["gateway_pyreqwest"]
            print(f"  gateway with GATEWAY_HTTP_CLIENT=pyreqwest: {url} (pid {proc.pgid}); its rows are marked "
                  "'[pyreqwest]'", flush=True)
        if ep.auth is not None:
            print(f"  gateway with client authentication on: {ep.auth.url} + gRPC {ep.auth.grpc_target} (pid "
                  f"{ep.auth.proc.pgid}); its rows are marked '+ API key' / '+ JWT'", flush=True)

        scenarios = build_scenarios(ep)
        wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        unknown = set(wanted) - {s.key for s in scenarios}
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        if wanted:
            scenarios = [s for s in scenarios if s.key in wanted]
        for s in scenarios:
            if not s.skipped:
                if s.protocol == "grpc":
                    check_grpc_targets(s, grpc_load)
                else:
                    check_targets(s)
            if s.skipped:
                print(f"WARNING: scenario {s.key} skipped: {s.skipped}", file=sys.stderr, flush=True)

        bench = Bench(ep, load, args.duration, args.warmup, grpc_load, args.grpc_warmup)
        # Warm the gateway on every path it will serve (pools, caches, metadata), then read its memory. With
        # --quick that warm-up stands for the first measurement's own (it comes a few seconds later).
        for s in scenarios:
            for target in s.gateways if not s.skipped else ():
                bench.run_load(target, args.connections,
                               args.grpc_warmup if target.protocol == "grpc" else max(1, args.warmup))
                if args.quick:
                    bench.prewarmed.add(id(target))
        mem_warm = memory_kb(ep.gateway_proc.pgid)
        print(f"gateway RSS after warm-up: {mem_warm.get('VmRSS', 0) / 1024:.1f} MiB\n", flush=True)

        print("measuring (direct, then through the gateway, for each scenario and concurrency):", flush=True)
        results = run_scenarios(bench, scenarios, concurrencies, args.repeat)
        mem_end = memory_kb(ep.gateway_proc.pgid)

        for protocol, what in (("rest", f"REST, load from {load.name}"),
                               ("grpc", f"gRPC, load from {grpc_load.name} (1 process, {args.grpc_channels} "
                                        f"channel(s), sharing the {ncpu} core(s))")):
            keys = {s.key for s in scenarios if s.protocol == protocol}
            rows = [m for m in results if m.scenario in keys]
            if rows:
                print(f"\n{what}:\n" + render_table(scenarios, rows))
        print()
        print("gw/direct: gateway req/s divided by direct req/s for the same request at the same concurrency;\n"
              "+p50 ms: gateway p50 minus direct p50. CPU us/req: utime+stime from /proc over the measured run,\n"
              "divided by the requests completed (gateway process, or the row's reference proxy or baseline gateway;\n"
              "backend = its whole process group; load = the load generator: wrk, or the gRPC load process, plus\n"
              "this script).\n"
              "other CPU %: share of all cores used by processes this benchmark did not start (noise).\n"
              "errors: connect/read/write/timeout errors plus answers with status >= 400 (gRPC: UNAVAILABLE,\n"
              "DEADLINE_EXCEEDED, any other non-OK status).")
        for s in scenarios:
            print(f"  {s.key}: {s.title}" + (f" -- {s.note}" if s.note else "")
                  + (f" [SKIPPED: {s.skipped.splitlines()[0]}]" if s.skipped else ""))
        print(f"gateway RSS: {mem_warm.get('VmRSS', 0) / 1024:.1f} MiB after warm-up, "
              f"{mem_end.get('VmRSS', 0) / 1024:.1f} MiB at the end (peak {mem_end.get('VmHWM', 0) / 1024:.1f} MiB)")
        print("gateway forwarding stack: uvicorn (httptools, uvloop), raw ASGI app, aiohttp client pool per backend; "
              "gRPC: grpc.aio server in the same loop, one grpc.aio channel per gRPC backend "
              f"({', '.join(f'{k} {v}' for k, v in _versions().items())})", flush=True)

        if args.json:
            doc = {
                "meta": {
                    "cpus": ncpu, "cpu_model": _cpu_model(), "python": platform.python_version(),
                    "load_generator": load.name, "load_generator_detail": load.describe(args.connections),
                    "grpc_load_generator": grpc_load.name,
                    "grpc_load_generator_detail": grpc_load.describe(args.connections),
                    "grpc_load_generator_pid": grpc_load.proc.pid,
                    "duration_s": args.duration, "warmup_s": args.warmup, "grpc_warmup_s": args.grpc_warmup,
                    "repeat": args.repeat, "connections": args.connections, "grpc_channels": args.grpc_channels,
                    "concurrencies": concurrencies, "quick": args.quick, "tfserving": tf_kind,
                    "gateway_env": args.gateway_env, "gateway_grpc_target": ep.gateway_grpc_target,
                    "versions": _versions(),
                    "note": "load generators share the CPU cores with the gateway and the backends",
                    "cpu_busy_before_start_pct": round(100 * background, 1),
                },
                "process_groups": {name: proc.pgid for name, proc in (
                    ("gateway", ep.gateway_proc), ("fast", ep.fast_proc), ("fast_grpc", ep.fast_grpc_proc),
                    ("torchserve", ep.ts_proc), ("tfserving", ep.tf_proc),
                    *((key, proc) for key, (proc, _) in ep.others.items())) if proc is not None},
                "gateway": {"pid": ep.gateway_proc.pgid, "rss_kb_after_warmup": mem_warm.get("VmRSS"),
                            "rss_kb_end": mem_end.get("VmRSS"), "rss_kb_peak": mem_end.get("VmHWM")},
                "scenarios": [{
                    "key": s.key, "title": s.title, "backend": s.backend, "protocol": s.protocol, "note": s.note,
                    "skipped": s.skipped, "measurements": [asdict(m) for m in results if m.scenario == s.key],
                } for s in scenarios],
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            print(f"figures written to {args.json}")
        print("stopping every process started here ...", flush=True)
    return 1 if any(s.skipped for s in scenarios) else 0


if __name__ == "__main__":
    raise SystemExit(main())
