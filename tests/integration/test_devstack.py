"""The quick start's main command: `make up` runs `gateway dev`, the whole local stack (TorchServe, TF Serving or its
stand-in, the gateway with its admin API). Started here as a user would (own ports and work directory), then: the
banner's examples answer on every front (the digits PNG uploads and replay script included), a canary rollout
runs through the `gateway rollout` CLI while requests flow, and Ctrl-C (SIGINT to its process group) stops
everything, backends included."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.dev import localstack

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 240.0
X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
X4 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}


def _wait(predicate, timeout_s: float, what: str, proc: localstack.ManagedProcess) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.running(), f"gateway dev exited: {proc.log_tail()}"
        assert time.monotonic() < deadline, f"{what} not within {timeout_s:g} s: {proc.log_tail()}"
        time.sleep(0.2)


def _ok(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


def test_gateway_dev_serves_the_examples_runs_a_rollout_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port, grpc_port, admin_port = localstack.free_port(), localstack.free_port(), localstack.free_port()
    workdir = tmp_path / "dev"
    proc = localstack.spawn_process(
        "gateway-dev", [sys.executable, "-m", "gateway", "dev", "--port", str(port), "--grpc-port", str(grpc_port),
                        "--admin-port", str(admin_port), "--workdir", str(workdir)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, log_path=tmp_path / "dev.log")
    url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            _wait(lambda: _ok(client, "/v2/health/ready"), STARTUP_TIMEOUT_S, "the gateway ready", proc)
            banner = proc.log_path.read_text()
            assert "Model Gateway local stack" in banner

            # The banner's examples, on every front and both backends.
            r = client.post("/v2/models/mlp/infer", json=X4)  # TF Serving
            assert r.status_code == 200 and r.headers["x-backend"] == "tfserving", r.text
            r = client.post("/v2/models/mlp_torch/versions/2/infer", json=X4)  # TorchServe
            assert r.status_code == 200 and r.headers["x-model-version"] == "2", r.text
            r = client.post("/v1/models/affine/labels/stable:predict", json={"instances": [[1, 2, 3]]})
            assert r.status_code == 200 and r.json()["predictions"] == [[2.5, 3.0, 3.5]], r.text
            r = client.post("/predictions/scale/1", json=X3)
            assert r.status_code == 200, r.text
            r = client.post("/v2/models/classifier/infer", json=X4, headers={"x-user-id": "alice"})
            assert r.status_code == 200 and r.headers.get("x-model-variant"), r.headers
            assert "gateway_requests_total" in client.get("/metrics").text
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert status.status == health_pb2.HealthCheckResponse.SERVING

            # The banner's digits commands as printed: a PNG upload to each TorchServe model, the replay script.
            uploads = [shlex.split(line) for line in banner.splitlines() if "--data-binary @" in line]
            assert len(uploads) == 2, banner
            for words in uploads:
                image = Path(next(w for w in words if w.startswith("@"))[1:])
                target = next(w for w in words if w.startswith(url))
                content_type = words[words.index("-H") + 1].split(":", 1)[1].strip()
                r = client.post(target.removeprefix(url), content=image.read_bytes(),
                                headers={"content-type": content_type})
                assert r.status_code == 200 and r.json()["label"] == image.stem, (words, r.text)
            replay_line = next(line for line in banner.splitlines() if "replay_digits.py" in line)
            replay = subprocess.run(shlex.split(replay_line, comments=True), capture_output=True, text=True,
                                    timeout=120, cwd="/")
            assert replay.returncode == 0, replay.stdout + replay.stderr
            assert "tf (v2)" in replay.stdout and "torch (v4)" in replay.stdout and "shadow v5" in replay.stdout

            # The banner's admin CLI lines, run as printed in a shell without the virtualenv on PATH: a canary
            # rollout of `scale` back to version 1, requests flowing meanwhile.
            lines = [line.strip() for line in banner.splitlines()]
            export = next(line for line in lines if line.startswith("export GATEWAY_ADMIN_URL="))
            start = next(line for line in lines if " rollout start scale 1 " in line)
            status = next(line for line in lines if line.endswith(" rollout status scale"))
            assert export == f"export GATEWAY_ADMIN_URL={admin_url} GATEWAY_ADMIN_TOKEN_FILE={workdir / 'admin-token'}"
            env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

            def cli(command: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(["bash", "-c", f"{export} && {command}"], capture_output=True, text=True,
                                      timeout=60, env=env, cwd=REPO)

            shown = cli(next(line for line in lines if line.endswith(" routes show")))
            assert shown.returncode == 0 and "revision" in shown.stderr, shown.stderr
            started = cli(start)
            assert started.returncode == 0, started.stderr
            versions: set[str] = set()
            state = "running"
            deadline = time.monotonic() + 60
            while state == "running":
                assert time.monotonic() < deadline, cli(status).stdout
                for _ in range(10):
                    r = client.post("/v2/models/scale/infer", json=X3)
                    assert r.status_code == 200, r.text
                    versions.add(r.headers["x-model-version"])
                status_run = cli(status)
                assert status_run.returncode == 0, status_run.stderr
                state = json.loads(status_run.stdout)["state"]
            assert state == "promoted", cli(status).stdout
            assert versions == {"1", "2"}, versions  # both served during the canary
            r = client.post("/v2/models/scale/infer", json=X3)
            assert r.headers["x-model-version"] == "1" and r.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0]
    finally:
        if proc.running():
            os.killpg(proc.pgid, signal.SIGINT)  # Ctrl-C
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(60)
        exited = not proc.running()
        log = proc.log_path.read_text()
        proc.stop()
    assert exited, f"gateway dev still running 60 s after Ctrl-C: {log[-3000:]}"
    for p in (port, grpc_port, admin_port):  # nothing listens any more, backends included (their ports: log)
        with httpx.Client(timeout=2) as client:
            try:
                client.get(f"http://127.0.0.1:{p}/")
                raise AssertionError(f"port {p} still answers after Ctrl-C")
            except httpx.TransportError:
                pass
    backend_urls = [w for w in log.split() if w.startswith("http://127.0.0.1:") and str(port) not in w]
    assert backend_urls, log[-2000:]
    for backend in backend_urls[:4]:
        with httpx.Client(timeout=2) as client:
            try:
                client.get(backend.rstrip(")").rstrip(","))
                raise AssertionError(f"{backend} still answers after Ctrl-C")
            except httpx.TransportError:
                pass
