"""TorchServe token auth through the gateway: the bearer key is sent, and a rotated or expired key is replaced
without a failed request."""

from __future__ import annotations

import json

import httpx

from gateway.dev import localstack

from .stack import Gateway

BODY = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


def infer(client: httpx.Client) -> httpx.Response:
    return client.post("/v2/models/scale/versions/1/infer", json=BODY)


def test_torchserve_refuses_requests_without_the_key(torchserve: localstack.TorchServeEndpoints) -> None:
    r = httpx.post(f"{torchserve.inference_url}/predictions/scale/1", json=BODY, timeout=10)
    assert r.status_code == 400 and r.json()["type"] == "InvalidKeyException"


def test_gateway_sends_the_inference_key(client: httpx.Client) -> None:
    r = infer(client)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [2, 4, 6]


def test_rotated_key_is_picked_up_from_the_key_file(gateway: Gateway, client: httpx.Client,
                                                    torchserve: localstack.TorchServeEndpoints) -> None:
    assert infer(client).status_code == 200
    old = localstack.read_torchserve_key(torchserve.key_file, "inference")  # type: ignore[arg-type]
    new = localstack.rotate_torchserve_key(torchserve, "inference")
    assert new != old
    refused = httpx.post(f"{torchserve.inference_url}/predictions/scale/1", json=BODY, timeout=10,
                         headers={"Authorization": f"Bearer {old}"})
    assert refused.status_code == 400
    for _ in range(3):
        assert infer(client).status_code == 200


def test_expired_key_is_renewed_with_the_api_key(client: httpx.Client,
                                                 torchserve: localstack.TorchServeEndpoints) -> None:
    """An expired key is refused while key_file.json still holds it: the gateway must rotate it itself.
    Simulated by rotating the key and then putting the file's old content back."""
    assert torchserve.key_file is not None
    assert infer(client).status_code == 200
    stale = torchserve.key_file.read_bytes()
    localstack.rotate_torchserve_key(torchserve, "inference")
    torchserve.key_file.write_bytes(stale)  # the file now names a key TorchServe refuses, like an expired one
    r = infer(client)
    assert r.status_code == 200, r.text
    assert localstack.read_torchserve_key(torchserve.key_file, "inference") != json.loads(stale)["inference"]["key"]
    # Management calls (status) use the management key, refreshed the same way.
    status = client.get("/v1/models/scale").json()["model_version_status"]
    assert {s["state"] for s in status} == {"AVAILABLE"}
