"""Fixtures of the TF Serving contract tests (tests/contract/test_tfserving_*.py): one TF-Serving-compatible server
per scenario (helpers in tfkit.py), on free ports over tiny SavedModels built here, copied into per-server
directories so tests can add and remove version directories. Every network call has a timeout; servers are
stopped with SIGTERM (then SIGKILL) at the end."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import httpx
import pytest

from . import tfkit
from .tfkit import (
    HTTP_TIMEOUT_S,
    ModelEntry,
    TFServer,
    config_text,
    copy_versions,
    grpc_channel,
    start_server,
    write_warmup,
)


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tf_models")
    tfkit.build_models(root)
    return root


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

