"""The TorchServe image of docker compose and the Helm chart (deploy/torchserve/Dockerfile): the official image plus
what model_repo's handler imports (ONNX Runtime, Pillow), hadolint clean; and the handler itself, which runs on that
image's Python (3.9), checked by vermin. The image is built only where a Docker engine runs
(tests/deploy/test_docker_engine.py, which also checks the image's Python against HANDLER_PYTHON)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.deploy.tools import REPO, tool

DOCKERFILE = REPO / "deploy" / "torchserve" / "Dockerfile"
HANDLER = REPO / "model_repo" / "handlers" / "v2_handler.py"
#: The Python of the official pytorch/torchserve 0.12.0 images (TorchServe's docker/build_image.sh builds them with
#: its default PYTHON_VERSION=3.9); the handler must run on it.
HANDLER_PYTHON = "3.9"
OFFICIAL = "pytorch/torchserve"


def vermin(path: Path, target: str = HANDLER_PYTHON) -> subprocess.CompletedProcess[str]:
    # union-types: `int | float` at run time is the 3.10 feature most likely to slip in (vermin needs asking).
    return subprocess.run([tool("vermin"), "--no-tips", "--violations", "--feature", "union-types",
                           f"--target={target}-", str(path)], capture_output=True, text=True, timeout=120)


def test_handler_runs_on_the_official_images_python() -> None:
    done = vermin(HANDLER)
    assert done.returncode == 0, done.stdout + done.stderr


def test_vermin_catches_what_python_3_9_lacks(tmp_path: Path) -> None:
    newer = tmp_path / "newer.py"
    newer.write_text("def f(a, b, x):\n    return list(zip(a, b, strict=True)), isinstance(x, int | float)\n")
    done = vermin(newer)
    assert done.returncode != 0
    assert "'zip(strict)' requires" in done.stdout and "union types as `X | Y`" in done.stdout, done.stdout


def test_hadolint_is_clean() -> None:
    done = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_image_is_the_official_one_plus_pinned_onnxruntime_and_pillow() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG TORCHSERVE_IMAGE=(\S+)$", text, re.M)
    assert base and base[1] == f"{OFFICIAL}:0.12.0-cpu"
    instructions = [line for line in re.sub(r"\\\n\s*", " ", text).splitlines() if line and not line.startswith("#")]
    assert [line.split()[0] for line in instructions] == ["ARG", "FROM", "RUN"]  # nothing copied in, no USER root
    assert instructions[1] == "FROM ${TORCHSERVE_IMAGE}"
    pins = dict(re.findall(r"\b(onnxruntime|pillow)==([\d.]+)", instructions[2]))
    assert set(pins) == {"onnxruntime", "pillow"}, instructions[2]
    assert "--no-cache-dir" in instructions[2] and "import onnxruntime, PIL.Image" in instructions[2]
    # What the handler imports beyond torch, numpy and TorchServe's own `ts` is exactly what the image adds.
    imported = set(re.findall(r"^\s*(?:import|from) (\w+)", HANDLER.read_text(), re.M))
    stdlib = {"__future__", "io", "json", "logging", "math", "os", "collections", "typing"}
    assert imported - stdlib == {"numpy", "torch", "ts", "onnxruntime", "PIL"}, imported - stdlib
