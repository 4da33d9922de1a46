"""The rollout orchestrator's backend control APIs against real backends: our own TorchServe (token auth on)
and our own TF Serving (or its stand-in), so that registering, retiring and reloading touch nothing shared."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.control.backend_control import DeployFailed, ModelSpecConfig, TFServingControl, TorchServeControl
from gateway.dev import localstack
from gateway.dev.devstack import MODEL_REPO
from gateway.errors import BackendTimeout, BackendUnavailable
from gateway.routes.schema import BackendConfig

X = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
AFFINE_V1 = [2.5, 3.0, 3.5]
AFFINE_V2 = [3.5, 4.0, 4.5]


@pytest.fixture(scope="module")
def ts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localstack.TorchServeEndpoints]:
    proc, endpoints = localstack.start_torchserve(
        tmp_path_factory.mktemp("ts_control"), MODEL_REPO / "torchserve", [("scale", "1", "scale-1.mar")],
        token_auth=True)
    yield endpoints
    proc.stop()


@pytest.fixture(scope="module")
def tf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[localstack.TFServingEndpoints, Path]]:
    root = tmp_path_factory.mktemp("tf_control")
    models = root / "models"
    shutil.copytree(MODEL_REPO / "tfserving" / "affine", models / "affine")
    template = root / "models.config.template"
    template.write_text('model_config_list { config { name: "affine" base_path: "/models/affine" '
                        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }\n')
    # Read the config file once: a polled file would undo the reloads.
    proc, endpoints = localstack.start_tfserving(
        root / "server", template, models, wait_models=("affine",),
        extra_args=["--model_config_file_poll_wait_seconds=0"])
    yield endpoints, models / "affine"
    proc.stop()


def ts_control(ts: localstack.TorchServeEndpoints) -> TorchServeControl:
    return TorchServeControl(BackendConfig(name="ts", kind="torchserve", url=ts.inference_url,
                                           management_url=ts.management_url, token_file=ts.key_file))


async def test_torchserve_deploy_drain_retire(ts: localstack.TorchServeEndpoints) -> None:
    control = ts_control(ts)
    try:
        assert await control.versions("scale") == ["1"]
        await control.register("scale", "2", "scale-2.mar", timeout_s=60)
        await control.wait_ready("scale", "2", timeout_s=30)
        await control.register("scale", "2", "scale-2.mar", timeout_s=60)  # 409 with READY workers: fine
        assert sorted(await control.versions("scale")) == ["1", "2"]
        await control.set_default("scale", "2")
        assert await control.pending("scale", "1") == 0

        counts = iter([1, 1, 0])  # the gateway still has one request in flight on v1, then none
        seen: list[int] = []

        async def inflight() -> int:
            seen.append(next(counts, 0))
            return seen[-1]

        await control.drain("scale", "1", inflight, timeout_s=10)
        assert seen == [1, 1, 0]
        await control.unregister("scale", "1")
        assert await control.versions("scale") == ["2"]
        await control.unregister("scale", "1")  # already gone: fine
        with pytest.raises(DeployFailed, match="not registered"):
            await control.wait_ready("scale", "1", timeout_s=5)

        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(f"{ts.inference_url}/predictions/scale/2", json=X, headers=ts.auth_headers("inference"))
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"] == [3.0, 6.0, 9.0]
            gone = await http.post(f"{ts.inference_url}/predictions/scale/1", json=X,
                                   headers=ts.auth_headers("inference"))
            assert gone.status_code == 404, gone.text
    finally:
        await control.close()


async def one_in_flight() -> int:
    return 1


async def test_torchserve_drain_times_out_while_requests_are_in_flight(ts: localstack.TorchServeEndpoints) -> None:
    control = ts_control(ts)
    try:
        versions = await control.versions("scale")
        started = time.monotonic()
        with pytest.raises(BackendTimeout, match=r"did not drain within 0.3s \(0 queued in TorchServe, 1 in flight"):
            await control.drain("scale", versions[0], one_in_flight, timeout_s=0.3)
        assert time.monotonic() - started < 3
    finally:
        await control.close()


async def test_torchserve_failed_registration_carries_torchserve_message(ts: localstack.TorchServeEndpoints) -> None:
    control = ts_control(ts)
    try:
        with pytest.raises(DeployFailed) as info:
            await control.register("ghost", "1", "no-such-archive.mar", timeout_s=30)
        print(info.value.message)
        assert "no-such-archive.mar" in info.value.message and "(404)" in info.value.message, info.value.message
        assert info.value.http_status == 502
        assert await control.versions("ghost") == []
    finally:
        await control.close()


async def test_torchserve_refused_key_is_refreshed(ts: localstack.TorchServeEndpoints) -> None:
    control = ts_control(ts)
    try:
        await control.versions("scale")  # the key is cached now
        localstack.rotate_torchserve_key(ts, "management")
        assert await control.versions("scale")  # refused once, re-read from key_file.json, retried
    finally:
        await control.close()


async def test_torchserve_unreachable_is_bounded() -> None:
    port = localstack.free_port()
    control = TorchServeControl(BackendConfig(name="down", kind="torchserve", url=f"http://127.0.0.1:{port}",
                                              management_url=f"http://127.0.0.1:{port}", connect_timeout_s=1))
    try:
        with pytest.raises(BackendUnavailable, match="unreachable"):
            await control.versions("scale")
    finally:
        await control.close()


def _affine(base: Path, *versions: int) -> list[ModelSpecConfig]:
    return [ModelSpecConfig(name="affine", base_path=str(base), versions=versions)]


async def _predict_until(http: httpx.AsyncClient, url: str, stop: asyncio.Event, failures: list[str],
                         answers: set[tuple[float, ...]]) -> None:
    while not stop.is_set():
        r = await http.post(f"{url}/v1/models/affine:predict", json={"instances": [[1, 2, 3]]})
        if r.status_code != 200:
            failures.append(f"{r.status_code} {r.text}")
        else:
            answers.add(tuple(r.json()["predictions"][0]))


async def test_tfserving_reload_moves_versions_without_failed_requests(
        tf: tuple[localstack.TFServingEndpoints, Path]) -> None:
    endpoints, base = tf
    control = TFServingControl(BackendConfig(name="tf", kind="tfserving", url=endpoints.rest_url,
                                             grpc_target=endpoints.grpc_target))
    stop, failures, answers = asyncio.Event(), list[str](), set[tuple[float, ...]]()
    try:
        assert await control.status("affine") == {"1": "AVAILABLE"}
        assert await control.status("nope") == {}
        async with httpx.AsyncClient(timeout=10) as http:
            clients = [asyncio.create_task(_predict_until(http, endpoints.rest_url, stop, failures, answers))
                       for _ in range(4)]
            await control.reload(_affine(base, 1, 2))
            await control.wait_available("affine", "2", timeout_s=30)
            await control.reload(_affine(base, 2))
            deadline = time.monotonic() + 30
            while "1" in (status := await control.status("affine")) and status["1"] != "END":
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*clients)
            # Latest moved from v1 to v2 while the clients ran, and none of their requests failed.
            assert failures == []
            assert answers == {tuple(AFFINE_V1), tuple(AFFINE_V2)}
            assert (await control.status("affine"))["2"] == "AVAILABLE"
            r = await http.post(f"{endpoints.rest_url}/v1/models/affine/versions/2:predict",
                                json={"instances": [[1, 2, 3]]})
            assert r.json()["predictions"][0] == pytest.approx(AFFINE_V2)
            r = await http.post(f"{endpoints.rest_url}/v1/models/affine/versions/1:predict",
                                json={"instances": [[1, 2, 3]]})
            assert r.status_code == 404, r.text
    finally:
        stop.set()
        await control.close()


async def test_tfserving_refusals_and_timeouts(tf: tuple[localstack.TFServingEndpoints, Path]) -> None:
    endpoints, base = tf
    control = TFServingControl(BackendConfig(name="tf", kind="tfserving", url=endpoints.rest_url,
                                             grpc_target=endpoints.grpc_target))
    try:
        current = _affine(base, 2)
        # A label on a version that is not loaded: TF Serving refuses the whole config.
        labeled = [ModelSpecConfig(name="affine", base_path=str(base), versions=(2,), labels={"canary": 7})]
        with pytest.raises(DeployFailed, match="not currently available"):
            await control.reload(labeled)
        await control.reload(current)
        started = time.monotonic()
        with pytest.raises(BackendTimeout, match=r"version 9 not AVAILABLE after 0\.3s"):
            await control.wait_available("affine", "9", timeout_s=0.3)
        assert time.monotonic() - started < 3
    finally:
        await control.close()
