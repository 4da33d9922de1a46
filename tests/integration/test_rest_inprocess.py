"""The REST fronts in-process: the composition root's app driven through httpx's ASGI transport (no listener, no
subprocess), against the session's real TorchServe and TF Serving. The process-level tests cover the listeners;
these cover each front's answers, errors and measurement where a debugger or coverage can see them."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.server import GatewayApp
from gateway.settings import Settings

from .stack import Gateway

X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


@pytest.fixture()
async def app(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    settings = dataclasses.replace(Settings(), routes_file=gateway.routes_file, grpc_port=0, admin_port=0)
    gateway_app = GatewayApp(settings)
    await gateway_app.process.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_app), base_url="http://gw",
                                     timeout=30) as client:
            yield client
    finally:
        await gateway_app.process.stop()


async def test_every_front_reaches_both_backends(app: httpx.AsyncClient) -> None:
    v2 = await app.post("/v2/models/scale/versions/1/infer", json=X3)
    assert v2.status_code == 200 and v2.json()["outputs"][0]["data"] == [2, 4, 6], v2.text
    assert (v2.headers["x-model-name"], v2.headers["x-model-version"], v2.headers["x-backend"]) == (
        "scale", "1", "torchserve")
    tf = await app.post("/v1/models/affine/versions/1:predict", json={"instances": [[1, 2, 3]]})
    assert tf.json() == {"predictions": [[2.5, 3.0, 3.5]]}, tf.text
    cross = await app.post("/v1/models/scale/versions/2:predict", json={"instances": [[1, 2, 3]]})
    assert cross.json() == {"predictions": [[3.0, 6.0, 9.0]]}, cross.text
    for method in ("POST", "PUT"):
        ts = await app.request(method, "/predictions/affine/1", json=X3)
        assert ts.status_code == 200 and ts.json()["outputs"][0]["data"] == [2.5, 3.0, 3.5], ts.text
    metrics = (await app.get("/metrics")).text
    assert 'gateway_requests_total{backend="tfserving",code="200",model="affine",protocol="torchserve_rest"' in metrics


async def test_errors_come_back_in_each_fronts_protocol(app: httpx.AsyncClient) -> None:
    v2 = await app.post("/v2/models/nope/infer", json=X3)
    assert v2.status_code == 404 and set(v2.json()) == {"error"}
    tf = await app.post("/v1/models/affine/labels/nope:predict", json={"instances": [[1, 2, 3]]})
    assert tf.status_code == 400 and tf.json() == {"error": "Unrecognized servable version label: nope"}
    ts = await app.post("/predictions/nope", json=X3)
    assert ts.status_code == 404 and ts.json()["type"] == "ModelNotFoundException", ts.text
    down = await app.post("/v2/models/ghost/infer", json=X3)
    assert down.status_code == 503 and down.headers["x-model-name"] == "ghost", down.text
    wrong = await app.get("/v2/models/scale/infer")
    assert wrong.status_code == 405 and "error" in wrong.json()
