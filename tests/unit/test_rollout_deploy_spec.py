"""A rollout's `deploy` and `retire` are checked per backend kind when it starts (400 with the reason), before
anything is written: TorchServe takes an archive, TF Serving only a timeout and needs its models.config. And a TF
Serving version that a label in models.config points at is never retired (no backend needed: refused before any
call)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.control.backend_lifecycle import TFServingLifecycle, TorchServeLifecycle, lifecycle_class
from gateway.control.orchestrator import Orchestrator
from gateway.control.rollout_spec import RolloutSpec, plan_deploy
from gateway.control.rollout_state import StateStore
from gateway.errors import ControlError
from gateway.routes.schema import BackendConfig

TS = BackendConfig(name="ts", kind="torchserve", url="http://127.0.0.1:8080", management_url="http://127.0.0.1:8081")
TS_BARE = BackendConfig(name="ts_bare", kind="torchserve", url="http://127.0.0.1:8080")
TF = BackendConfig(name="tf", kind="tfserving", url="http://127.0.0.1:8501", grpc_target="127.0.0.1:8500",
                   model_config_file=Path("/srv/tf/models.config"))
TF_NO_FILE = BackendConfig(name="tf_nofile", kind="tfserving", url="http://127.0.0.1:8501",
                           grpc_target="127.0.0.1:8500")
TF_NO_GRPC = BackendConfig(name="tf_rest", kind="tfserving", url="http://127.0.0.1:8501",
                           model_config_file=Path("/srv/tf/models.config"))


def test_lifecycle_per_kind() -> None:
    assert lifecycle_class(TS) is TorchServeLifecycle
    assert lifecycle_class(TF) is TFServingLifecycle


def test_torchserve_deploy_spec() -> None:
    assert plan_deploy(None, TS) is None
    assert plan_deploy({"archive": " scale-2.mar "}, TS) == {"archive": "scale-2.mar", "workers": 1,
                                                             "timeout_s": 120.0}
    assert plan_deploy({"archive": "a.mar", "workers": 2, "timeout_s": 5}, TS) == {
        "archive": "a.mar", "workers": 2, "timeout_s": 5.0}
    for bad, message in (({}, "deploy.archive: Field required"),
                         ({"archive": "a.mar", "workers": 0}, "deploy.workers: Input should be greater than or "
                                                              "equal to 1 (got 0)"),
                         ({"archive": "a.mar", "timeout_s": 0}, "deploy.timeout_s: Input should be greater than 0"),
                         ({"archive": "a.mar", "timeout_s": True}, "deploy.timeout_s: Input should be a valid number"),
                         ({"archive": "a.mar", "colour": 1}, "deploy.colour: unknown field"),
                         ("a.mar", "deploy must be an object")):
        with pytest.raises(ControlError) as info:
            plan_deploy(bad, TS, "version 2 of 'scale'")
        assert info.value.http_status == 400 and message in str(info.value), (bad, str(info.value))
        assert "version 2 of 'scale' is on torchserve backend 'ts'" in str(info.value)


def test_an_archive_outside_the_model_store_is_refused_before_any_backend_is_asked(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "scale-2.mar").write_bytes(b"PK")
    (tmp_path / "secret.mar").write_bytes(b"PK")
    (store / "link.mar").symlink_to(tmp_path / "secret.mar")
    with_store = BackendConfig(name="ts", kind="torchserve", url="http://127.0.0.1:1",
                               management_url="http://127.0.0.1:2", model_store=store)
    assert plan_deploy({"archive": "scale-2.mar"}, with_store) == {"archive": "scale-2.mar", "workers": 1,
                                                                   "timeout_s": 120.0}
    assert plan_deploy({"archive": str(store / "scale-2.mar")}, with_store)["archive"] == "scale-2.mar"
    assert plan_deploy({"archive": "https://models.example/scale-2.mar"}, TS)["archive"].startswith("https://")
    for backend, archive, message in (
            (TS, "../secret.mar", "without '..'"), (TS, "sub/../../secret.mar", "without '..'"),
            (TS, "/etc/passwd", "name a file of TorchServe's model store"),
            (TS, "a\\b.mar", "without '..'"),
            (with_store, "../secret.mar", "without '..'"), (with_store, str(tmp_path / "secret.mar"), "outside"),
            (with_store, "link.mar", "outside the model store"), (with_store, "missing.mar", "no such archive")):
        with pytest.raises(ControlError) as info:
            plan_deploy({"archive": archive}, backend, "version 2 of 'scale'")
        assert info.value.http_status == 400 and message in info.value.message, (archive, info.value.message)


def test_tfserving_deploy_spec() -> None:
    assert plan_deploy({}, TF) == {"timeout_s": 120.0}
    assert plan_deploy({"timeout_s": 30}, TF) == {"timeout_s": 30.0}
    for bad, message in (({"archive": "affine-2.mar"}, "deploy.archive: TorchServe only; a TF Serving target loads "
                                                       "the version from its directory under the model's base_path"),
                         ({"archive": "a", "workers": 2}, "deploy.archive and deploy.workers: TorchServe only"),
                         ({"timeout_s": 7200}, "deploy.timeout_s: Input should be less than or equal to 3600"),
                         ({"timeout_s": float("nan")}, "deploy.timeout_s: Input should be a finite number"),
                         ({"colour": 1}, "deploy.colour: unknown field"),
                         ([], "deploy must be an object {\"timeout_s\"?} for a TF Serving target")):
        with pytest.raises(ControlError) as info:
            plan_deploy(bad, TF, "version 2 of 'affine'")
        assert info.value.http_status == 400 and message in str(info.value), (bad, str(info.value))


def test_backends_without_what_the_lifecycle_needs() -> None:
    with pytest.raises(ControlError, match=r"deploy of v needs a management_url on TorchServe backend 'ts_bare'"):
        plan_deploy({"archive": "a.mar"}, TS_BARE, "v")
    with pytest.raises(ControlError) as info:
        plan_deploy({}, TF_NO_FILE, "v")
    assert "deploy of v needs TF Serving backend 'tf_nofile' to have backends.tf_nofile.model_config_file" \
        in str(info.value)
    assert "cannot reload TF Serving without the whole model list" in str(info.value)
    with pytest.raises(ControlError, match=r"backends\.tf_rest\.grpc_target"):
        plan_deploy({}, TF_NO_GRPC, "v")


ROUTES = """\
revision: 1
backends:
  tf: {kind: tfserving, url: "http://127.0.0.1:8501", grpc_target: "127.0.0.1:8500",
       model_config_file: "%(config)s"}
  tf_nofile: {kind: tfserving, url: "http://127.0.0.1:8501", grpc_target: "127.0.0.1:8500"}
  ts: {kind: torchserve, url: "http://127.0.0.1:8080", management_url: "http://127.0.0.1:8081"}
models:
  affine:
    default_version: 1
    versions:
      1: {backend: tf, model: affine, version: 1}
      2: {backend: tf, model: affine, version: 2}
  bare:
    default_version: 1
    versions:
      1: {backend: tf_nofile, model: bare, version: 1}
      2: {backend: tf_nofile, model: bare, version: 2}
  mixed:
    default_version: 1
    versions:
      1: {backend: tf_nofile, model: mixed, version: 1}
      2: {backend: ts, model: mixed, version: "2"}
"""


@pytest.fixture()
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES % {"config": tmp_path / "models.config"})
    return path


@pytest.mark.parametrize(("spec", "message"), [
    ({"model": "affine", "deploy": {"archive": "affine-2.mar"}},
     "deploy.archive: TorchServe only; a TF Serving target loads the version from its directory"),
    ({"model": "bare", "deploy": {}}, "deploy of version 2 of 'bare' needs TF Serving backend 'tf_nofile' to have "
                                      "backends.tf_nofile.model_config_file"),
    ({"model": "bare", "retire": True}, "retire of version 1 of 'bare' needs TF Serving backend 'tf_nofile'"),
    ({"model": "mixed", "deploy": {"timeout_s": 5}}, "deploy.archive: Field required"),
    ({"model": "mixed", "deploy": {"archive": "m.mar"}, "retire": True},
     "retire of version 1 of 'mixed' needs TF Serving backend 'tf_nofile' to have"),
])
async def test_start_refuses_per_kind_and_writes_nothing(routes: Path, spec: dict[str, Any], message: str) -> None:
    before = routes.read_text()
    orch = Orchestrator(routes, lambda: "")
    try:
        with pytest.raises(ControlError) as info:
            await orch.start(RolloutSpec.parse({"to_version": 2, "steps": [100], **spec}))
        assert info.value.http_status == 400 and message in str(info.value), str(info.value)
        assert routes.read_text() == before
        assert not StateStore(routes).dir.exists()  # no rollout state either
    finally:
        await orch.close()


MODELS_CONFIG = """\
model_config_list {
  config {
    name: "affine" base_path: "/models/affine" model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
  }
}
"""


async def test_a_labelled_tf_version_is_not_retired(routes: Path) -> None:
    models_config = routes.parent / "models.config"
    models_config.write_text(MODELS_CONFIG)
    orch = Orchestrator(routes, lambda: "", check_interval_s=0.05)
    try:
        await orch.start(RolloutSpec.parse({"model": "affine", "to_version": 2, "steps": [100], "dwell_s": 0,
                                            "retire": True}))
        async with asyncio.timeout(10):
            while (ro := await orch.get("affine")).phase not in ("retired", "retire_failed", "retire_skipped"):
                await asyncio.sleep(0.02)
    finally:
        await orch.close()
    assert ro.state == "promoted" and ro.phase == "retire_skipped", ro.history[-1]
    assert [h["event"] for h in ro.history] == ["started", "promoted", "retire_skipped"]
    assert f"label(s) stable of affine in {models_config} point at version 1" in ro.history[-1]["why"]
    assert models_config.read_text() == MODELS_CONFIG  # untouched
