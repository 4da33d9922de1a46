"""Rollouts and restarts of the gateway under load, on both backends: a gateway of 2 worker processes on one
shared socket (GATEWAY_WORKERS=2, GATEWAY_DRAIN_S=2) in front of our own TorchServe (`scale`: v1 y=2x, v2 y=3x)
and TF Serving (`affine`: v1 y=0.5x+2, v2 y=0.5x+3), with 8 clients (v2 REST, TF REST, v2 gRPC; every request
with a sticky `x-user` key) busy throughout. Version 3 of each model is bad: a version its backend has not loaded
(every answer 503); version 4 is slow: v2's numbers through a proxy that adds 250 ms.

1. Rolling restart: `kill -HUP <master>` replaces both workers (uvicorn starts each new worker, waits until it is
   ready, then SIGTERMs the old one, which drains: not ready, `Connection: close`, gRPC GOAWAY). No request
   fails, every worker pid is new afterwards, and the admin API is served again (a standby worker takes it over).
2. Restart mid-rollout: canary rollouts of both models (steps 20, 50, 100, sticky on x-user) are running when the
   workers are restarted, the one running the orchestrator included. The new admin worker resumes them from
   their state files; both reach 100 %; no request fails; the observed share of each step matches its weight.
3. Cold restart mid-rollout: the whole gateway stops (SIGTERM) while a rollout runs; the routes file is at one of
   the rollout's steps (never half-applied); a new gateway resumes the rollout and promotes it.
4. SIGTERM on a single worker: not ready at once, still answering (Connection: close) for the drain (a second
   SIGTERM does not cut it short), then exits.
5. Automatic rollback on both backends, of a failing version (error-rate guard: failures only inside the
   detection window and about the canary's share of it) and of a slow one (p99 guard: nothing fails at all);
   traffic is back on version 1 within the first step's dwell.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import pytest
import yaml
from aiohttp import web

from gateway.dev import localstack
from gateway.dev.devstack import MODEL_REPO

from .loaddriver import Load, Result

EXPECTED = {
    "scale": {"1": lambda x: 2 * x, "2": lambda x: 3 * x, "4": lambda x: 3 * x},  # 4: version 2, slowly
    "affine": {"1": lambda x: 0.5 * x + 2, "2": lambda x: 0.5 * x + 3, "4": lambda x: 0.5 * x + 3},
}
CALL_TIMEOUT_S = 10.0
RESTART_TIMEOUT_S = 120.0
STEPS = [20, 50, 100]
APPLY_S = 1.0  # a routes write is applied by every worker within a second (GATEWAY_ROUTES_POLL_S 0.5 s)


@dataclass
class Stack:
    root: Path
    routes: Path
    admin_port: int
    admin_token: str
    port: int
    grpc_port: int
    env: dict[str, str]
    gateway: localstack.ManagedProcess | None = None
    procs: list[localstack.ManagedProcess] = field(default_factory=list)
    upstreams: dict[str, tuple[int, str]] = field(default_factory=dict)  # model -> (slow proxy port, backend URL)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start_gateway(self) -> None:
        self.gateway, _ = localstack.start_gateway(self.root / "gateway", self.routes, port=self.port, env=self.env)

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.admin_url, timeout=CALL_TIMEOUT_S,
                                 headers={"authorization": f"Bearer {self.admin_token}"})

    def load(self) -> Load:
        return Load(self.url, f"127.0.0.1:{self.grpc_port}", EXPECTED)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("gateway_restarts")
    procs: list[localstack.ManagedProcess] = []
    try:
        ts_proc, ts = localstack.start_torchserve(root / "torchserve", MODEL_REPO / "torchserve",
                                                  [("scale", "1", "scale-1.mar"), ("scale", "2", "scale-2.mar")],
                                                  token_auth=True)
        procs.append(ts_proc)
        models = root / "models"
        shutil.copytree(MODEL_REPO / "tfserving" / "affine", models / "affine")
        template = root / "models.config.template"
        template.write_text('model_config_list { config { name: "affine" base_path: "/models/affine" '
                            'model_platform: "tensorflow" model_version_policy { specific { versions: 1 versions: 2 '
                            '} } } }\n')
        tf_proc, tf = localstack.start_tfserving(root / "tfserving", template, models, wait_models=("affine",))
        procs.append(tf_proc)
        routes = root / "routes.yaml"
        slow_ports = {"scale": localstack.free_port(), "affine": localstack.free_port()}
        routes.write_text(yaml.safe_dump({
            "backends": {
                "torchserve": {"kind": "torchserve", "url": ts.inference_url, "management_url": ts.management_url,
                               "token_file": str(ts.key_file), "timeout_s": 10},
                "tfserving": {"kind": "tfserving", "url": tf.rest_url, "timeout_s": 10},
                "ts_slow": {"kind": "torchserve", "url": f"http://127.0.0.1:{slow_ports['scale']}",
                            "token_file": str(ts.key_file), "timeout_s": 10},
                "tf_slow": {"kind": "tfserving", "url": f"http://127.0.0.1:{slow_ports['affine']}",
                            "timeout_s": 10}},
            "models": {
                "scale": {"default_version": 1, "schema": {  # TF REST's unnamed inputs need the input's name
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]}, "versions": {
                    1: {"backend": "torchserve", "model": "scale", "version": "1"},
                    2: {"backend": "torchserve", "model": "scale", "version": "2"},
                    3: {"backend": "torchserve", "model": "scale", "version": "9"},  # not registered: 503s
                    4: {"backend": "ts_slow", "model": "scale", "version": "2"}}},
                "affine": {"default_version": 1, "versions": {
                    1: {"backend": "tfserving", "model": "affine", "version": "1"},
                    2: {"backend": "tfserving", "model": "affine", "version": "2"},
                    3: {"backend": "tfserving", "model": "affine", "version": "9"},  # not loaded: 503s
                    4: {"backend": "tf_slow", "model": "affine", "version": "2"}}}}}))
        admin_port, grpc_port, token = localstack.free_port(), localstack.free_port(), secrets.token_hex(16)
        env = {"GATEWAY_WORKERS": "2", "GATEWAY_DRAIN_S": "2",  # GATEWAY_ROUTES_POLL_S: the default, 0.5 s
               "GATEWAY_GRPC_PORT": str(grpc_port), "GATEWAY_ADMIN_PORT": str(admin_port),
               "GATEWAY_ADMIN_TOKEN": token, "PROMETHEUS_MULTIPROC_DIR": str(root / "metrics")}
        s = Stack(root, routes, admin_port, token, localstack.free_port(), grpc_port, env, procs=procs,
                  upstreams={"scale": (slow_ports["scale"], ts.inference_url),
                             "affine": (slow_ports["affine"], tf.rest_url)})
        s.start_gateway()
        yield s
    finally:
        if "s" in locals() and s.gateway is not None:
            s.gateway.stop()
        for proc in reversed(procs):
            proc.stop()


def workers(master: int) -> set[int]:
    """The uvicorn worker processes of a gateway master (multiprocessing spawn children)."""
    out = set()
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return out
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            out.add(pid)
    return out


async def rolling_restart(stack: Stack) -> tuple[set[int], set[int], float]:
    """SIGHUP the master; wait until every old worker is gone and two new ones serve. (old, new, seconds)."""
    assert stack.gateway is not None
    master = stack.gateway.popen.pid
    old = workers(master)
    assert len(old) == 2, old
    began = time.monotonic()
    os.kill(master, signal.SIGHUP)
    while True:
        now = workers(master)
        if len(now) == 2 and not now & old:
            return old, now, time.monotonic() - began
        assert time.monotonic() - began < RESTART_TIMEOUT_S, f"workers {old} -> {now} after {RESTART_TIMEOUT_S} s"
        await asyncio.sleep(0.1)


async def admin_get(admin: httpx.AsyncClient, path: str, timeout_s: float = 30.0) -> httpx.Response:
    """GET on the admin API, waiting out the moment a standby worker takes the admin port over."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = await admin.get(path)
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        assert time.monotonic() < deadline, f"GET {path}: {r.status_code} {r.text[:300]}"
        await asyncio.sleep(0.1)


async def wait_rollouts(admin: httpx.AsyncClient, models: list[str], done: Any, timeout_s: float
                        ) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = {m: (await admin_get(admin, f"/rollouts/{m}")).json() for m in models}
        if all(done(ro) for ro in got.values()) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.2)


async def reset(stack: Stack) -> None:
    """Both models back on version 1 alone."""
    async with stack.admin() as admin:
        for model in EXPECTED:
            got = (await admin_get(admin, "/routes")).json()
            spec = yaml.safe_load(got["text"])["models"][model]
            if str(spec.get("default_version")) != "1" or spec.get("experiment"):
                r = await admin.post(f"/models/{model}/default", json={"version": "1", "revision": got["revision"]})
                assert r.status_code == 200, r.text
    await asyncio.sleep(1.1)  # every worker polls the routes every 0.5 s


async def test_rolling_restart_of_the_workers_under_load(stack: Stack) -> None:
    await reset(stack)
    load = stack.load().start("rolling")
    try:
        await asyncio.sleep(1.5)
        before = len(load.results)
        old, new, seconds = await rolling_restart(stack)
        restarted_at = time.time()
        await asyncio.sleep(1.5)
    finally:
        await load.finish()
    after = [r for r in load.results if r.started > restarted_at]
    print(f"\nrolling restart of workers {sorted(old)} -> {sorted(new)} in {seconds:.1f} s; {load.summary()}; "
          f"{before} requests before the SIGHUP, {len(after)} after the restart completed")
    assert not load.failures, [(r.client, r.error) for r in load.failures[:5]]
    assert not load.wrong, load.wrong[:5]
    assert before > 20 and len(after) > 20
    assert {r.client.rsplit("-", 1)[0] for r in after} == {"v2-rest", "tf-rest", "v2-grpc"}
    assert {r.version for r in load.results} == {"1"}
    async with stack.admin() as admin:  # a new worker serves the admin port
        assert "models:" in (await admin_get(admin, "/routes")).json()["text"]
    async with httpx.AsyncClient(base_url=stack.url, timeout=CALL_TIMEOUT_S) as client:
        assert (await client.get("/v2/health/ready")).status_code == 200


async def test_instant_switch_on_two_workers_is_applied_everywhere_within_a_second(stack: Stack) -> None:
    await reset(stack)
    load = stack.load().start("switch")
    switched: dict[str, float] = {}
    asked: dict[str, float] = {}  # when each admin call started: the switch may apply before it returns
    try:
        await asyncio.sleep(1.0)
        async with stack.admin() as admin:
            for model in EXPECTED:
                got = (await admin_get(admin, "/routes")).json()
                asked[model] = time.time()
                r = await admin.post(f"/models/{model}/default", json={"version": "2", "revision": got["revision"]})
                assert r.status_code == 200, r.text
                switched[model] = time.time()
        await asyncio.sleep(2.0)
    finally:
        await load.finish()
    print(f"\ninstant switch on 2 workers: {load.summary()}")
    assert not load.failures, [(r.client, r.error) for r in load.failures[:5]]
    assert not load.wrong, load.wrong[:5]
    for model, at in switched.items():
        mine = [r for r in load.results if r.model == model]
        last_old = max((r.started - at for r in mine if r.version == "1" and r.started >= at), default=0.0)
        late = [r for r in mine if r.started >= at + 1.0]
        print(f"  {model}: last request answered by version 1 started {1000 * last_old:.0f} ms after the admin "
              f"call returned; {len(late)} requests started 1 s or more after it, versions "
              f"{sorted({str(r.version) for r in late})}")
        assert late and {r.version for r in late} == {"2"}  # every worker applied it within a second
        assert {r.version for r in mine if r.finished < asked[model]} == {"1"}
    await reset(stack)


def _shares(load: Load, model: str, history: list[dict[str, Any]], settle_s: float = 1.1
            ) -> list[tuple[float, float, int]]:
    """(configured percent, observed canary share, requests) per step, over [applied + settle, next change)."""
    changes = [h for h in history if h["event"] in ("step", "promoted", "rolled_back", "aborted")]
    out = []
    for cur, nxt in itertools.pairwise(changes):
        if cur["event"] != "step":
            continue
        share, n = load.share(model, "2", cur["at"] + settle_s, nxt["at"])
        out.append((float(cur["percent"]), share, n))
    return out


async def test_restart_of_every_worker_in_the_middle_of_a_rollout(stack: Stack) -> None:
    """Both workers replaced while two rollouts run: the worker that takes the admin port over resumes them at the
    step the routes hold (no step re-run, none lost) and they end as asked; no request fails meanwhile. The steps
    dwell longer than any restart, so the restart always falls inside the first one, however slow the machine."""
    await reset(stack)
    load = stack.load().start("mid-rollout")
    try:
        async with stack.admin() as admin:
            await asyncio.sleep(1.0)
            for model in EXPECTED:
                r = await admin.post("/rollouts", json={
                    "model": model, "to_version": 2, "steps": STEPS, "dwell_s": 600.0, "min_requests": 10,
                    "max_error_rate": 0.02, "sticky_header": "x-user", "who": "restart-test"})
                assert r.status_code == 200, r.text
            await wait_rollouts(admin, list(EXPECTED), lambda ro: ro["step_index"] >= 0, 30)
            await asyncio.sleep(1.0)
            old, new, seconds = await rolling_restart(stack)
            resumed = await wait_rollouts(admin, list(EXPECTED), lambda ro: ro["history"][-1]["event"] == "resumed",
                                          60)
            await asyncio.sleep(1.0)  # traffic at the resumed step
            for model in EXPECTED:
                r = await admin.post(f"/rollouts/{model}/promote", json={"who": "restart-test"})
                assert r.status_code == 200, r.text
            got = await wait_rollouts(admin, list(EXPECTED), lambda ro: ro["state"] != "running", 30)
            # Keep the load on until each model has answered requests started well after its rollout ended (every
            # worker polls the routes within a second), however slowly the machine runs them.
            async with asyncio.timeout(60):
                while not all(_late(load, model, ro) for model, ro in got.items()):
                    await asyncio.sleep(0.1)
    finally:
        await load.finish()
    print(f"\nrestart mid-rollout: workers {sorted(old)} -> {sorted(new)} in {seconds:.1f} s; {load.summary()}")
    for model, ro in got.items():
        shares = _shares(load, model, ro["history"])
        print(f"  {model}: {ro['state']}; events {[h['event'] for h in ro['history']]}; per step (configured %, "
              f"observed %, requests): {[(p, round(s * 100, 1), n) for p, s, n in shares]}")
    assert not load.failures, [(r.client, r.error) for r in load.failures[:5]]
    assert not load.wrong, load.wrong[:5]
    for model, ro in got.items():
        events = [h["event"] for h in ro["history"]]
        assert resumed[model]["percent"] == 20 and resumed[model]["state"] == "running", resumed[model]
        # The admin port may move twice in a rolling restart (an old worker can win it before it is replaced).
        assert ro["state"] == "promoted", (model, ro["reason"], events)
        assert events[:2] == ["started", "step"] and events[-1] == "promoted", events
        assert set(events[2:-1]) == {"resumed"}, events  # no step re-run, none lost
        for percent, share, n in _shares(load, model, ro["history"]):
            if n >= 50:  # 4 standard deviations of a binomial share, at least 10 points
                p = percent / 100
                tolerance = max(0.10, 4 * math.sqrt(p * (1 - p) / n))
                assert not math.isnan(share) and abs(share - p) <= tolerance, (model, percent, share, n)
        late = _late(load, model, ro)
        assert late and {r.version for r in late} == {"2"}, late[:5]
    await reset(stack)


def _late(load: Load, model: str, ro: dict[str, Any]) -> list[Result]:
    """Requests for ``model`` started more than a routes poll (and a margin) after its rollout ended."""
    return [r for r in load.results if r.model == model and r.started > ro["updated_at"] + 1.1]


async def test_cold_restart_mid_rollout_resumes_from_a_consistent_state(stack: Stack) -> None:
    await reset(stack)
    async with stack.admin() as admin:
        r = await admin.post("/rollouts", json={
            "model": "scale", "to_version": 2, "steps": STEPS, "dwell_s": 60.0, "min_requests": 1,
            "who": "cold-restart-test"})
        assert r.status_code == 200, r.text
        await wait_rollouts(admin, ["scale"], lambda ro: ro["step_index"] >= 0, 30)
    assert stack.gateway is not None
    stack.gateway.stop()
    spec = yaml.safe_load(stack.routes.read_text())["models"]["scale"]
    variants = {v["name"]: (str(v["version"]), v["weight"]) for v in spec["experiment"]["variants"]}
    assert variants == {"stable": ("1", 80), "canary": ("2", 20)}, spec  # the applied step, whole
    stack.start_gateway()
    async with stack.admin() as admin:
        ro = (await admin_get(admin, "/rollouts/scale")).json()
        assert ro["state"] == "running" and ro["percent"] == 20, ro
        assert ro["history"][-1]["event"] == "resumed", ro["history"][-1]
        r = await admin.post("/rollouts/scale/promote", json={"who": "cold-restart-test"})
        assert r.status_code == 200, r.text
    await asyncio.sleep(1.1)
    async with httpx.AsyncClient(base_url=stack.url, timeout=CALL_TIMEOUT_S) as client:
        for _ in range(5):
            r = await client.post("/v2/models/scale/infer", json={"inputs": [
                {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]})
            assert r.status_code == 200 and r.headers["x-model-version"] == "2", r.text
    await reset(stack)


async def test_sigterm_turns_not_ready_then_drains_then_exits(stack: Stack) -> None:
    """One worker, GATEWAY_DRAIN_S=4: after SIGTERM the gateway still answers for the drain period, but as not
    ready (gRPC health NOT_SERVING, v2 ready 400, /ping 503) and with `Connection: close` on every answer; a
    second SIGTERM does not cut the drain short; then it exits with nothing left listening."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    drain_s = 4.0
    grpc_port = localstack.free_port()
    proc, url = localstack.start_gateway(stack.root / "sigterm", stack.routes, env={
        "GATEWAY_DRAIN_S": str(drain_s), "GATEWAY_GRPC_PORT": str(grpc_port), "GATEWAY_ADMIN_PORT": "0"})
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=CALL_TIMEOUT_S) as client, \
                grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert (await client.get("/v2/health/ready")).status_code == 200
            r = await client.post("/v2/models/scale/infer", json=body)
            assert r.status_code == 200 and "connection" not in r.headers
            assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == \
                health_pb2.HealthCheckResponse.SERVING
            proc.popen.send_signal(signal.SIGHUP)  # one worker: nothing to roll over to, so ignored (logged)
            await asyncio.sleep(0.3)
            assert (await client.post("/v2/models/scale/infer", json=body)).status_code == 200
            proc.popen.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            # gRPC first: half-way through the drain this worker stops accepting (the channel's connection ages).
            checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            while checked.status == health_pb2.HealthCheckResponse.SERVING and time.monotonic() - sent < 1.0:
                await asyncio.sleep(0.02)
                checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING
            ready = await client.get("/v2/health/ready")
            ping = await client.get("/ping")
            proc.popen.send_signal(signal.SIGTERM)  # ignored: the drain goes on
            infer = await client.post("/v2/models/scale/infer", json=body)
            during = time.monotonic() - sent
            assert during < drain_s, f"the checks took until {during:.2f} s, past the drain period"
            assert ready.status_code == 400 and ready.json()["ready"] is False, ready.text
            assert ping.status_code == 503 and ping.json()["status"] == "Unhealthy", ping.text
            assert infer.status_code == 200 and infer.headers.get("connection") == "close", infer.headers
            exit_code = await asyncio.to_thread(proc.popen.wait, 30)
            took = time.monotonic() - sent
        print(f"\nSIGTERM -> not ready at once, answers served for the {drain_s:g} s drain, exit after {took:.2f} s "
              f"(code {exit_code})")
        assert took >= drain_s
        with pytest.raises(httpx.TransportError):
            async with httpx.AsyncClient(base_url=url, timeout=2) as client:
                await client.get("/v2/health/live")
        log = proc.log_path.read_text()
        assert "SIGTERM: draining" in log and "SIGHUP ignored: a rolling restart needs --workers 2" in log
    finally:
        proc.stop()


@contextlib.asynccontextmanager
async def slow_proxy(port: int, upstream: str, delay_s: float) -> AsyncIterator[None]:
    """A reverse proxy on 127.0.0.1:port that waits ``delay_s`` and then forwards to ``upstream``: a backend
    version that answers right, but slowly."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)) as session:
        async def forward(request: web.Request) -> web.Response:
            await asyncio.sleep(delay_s)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with session.request(request.method, upstream + request.path_qs, headers=headers,
                                       data=await request.read()) as r:
                return web.Response(status=r.status, body=await r.read(),
                                    headers={"content-type": r.headers.get("content-type", "application/json")})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            yield
        finally:
            await runner.cleanup()


async def _rolls_back(stack: Stack, to_version: int, guards: dict[str, Any], why: str) -> dict[str, Any]:
    """Canary rollouts of both models to ``to_version`` (20 % then 100 %) under load, each expected to roll back
    on its own within the 20 % step; the figures printed; returns per model the rollout, the failures inside and
    outside its detection window, and the requests in that window."""
    await reset(stack)
    load = stack.load().start(f"rollback-{to_version}")
    out: dict[str, Any] = {}
    try:
        async with stack.admin() as admin:
            await asyncio.sleep(1.0)
            for model in EXPECTED:
                r = await admin.post("/rollouts", json={
                    "model": model, "to_version": to_version, "steps": [20, 100], "dwell_s": 8.0,
                    "min_requests": 10, "who": "rollback-test", **guards})
                assert r.status_code == 200, r.text
            got = await wait_rollouts(admin, list(EXPECTED), lambda ro: ro["state"] != "running", 30)
            await asyncio.sleep(2.0)  # load after the rollback
    finally:
        await load.finish()
    print(f"\nrollback of a {why} version {to_version}: {load.summary()}")
    for model, ro in got.items():
        step_at = next(h["at"] for h in ro["history"] if h["event"] == "step")
        # The rollback's write, plus the time every worker takes to apply it (within a second).
        back_at = ro["history"][-1]["at"] + APPLY_S
        mine = [r for r in load.results if r.model == model]
        window = [r for r in mine if r.finished >= step_at and r.started <= back_at]
        inside = [r for r in window if r.version is None]
        outside = [r for r in mine if r.version is None and (r.finished < step_at or r.started > back_at)]
        after = [r for r in mine if r.started > back_at]
        print(f"  {model}: {ro['state']} {1000 * (back_at - APPLY_S - step_at):.0f} ms after the 20 % step: "
              f"{ro['reason']}; "
              f"in that window {len(inside)} failed of {len(window)}; failed outside it {len(outside)}; after: "
              f"{len(after)} requests, versions {sorted({str(r.version) for r in after})}; failed requests took "
              f"{1000 * max((r.finished - r.started for r in inside), default=0):.0f} ms at most")
        out[model] = {"rollout": ro, "detection_s": back_at - APPLY_S - step_at, "inside": inside, "outside": outside,
                      "window": window, "after": after}
    assert not load.wrong, load.wrong[:5]
    for model, o in out.items():
        ro = o["rollout"]
        assert ro["state"] == "rolled_back", (model, ro["state"], ro["reason"])
        assert o["detection_s"] < 8.0  # within the first step's dwell
        assert not o["outside"], [(r.client, r.error) for r in o["outside"][:5]]
        assert o["after"] and {r.version for r in o["after"]} == {"1"}
        spec = yaml.safe_load(stack.routes.read_text())["models"][model]
        assert spec.get("experiment") is None and str(spec["default_version"]) == "1", spec
    return out


async def test_failing_canary_is_rolled_back_on_both_backends(stack: Stack) -> None:
    out = await _rolls_back(stack, 3, {"max_error_rate": 0.05}, "failing")
    for model, o in out.items():
        assert "error rate" in o["rollout"]["reason"], o["rollout"]["reason"]
        n = len(o["window"])  # failures about the canary's 20 % share of the window, never much more
        assert len(o["inside"]) <= 0.2 * n + 3 * (0.16 * n) ** 0.5 + 2, (model, len(o["inside"]), n)
        assert all(r.version is None or r.version == "1" for r in o["window"])


async def test_slow_canary_is_rolled_back_on_both_backends(stack: Stack) -> None:
    async with contextlib.AsyncExitStack() as proxies:
        for port, upstream in stack.upstreams.values():
            await proxies.enter_async_context(slow_proxy(port, upstream, 0.25))
        out = await _rolls_back(stack, 4, {"max_error_rate": 0.05, "max_p99_s": 0.15}, "slow")
    for o in out.values():
        assert "p99" in o["rollout"]["reason"], o["rollout"]["reason"]
        assert not o["inside"], [(r.client, r.error) for r in o["inside"][:5]]  # slow, but nothing failed
        assert {r.version for r in o["window"]} <= {"1", "4"}
