"""Fixtures for the TF Serving contract tests (tests/contract/test_tfserving_*.py).

A TF-Serving-compatible server is started per scenario: the real ``tensorflow_model_server`` when it
is on PATH, else ``python -m tfserving_standin`` with the same argv. Each runs on free ports over
tiny SavedModels built here (an affine model in two versions, and a multi-dtype model with extra
signatures), copied into per-server directories so tests can add and remove version directories.

Every network call has a timeout; servers are stopped with SIGTERM (then SIGKILL) at the end.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_BINARY = shutil.which("tensorflow_model_server")
STARTUP_TIMEOUT_S = 90.0
HTTP_TIMEOUT_S = 10.0
GRPC_TIMEOUT_S = 10.0
MAX_MESSAGE = 2**31 - 1
GRPC_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]


# ----------------------------------------------------------------------------- models


def _build_models(root: Path) -> None:
    """affine/1 (y = 0.5x + 2), affine/2 (y = 0.5x + 3) and multi/1, as TF2 SavedModels."""
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self, bias: float) -> None:
            super().__init__()
            self.scale = tf.Variable(0.5)
            self.bias = tf.Variable(bias)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": self.scale * x + self.bias}

    for version, bias in ((1, 2.0), (2, 3.0)):
        module = Affine(bias)
        tf.saved_model.save(module, str(root / "affine" / str(version)), signatures={"serving_default": module.serve})

    def _feature(inputs: tf.Tensor) -> tf.Tensor:
        parsed = tf.io.parse_example(inputs, {"f": tf.io.FixedLenFeature([1], tf.float32)})
        return parsed["f"][:, 0]

    class Multi(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = tf.Variable(tf.reshape(tf.range(12, dtype=tf.float32), [4, 3]) / 10.0)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 2], tf.float32, name="a"),
                tf.TensorSpec([None, 2], tf.int64, name="b"),
                tf.TensorSpec([None], tf.string, name="s"),
            ]
        )
        def serve(self, a: tf.Tensor, b: tf.Tensor, s: tf.Tensor) -> dict[str, tf.Tensor]:
            total = tf.reduce_sum(a, axis=1)
            return {
                "total": total,
                "b_doubled": b * 2,
                "text": tf.strings.upper(s),
                "positive": total > 0,
                "s_bytes": s,
            }

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def matmul(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.matmul(x, self.weights)}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="a")])
        def inconsistent(self, a: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"per_row": tf.reduce_sum(a, axis=1), "count": tf.reshape(tf.shape(a)[0], [1])}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float16, name="h")])
        def half(self, h: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.cast(h, tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"outputs": _feature(inputs) * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            p = tf.sigmoid(_feature(inputs))
            classes = tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(inputs)[0], 1])
            return {"scores": tf.stack([1.0 - p, p], axis=1), "classes": classes}

    module = Multi()
    tf.saved_model.save(
        module,
        str(root / "multi" / "1"),
        signatures={
            "serving_default": module.serve,
            "matmul": module.matmul,
            "inconsistent": module.inconsistent,
            "half": module.half,
            "regress": module.regress,
            "classify": module.classify,
        },
    )


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tf_models")
    _build_models(root)
    return root


def copy_versions(src: Path, dst: Path, versions: Sequence[int]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for version in versions:
        shutil.copytree(src / str(version), dst / str(version))
    return dst


def add_version_atomically(src: Path, base: Path, version: int) -> None:
    """Copy under a non-numeric name (ignored by the poller), then rename into place."""
    staging = base / f".staging-{version}"
    shutil.copytree(src, staging)
    os.rename(staging, base / str(version))


def write_warmup(version_dir: Path, input_name: str = "x") -> None:
    """assets.extra/tf_serving_warmup_requests: one PredictionLog replayed at load time."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    record = prediction_log_pb2.PredictionLog()
    request = record.predict_log.request
    request.model_spec.name = "warm"
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(np.ones((1, 3), np.float32)))
    extra = version_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        writer.write(record.SerializeToString())


# ----------------------------------------------------------------------------- config text


@dataclasses.dataclass
class ModelEntry:
    name: str
    base_path: Path
    policy: str = ""  # text of model_version_policy's body, e.g. "all {}"
    labels: dict[str, int] = dataclasses.field(default_factory=dict)

    def text(self) -> str:
        parts = [f'name: "{self.name}"', f'base_path: "{self.base_path}"', 'model_platform: "tensorflow"']
        if self.policy:
            parts.append(f"model_version_policy {{ {self.policy} }}")
        for label, version in self.labels.items():
            parts.append(f'version_labels {{ key: "{label}" value: {version} }}')
        return "config { " + " ".join(parts) + " }"


def config_text(entries: Sequence[ModelEntry]) -> str:
    return "model_config_list {\n" + "\n".join("  " + e.text() for e in entries) + "\n}\n"


def config_proto(entries: Sequence[ModelEntry]) -> object:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(config_text(entries), model_server_config_pb2.ModelServerConfig())


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command() -> list[str]:
    if REAL_BINARY:
        return [REAL_BINARY]
    return [sys.executable, "-m", "tfserving_standin"]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@dataclasses.dataclass
class TFServer:
    proc: subprocess.Popen
    grpc_port: int
    rest_port: int
    log_path: Path
    workdir: Path

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return int(self.proc.returncode)


def launch(workdir: Path, args: Sequence[str], grpc_port: int | None = None) -> TFServer:
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port = grpc_port or free_port()
    rest_port = free_port()
    log_path = workdir / "server.log"
    argv = [*server_command(), f"--port={grpc_port}", f"--rest_api_port={rest_port}", *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=server_env())
    return TFServer(proc, grpc_port, rest_port, log_path, workdir)


def wait_ready(server: TFServer, models: Sequence[str], timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Waits until every model reports an AVAILABLE version over REST."""
    deadline = time.monotonic() + timeout
    pending = list(models)
    with httpx.Client(timeout=2.0) as client:
        while pending:
            if server.proc.poll() is not None:
                raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log_text()[-4000:]}")
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"server not ready after {timeout}s (waiting for {pending}):\n{server.log_text()[-4000:]}"
                )
            try:
                response = client.get(f"{server.rest}/v1/models/{pending[0]}")
                states = [v["state"] for v in response.json().get("model_version_status", [])]
                if response.status_code == 200 and "AVAILABLE" in states:
                    pending.pop(0)
                    continue
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)


def start_server(workdir: Path, args: Sequence[str], models: Sequence[str]) -> TFServer:
    server = launch(workdir, args)
    try:
        wait_ready(server, models)
    except BaseException:
        server.stop()
        raise
    return server


def run_to_exit(workdir: Path, args: Sequence[str], timeout: float = 60.0) -> tuple[int, str]:
    """Runs a server expected to exit on its own (startup failures); returns (status, output)."""
    server = launch(workdir, args)
    try:
        server.proc.wait(timeout=timeout)
    finally:
        code = server.stop()
    return code, server.log_text()


def grpc_channel(server: TFServer) -> grpc.Channel:
    return grpc.insecure_channel(server.grpc_target, options=GRPC_CHANNEL_OPTIONS)


# ----------------------------------------------------------------------------- scenarios


@dataclasses.dataclass
class Scenario:
    server: TFServer
    root: Path
    entries: list[ModelEntry]
    config_path: Path
    channel: grpc.Channel

    @property
    def rest(self) -> str:
        return self.server.rest


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=HTTP_TIMEOUT_S) as client:
        yield client


def _scenario(root: Path, entries: list[ModelEntry], extra_args: Sequence[str], wait: Sequence[str]) -> Scenario:
    config_path = root / "models.config"
    config_path.write_text(config_text(entries))
    server = start_server(root / "server", [f"--model_config_file={config_path}", *extra_args], wait)
    return Scenario(server, root, entries, config_path, grpc_channel(server))


@pytest.fixture(scope="session")
def tfs(saved_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """Read-only scenario: version policies over affine (v1, v2), the multi model, metrics on."""
    root = tmp_path_factory.mktemp("tfs_static")
    affine = copy_versions(saved_models / "affine", root / "models" / "affine", [1, 2])
    multi = copy_versions(saved_models / "multi", root / "models" / "multi", [1])
    (affine / "v3").mkdir()  # children that do not parse as integers are not versions
    (affine / "README").write_text("not a version\n")
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n')
    entries = [
        ModelEntry("affine", affine),
        ModelEntry("affine_all", affine, "all {}"),
        ModelEntry("affine_latest2", affine, "latest { num_versions: 2 }"),
        ModelEntry("affine_specific", affine, "specific { versions: 1 }"),
        ModelEntry("multi", multi),
    ]
    scenario = _scenario(root, entries, [f"--monitoring_config_file={monitoring}"], [e.name for e in entries])
    yield scenario
    scenario.channel.close()
    scenario.server.stop()


@pytest.fixture(scope="session")
def dyn(saved_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """Mutable scenario: file-system polling, failing loads, reloads and labels (strict label rules)."""
    root = tmp_path_factory.mktemp("tfs_dynamic")
    models = root / "models"
    entries = [
        ModelEntry("poll", copy_versions(saved_models / "affine", models / "poll", [1])),
        ModelEntry("labeled", copy_versions(saved_models / "affine", models / "labeled", [1, 2]), "all {}"),
        ModelEntry("fails", copy_versions(saved_models / "affine", models / "fails", [1])),
        ModelEntry("existing", copy_versions(saved_models / "affine", models / "existing", [1, 2])),
        ModelEntry("revert", copy_versions(saved_models / "affine", models / "revert", [1, 2])),
        ModelEntry("warm", copy_versions(saved_models / "affine", models / "warm", [1])),
    ]
    write_warmup(models / "warm" / "1")
    scenario = _scenario(
        root,
        entries,
        ["--file_system_poll_wait_seconds=1", "--max_num_load_retries=0"],
        [e.name for e in entries],
    )
    yield scenario
    scenario.channel.close()
    scenario.server.stop()


@pytest.fixture(scope="session")
def relaxed(saved_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """Labels in the startup config, --allow_version_labels_for_unavailable_models, config-file polling.

    Load retries keep TF Serving's defaults (5 retries, one minute apart).
    """
    root = tmp_path_factory.mktemp("tfs_relaxed")
    entries = [
        ModelEntry(
            "canary",
            copy_versions(saved_models / "affine", root / "models" / "canary", [1, 2]),
            "all {}",
            {"stable": 1, "canary": 2},
        ),
        ModelEntry("retrying", copy_versions(saved_models / "affine", root / "models" / "retrying", [1]), "all {}"),
    ]
    scenario = _scenario(
        root,
        entries,
        [
            "--allow_version_labels_for_unavailable_models=true",
            "--model_config_file_poll_wait_seconds=1",
            "--file_system_poll_wait_seconds=1",
        ],
        ["canary", "retrying"],
    )
    yield scenario
    scenario.channel.close()
    scenario.server.stop()


@pytest.fixture(scope="session")
def tfkit() -> object:
    """Helpers for tests that build their own configs or processes."""
    import types

    return types.SimpleNamespace(
        ModelEntry=ModelEntry,
        config_text=config_text,
        config_proto=config_proto,
        copy_versions=copy_versions,
        add_version_atomically=add_version_atomically,
        write_warmup=write_warmup,
        launch=launch,
        wait_ready=wait_ready,
        start_server=start_server,
        run_to_exit=run_to_exit,
        grpc_channel=grpc_channel,
        real_binary=REAL_BINARY,
        grpc_timeout=GRPC_TIMEOUT_S,
    )
