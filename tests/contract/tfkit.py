"""Helpers of the TF Serving contract tests: tiny SavedModels built here, models.config text, and servers started
through the project's one launcher (gateway/dev/localstack.py): the official image when TFSERVING_DOCKER_IMAGE names
one (where a Docker engine runs), the real ``tensorflow_model_server`` when it is on PATH, else ``python -m
tfserving_standin`` with the same argv."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc

from gateway.dev import localstack

REAL_BINARY = shutil.which("tensorflow_model_server") or os.environ.get("TFSERVING_DOCKER_IMAGE") or None
STARTUP_TIMEOUT_S = 90.0
HTTP_TIMEOUT_S = 10.0
GRPC_TIMEOUT_S = 10.0
MAX_MESSAGE = 2**31 - 1
GRPC_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
real_binary = REAL_BINARY
grpc_timeout = GRPC_TIMEOUT_S


# ----------------------------------------------------------------------------- models


def build_models(root: Path) -> None:
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


@dataclasses.dataclass
class TFServer:
    process: localstack.ManagedProcess
    endpoints: localstack.TFServingEndpoints

    @property
    def rest(self) -> str:
        return self.endpoints.rest_url

    @property
    def grpc_target(self) -> str:
        return self.endpoints.grpc_target

    @property
    def grpc_port(self) -> int:
        return int(self.grpc_target.rpartition(":")[2])

    @property
    def rest_port(self) -> int:
        return int(self.rest.rpartition(":")[2])

    def log_text(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """One SIGTERM to the server, as an orchestrator sends it, and its exit status; what is still running
        after ``timeout`` is stopped by the launcher (its group TERMed again, then KILLed)."""
        popen = self.process.popen
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=timeout)
        self.process.stop(timeout=5.0)
        return int(popen.returncode)


def launch(workdir: Path, args: Sequence[str]) -> TFServer:
    return TFServer(*localstack.launch_tfserving(workdir, args))


def start_server(workdir: Path, args: Sequence[str], models: Sequence[str]) -> TFServer:
    """A server whose ``models`` all have an AVAILABLE version (stopped, with its log in the error, otherwise)."""
    server = launch(workdir, args)
    try:
        localstack.wait_tfserving_ready(server.process, server.endpoints, models, STARTUP_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server


def run_to_exit(workdir: Path, args: Sequence[str], timeout: float = 60.0) -> tuple[int, str]:
    """Runs a server expected to exit on its own (startup failures); returns (status, output)."""
    server = launch(workdir, args)
    try:
        server.process.popen.wait(timeout=timeout)
    finally:
        code = server.stop()
    return code, server.log_text()


def grpc_channel(server: TFServer) -> grpc.Channel:
    return grpc.insecure_channel(server.grpc_target, options=GRPC_CHANNEL_OPTIONS)
