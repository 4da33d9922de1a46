"""The Dockerfile and its build context: hadolint (with its ShellCheck pass) and what the image must be. The
image itself is built only where a Docker engine runs (tests/deploy/test_docker_engine.py)."""

from __future__ import annotations

import importlib
import re
import subprocess
import tomllib
from pathlib import Path

from tests.deploy.tools import REPO, tool

DOCKERFILE = REPO / "Dockerfile"


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line.strip())
    return stages


def test_hadolint_is_clean() -> None:
    done = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_hadolint_catches_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install uvicorn\nUSER root\n")
    done = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert {"DL3006", "DL3013", "DL3042", "DL3002"} <= set(re.findall(r"DL\d{4}", done.stdout))


def test_final_stage_is_slim_python_non_root_health_checked_gateway_serve() -> None:
    stages = _stages()
    final = stages[-1]
    assert final[0] == "FROM ${PYTHON_IMAGE} AS gateway"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", DOCKERFILE.read_text(), re.M)
    copies = [line for line in final if line.startswith("COPY")]
    assert copies == ["COPY --from=build /opt/venv /opt/venv"]  # the virtualenv and nothing else
    assert not any("apt-get" in line or "pip" in line for line in final)  # no compiler, no build tools
    user = [line for line in final if line.startswith("USER")]
    assert user == ["USER 10001:10001"]
    health = next(line for line in final if line.startswith("HEALTHCHECK"))
    assert "/v2/health/ready" in health and "GATEWAY_PORT" in health
    assert final[-1] == 'ENTRYPOINT ["gateway", "serve"]'


def test_protos_are_compiled_in_the_build_stage_with_the_build_extras_pin() -> None:
    build = _stages()[0]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (pin,) = pyproject["project"]["optional-dependencies"]["build"]
    assert any(f"pip install --no-cache-dir {pin}" in line for line in build), pin
    generate = build.index("RUN /opt/protoc/bin/python -m gateway.protos")
    install = next(i for i, line in enumerate(build) if "pip --python /opt/venv/bin/python install" in line)
    assert build.index("COPY gateway ./gateway") < generate < install
    assert "grpcio-tools" not in " ".join(pyproject["project"]["dependencies"])


def test_the_builds_smoke_imports_exist() -> None:
    """The build stage imports these from the installed image: they must be the gateway's real modules."""
    line = next(line for line in _stages()[0] if "import gateway.cli" in line)
    modules = re.search(r'-c "import ([\w., ]+)"', line)
    assert modules
    for name in modules[1].split(","):
        importlib.import_module(name.strip())


def test_build_context_is_an_allow_list_without_generated_modules() -> None:
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "gateway", "model_repo/tfserving", "model_repo/torchserve"}
    assert {"gateway/protos/*_pb2.py", "gateway/protos/*_pb2.pyi", "**/__pycache__"} <= set(lines)
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M)
    copied = {path for paths in sources for path in paths.split()}
    assert copied <= allowed, copied - allowed
