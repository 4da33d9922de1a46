"""Integration tests for gateway.dev.localstack against a real TorchServe (throwaway TorchScript archive).

TF Serving is exercised through a fake ``tensorflow_model_server`` placed on PATH (it checks the
flags and the rewritten models.config); a test against the real ``tfserving_standin`` comes once
that package exists.  Every network call has a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from gateway.dev.localstack import (
    TFSERVING_MONITORING_CONFIG,
    LocalStackError,
    ManagedProcess,
    TorchServeEndpoints,
    free_port,
    is_invalid_key_response,
    read_torchserve_key,
    rotate_torchserve_key,
    start_tfserving,
    start_torchserve,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}

HANDLER = '''
import json
import os

import torch
from ts.torch_handler.base_handler import BaseHandler


class Handler(BaseHandler):
    """Open Inference Protocol v2 JSON in, v2 JSON out; y = x * scale + version."""

    def initialize(self, context):
        props = context.system_properties
        path = os.path.join(props["model_dir"], context.manifest["model"]["serializedFile"])
        self.model = torch.jit.load(path)
        self.model.eval()
        self.version = context.manifest["model"]["modelVersion"]
        self.initialized = True

    def handle(self, data, context):
        out = []
        for i, row in enumerate(data):
            body = row.get("body") or row.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            inp = body["inputs"][0]
            x = torch.tensor(inp["data"], dtype=torch.float32).reshape(inp["shape"])
            with torch.no_grad():
                y = self.model(x)
            context.set_response_content_type(i, "application/json")
            out.append({
                "model_name": context.model_name,
                "model_version": self.version,
                "outputs": [{"name": "y", "shape": list(y.shape), "datatype": "FP32",
                             "data": y.flatten().tolist()}],
            })
        return out
'''


def _archiver() -> list[str]:
    sibling = Path(sys.executable).with_name("torch-model-archiver")
    if sibling.is_file():
        return [str(sibling)]
    found = shutil.which("torch-model-archiver")
    assert found, "torch-model-archiver is not installed"
    return [found]


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-1.mar and tiny-2.mar: a traced TorchScript y = 2x (+ the version in the handler)."""
    import torch  # the tests may import torch; gateway.dev.localstack must not

    src = tmp_path_factory.mktemp("tiny_src")
    store = tmp_path_factory.mktemp("tiny_store")

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2.0

    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript tracing; TorchServe 0.12 still loads TorchScript.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(Double(), torch.zeros(1, 4)).save(str(src / "model.pt"))
    (src / "handler.py").write_text(HANDLER)
    for version in ("1", "2"):
        out = src / f"export{version}"
        out.mkdir()
        subprocess.run(
            [
                *_archiver(),
                "--model-name",
                "tiny",
                "--version",
                version,
                "--serialized-file",
                str(src / "model.pt"),
                "--handler",
                str(src / "handler.py"),
                "--export-path",
                str(out),
            ],
            check=True,
            timeout=60,
        )
        (out / "tiny.mar").rename(store / f"tiny-{version}.mar")
    return store


@pytest.fixture(scope="module")
def torchserve(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[tuple[ManagedProcess, TorchServeEndpoints]]:
    proc, ep = start_torchserve(
        tmp_path_factory.mktemp("ts_auth"),
        model_store,
        [("tiny", "1", "tiny-1.mar"), ("tiny", "2", "tiny-2.mar")],
        token_auth=True,
        defaults={"tiny": "2"},
        startup_timeout=90,
    )
    try:
        yield proc, ep
    finally:
        proc.stop()


def _infer(ep: TorchServeEndpoints, path: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{ep.inference_url}{path}", json=BODY, headers=headers, timeout=TIMEOUT)


def test_torchserve_started_with_timings(torchserve: tuple[ManagedProcess, TorchServeEndpoints]) -> None:
    proc, ep = torchserve
    assert proc.running()
    assert set(proc.timings) >= {"ready", "register:tiny/1", "register:tiny/2", "total"}
    assert ep.key_file is not None and ep.key_file.parent == proc.log_path.parent
    config = (proc.log_path.parent / "config.properties").read_text()
    assert "metrics_mode=prometheus" in config and "127.0.0.1" in config
    # Our log4j2 config is in force: no DEBUG lines, no rolling log files.
    log = proc.log_path.read_text(errors="replace")
    assert "[DEBUG]" not in log
    assert not (proc.log_path.parent / "logs" / "ts_log.log").exists()


def test_inference_with_bearer_key(torchserve: tuple[ManagedProcess, TorchServeEndpoints]) -> None:
    _, ep = torchserve
    headers = ep.auth_headers("inference")
    for path, version in (("/predictions/tiny/1", "1"), ("/predictions/tiny", "2"), ("/v2/models/tiny/infer", "2")):
        resp = _infer(ep, path, headers)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
        assert body["model_version"] == version  # defaults={"tiny": "2"} moved the default
    ping = httpx.get(f"{ep.inference_url}/ping", headers=headers, timeout=TIMEOUT)
    assert ping.status_code == 200 and ping.json() == {"status": "Healthy"}


def test_inference_without_or_with_wrong_key_is_rejected(
    torchserve: tuple[ManagedProcess, TorchServeEndpoints],
) -> None:
    _, ep = torchserve
    assert ep.key_file is not None
    wrong = [
        {},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Bearer {read_torchserve_key(ep.key_file, 'management')}"},
        {"Authorization": f"Bearer {read_torchserve_key(ep.key_file, 'API')}"},
        {"Authorization": f"bearer {read_torchserve_key(ep.key_file, 'inference')}"},  # case-sensitive
    ]
    for headers in wrong:
        resp = _infer(ep, "/predictions/tiny/1", headers)
        assert resp.status_code == 400, (headers, resp.text)
        assert is_invalid_key_response(resp.status_code, resp.content)
        assert resp.json()["type"] == "InvalidKeyException"
    # Even /ping needs the inference key; the management port needs the management key.
    assert httpx.get(f"{ep.inference_url}/ping", timeout=TIMEOUT).status_code == 400
    assert httpx.get(f"{ep.management_url}/models", timeout=TIMEOUT).status_code == 400
    ok = httpx.get(f"{ep.management_url}/models", headers=ep.auth_headers("management"), timeout=TIMEOUT)
    assert ok.status_code == 200
    # Ordinary errors are not mistaken for key errors.
    missing = _infer(ep, "/predictions/nope", ep.auth_headers("inference"))
    assert missing.status_code == 404
    assert not is_invalid_key_response(missing.status_code, missing.content)


def test_metrics_need_no_key(torchserve: tuple[ManagedProcess, TorchServeEndpoints]) -> None:
    _, ep = torchserve
    resp = httpx.get(f"{ep.metrics_url}/metrics", timeout=TIMEOUT)
    assert resp.status_code == 200
    assert "ts_inference_requests_total" in resp.text


def test_key_file_format(torchserve: tuple[ManagedProcess, TorchServeEndpoints]) -> None:
    _, ep = torchserve
    assert ep.key_file is not None
    assert stat.S_IMODE(ep.key_file.stat().st_mode) == 0o600
    data = json.loads(ep.key_file.read_text())
    assert set(data) == {"management", "inference", "API"}
    assert set(data["API"]) == {"key"}
    for kind in ("management", "inference"):
        assert set(data[kind]) == {"key", "expiration time"}
        expires = datetime.fromisoformat(data[kind]["expiration time"].replace("Z", "+00:00")[:26] + "+00:00")
        assert expires.timestamp() > time.time()
        assert read_torchserve_key(ep.key_file, kind) == data[kind]["key"]


def test_rotate_inference_key(torchserve: tuple[ManagedProcess, TorchServeEndpoints]) -> None:
    _, ep = torchserve
    assert ep.key_file is not None
    old = read_torchserve_key(ep.key_file, "inference")
    management = read_torchserve_key(ep.key_file, "management")
    inode = ep.key_file.stat().st_ino
    # Rotation lives on the management port and needs the API key; the inference port has no /token.
    api_key = read_torchserve_key(ep.key_file, "API")
    on_inference_port = httpx.post(
        f"{ep.inference_url}/token",
        params={"type": "inference"},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=TIMEOUT,
    )
    assert on_inference_port.status_code in (400, 404)
    assert read_torchserve_key(ep.key_file, "inference") == old

    new = rotate_torchserve_key(ep, "inference")
    assert new != old
    assert ep.key_file.stat().st_ino == inode  # rewritten in place
    assert read_torchserve_key(ep.key_file, "management") == management
    stale = _infer(ep, "/predictions/tiny/1", {"Authorization": f"Bearer {old}"})
    assert is_invalid_key_response(stale.status_code, stale.content)
    fresh = _infer(ep, "/predictions/tiny/1", {"Authorization": f"Bearer {new}"})
    assert fresh.status_code == 200


def _group_pids(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(pgid)], capture_output=True, text=True, timeout=10)
    return [int(line.split()[0]) for line in out.stdout.splitlines() if line.split()[1:2] != ["Z"]]


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_no_token_auth_and_stop_leaves_nothing(tmp_path: Path, model_store: Path) -> None:
    proc, ep = start_torchserve(tmp_path / "ts", model_store, [("tiny", "1", "tiny-1.mar")], token_auth=False)
    try:
        assert ep.key_file is None
        assert not (tmp_path / "ts" / "key_file.json").exists()
        resp = _infer(ep, "/predictions/tiny", {})
        assert resp.status_code == 200 and resp.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
        pids = _group_pids(proc.pgid)
        assert len(pids) >= 3  # launcher, JVM, one worker
        commands = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-g", str(proc.pgid)], capture_output=True, text=True, timeout=10
        ).stdout
        assert "org.pytorch.serve.ModelServer" in commands and "model_service_worker" in commands
    finally:
        proc.stop()
    assert not proc.group_alive()
    assert [p for p in pids if _pid_alive(p)] == []
    proc.stop()  # idempotent


def test_registration_failure_raises_with_log_and_stops(tmp_path: Path, model_store: Path) -> None:
    with pytest.raises(LocalStackError, match=r"(?s)version '7'.*log tail") as info:
        start_torchserve(tmp_path / "ts", model_store, [("tiny", "7", "tiny-1.mar")], token_auth=False)
    assert "Model Store" in str(info.value)  # the log tail is included
    with pytest.raises(LocalStackError, match="not found"):
        start_torchserve(tmp_path / "ts2", model_store, [("tiny", "1", "missing.mar")])


# ------------------------------------------------------------------ process hygiene (no backends)

CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from gateway.dev.localstack import Stack, spawn_process
work = Path({work!r})
mode = sys.argv[1]
procs = [
    spawn_process(f"p{{i}}", ["sh", "-c", "sleep 600 & sleep 600"], cwd=work, env={{"PATH": "/usr/bin:/bin"}},
                  log_path=work / f"p{{i}}.log")
    for i in range(2)
]
if mode == "stack":
    with Stack() as stack:
        for p in procs:
            stack.add(p)
        print(" ".join(str(p.pgid) for p in procs), flush=True)
        stack.wait()
else:
    print(" ".join(str(p.pgid) for p in procs), flush=True)
    time.sleep(600)
"""


def _groups_gone(pgids: list[int], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(not _group_pids(g) for g in pgids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize(
    ("mode", "sig", "code"),
    [("stack", signal.SIGTERM, 128 + signal.SIGTERM), ("stack", signal.SIGINT, None), ("bare", signal.SIGKILL, None)],
)
def test_children_never_outlive_the_parent(tmp_path: Path, mode: str, sig: signal.Signals, code: int | None) -> None:
    """Stack stops everything on SIGTERM/Ctrl-C; the watchdog covers a SIGKILLed parent."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(root=str(REPO_ROOT), work=str(tmp_path))))
    child = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        pgids = [int(x) for x in child.stdout.readline().split()]
        assert len(pgids) == 2 and all(_group_pids(g) for g in pgids)
        os.kill(child.pid, sig)
        rc = child.wait(timeout=20)
        if code is not None:
            assert rc == code
        assert _groups_gone(pgids, within=12.0)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


# ------------------------------------------------------------------ TF Serving (fake binary)

FAKE_TFS = r'''#!{python}
"""Minimal fake tensorflow_model_server: checks flags, reads models.config, serves model status."""
import argparse, http.server, json, os, re, sys

ap = argparse.ArgumentParser()
for flag in ("port", "rest_api_port", "file_system_poll_wait_seconds", "model_config_file_poll_wait_seconds"):
    ap.add_argument("--" + flag, type=int, required=True)
ap.add_argument("--model_config_file", required=True)
ap.add_argument("--monitoring_config_file", required=True)  # the deployments' file (its Prometheus path)
args = ap.parse_args()
assert "/monitoring/prometheus/metrics" in open(args.monitoring_config_file).read()
text = open(args.model_config_file).read()
models = dict(re.findall(r'name:\s*"([^"]+)"\s*base_path:\s*"([^"]+)"', text))
print("fake tfs", args, models, flush=True)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        m = re.fullmatch(r"/v1/models/([^/]+)", self.path)
        name = m.group(1) if m else None
        if name in models and os.path.isdir(models[name]):
            versions = sorted((int(d) for d in os.listdir(models[name]) if d.isdigit()), reverse=True)
            body = {{"model_version_status": [
                {{"version": str(v), "state": "AVAILABLE", "status": {{"error_code": "OK", "error_message": ""}}}}
                for v in versions]}}
            code = 200
        else:
            body, code = {{"error": "Could not find any versions of model %s" % name}}, 404
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

http.server.ThreadingHTTPServer(("127.0.0.1", args.rest_api_port), H).serve_forever()
'''

MODELS_CONFIG = """model_config_list {
  config {
    name: "half_plus"
    base_path: "/models/half_plus"
    model_platform: "tensorflow"
  }
  config {
    name: "other"
    base_path: "/models/other"
    model_platform: "tensorflow"
  }
}
"""


@pytest.fixture
def fake_tfs_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "tensorflow_model_server"
    exe.write_text(FAKE_TFS.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return exe


def test_start_tfserving_rewrites_config_and_waits(tmp_path: Path, fake_tfs_on_path: Path) -> None:
    template = tmp_path / "models.config"
    template.write_text(MODELS_CONFIG)
    root = tmp_path / "saved models"  # a space: the path is quoted in the text proto
    (root / "half_plus" / "3").mkdir(parents=True)
    (root / "other" / "1").mkdir(parents=True)
    grpc_port, rest_port = free_port(), free_port()
    proc, ep = start_tfserving(
        tmp_path / "tfs",
        template,
        root,
        ports=(grpc_port, rest_port),
        wait_models=["half_plus", "other"],
        startup_timeout=30,
    )
    try:
        assert ep.real_binary is True
        assert ep.rest_url == f"http://127.0.0.1:{rest_port}" and ep.grpc_target == f"127.0.0.1:{grpc_port}"
        written = (tmp_path / "tfs" / "models.config").read_text()
        assert f'base_path: "{root.resolve() / "half_plus"}"' in written
        assert "/models/" not in written.replace(str(root.resolve()), "")
        status = httpx.get(f"{ep.rest_url}/v1/models/half_plus", timeout=TIMEOUT).json()
        assert status["model_version_status"][0]["version"] == "3"
        assert "--file_system_poll_wait_seconds=1" in proc.log_path.read_text()
        # The deployments' monitoring config itself, no copy of it.
        assert f"--monitoring_config_file={TFSERVING_MONITORING_CONFIG}" in proc.log_path.read_text()
        assert ep.metrics_url == f"{ep.rest_url}/monitoring/prometheus/metrics"
    finally:
        proc.stop()
    assert not proc.group_alive()


def test_start_tfserving_times_out_with_log(tmp_path: Path, fake_tfs_on_path: Path) -> None:
    template = tmp_path / "models.config"
    template.write_text(MODELS_CONFIG)
    t0 = time.monotonic()
    with pytest.raises(LocalStackError, match=r"(?s)waiting for \['half_plus'\].*fake tfs"):
        # No version directory exists: the model never becomes AVAILABLE.
        start_tfserving(tmp_path / "tfs", template, tmp_path / "empty", wait_models=["half_plus"], startup_timeout=3)
    assert time.monotonic() - t0 < 15


# ------------------------------------------------------------------ TF Serving (stand-in or real binary)

MODEL_REPO_TF = REPO_ROOT / "model_repo" / "tfserving"

LABEL_FREE_CONFIG = """model_config_list {
  config { name: "affine" base_path: "/models/affine" model_platform: "tensorflow" model_version_policy { all {} } }
  config { name: "multi" base_path: "/models/multi" model_platform: "tensorflow" }
}
"""


def test_start_tfserving_standin_with_model_repo(tmp_path: Path) -> None:
    """The real TF stack (stand-in unless tensorflow_model_server is on PATH) over model_repo's SavedModels."""
    template = tmp_path / "models.config"
    template.write_text(LABEL_FREE_CONFIG)
    proc, ep = start_tfserving(tmp_path / "tfs", template, MODEL_REPO_TF, wait_models=["affine", "multi"])
    try:
        assert ep.real_binary == (shutil.which("tensorflow_model_server") is not None)
        status = httpx.get(f"{ep.rest_url}/v1/models/affine", timeout=TIMEOUT).json()
        assert {s["version"] for s in status["model_version_status"] if s["state"] == "AVAILABLE"} == {"1", "2"}
        pred = httpx.post(f"{ep.rest_url}/v1/models/affine:predict", json={"instances": [[1, 2, 3]]}, timeout=TIMEOUT)
        assert pred.status_code == 200 and len(pred.json()["predictions"][0]) == 3
    finally:
        proc.stop()
    assert not proc.group_alive()
