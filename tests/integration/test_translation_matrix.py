"""Every front protocol reaches models on both backend kinds: each cell of the README's translation matrix,
against real TorchServe and TF Serving (real binary or the stand-in)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

X = [[1.0, 2.0, 3.0], [-4.0, 0.5, 10.0]]
AFFINE = {"1": lambda x: 0.5 * np.asarray(x) + 2, "2": lambda x: 0.5 * np.asarray(x) + 3}
SCALE = {"1": lambda x: 2 * np.asarray(x), "2": lambda x: 3 * np.asarray(x)}
EXPECTED = {"affine": AFFINE, "scale": SCALE, "affine_grpc": AFFINE, "scale_grpc": SCALE}
# Same servers, two transports: `*_grpc` models reach the backend over its gRPC API.
BACKEND = {"affine": "tfserving", "scale": "torchserve", "affine_grpc": "tfserving_grpc",
           "scale_grpc": "torchserve_grpc"}
MODELS = list(BACKEND)


def v2_request(x: list[list[float]]) -> dict:  # type: ignore[type-arg]
    return {"id": "r1", "inputs": [{"name": "x", "shape": [len(x), len(x[0])], "datatype": "FP32",
                                    "data": [v for row in x for v in row]}]}


def assert_served_by(response: httpx.Response, model: str, version: str) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["x-model-name"] == model
    assert response.headers["x-model-version"] == version
    assert response.headers["x-backend"] == BACKEND[model]


def v2_output(doc: dict, name: str = "y") -> np.ndarray:  # type: ignore[type-arg]
    out = next(o for o in doc["outputs"] if o["name"] == name)
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("version", ["1", "2"])
def test_v2_rest(client: httpx.Client, model: str, version: str) -> None:
    r = client.post(f"/v2/models/{model}/versions/{version}/infer", json=v2_request(X))
    assert_served_by(r, model, version)
    doc = r.json()
    assert (doc["model_name"], doc["model_version"], doc["id"]) == (model, version, "r1")
    assert doc["outputs"][0]["datatype"] == "FP32"
    np.testing.assert_allclose(v2_output(doc), EXPECTED[model][version](X), rtol=1e-6)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("version", ["1", "2"])
def test_tf_rest_row_format(client: httpx.Client, model: str, version: str) -> None:
    r = client.post(f"/v1/models/{model}/versions/{version}:predict", json={"instances": X})
    assert_served_by(r, model, version)
    np.testing.assert_allclose(r.json()["predictions"], EXPECTED[model][version](X), rtol=1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_tf_rest_columnar_named_with_label(client: httpx.Client, model: str) -> None:
    r = client.post(f"/v1/models/{model}/labels/canary:predict", json={"inputs": {"x": X}})
    assert_served_by(r, model, "2")
    np.testing.assert_allclose(r.json()["outputs"], EXPECTED[model]["2"](X), rtol=1e-6)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("version", ["1", "2"])
def test_torchserve_rest(client: httpx.Client, model: str, version: str) -> None:
    r = client.post(f"/predictions/{model}/{version}", json=v2_request(X))
    assert_served_by(r, model, version)
    doc = r.json()
    # TorchServe targets pass through untouched, so the handler names its own model; translated answers name
    # the logical model.
    passthrough = BACKEND[model].startswith("torchserve")
    assert doc["model_name"] == (model.removesuffix("_grpc") if passthrough else model)
    np.testing.assert_allclose(v2_output(doc), EXPECTED[model][version](X), rtol=1e-6)


@pytest.mark.parametrize(("model", "default"), [("affine", "2"), ("scale", "2"), ("mlp", "1")])
def test_default_version_without_version_in_path(client: httpx.Client, model: str, default: str) -> None:
    x = X if model != "mlp" else [[1.0, 2.0, 3.0, 4.0]]
    r = client.post(f"/v2/models/{model}/infer", json=v2_request(x))
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == default
    assert r.json()["model_version"] == default


@pytest.mark.parametrize("version", ["1", "2"])
def test_same_model_on_both_frameworks_agrees(client: httpx.Client, version: str) -> None:
    x = [[1.0, 2.0, 3.0, 4.0], [0.1, -0.2, 0.3, -0.4], [5.0, 1.0, -3.0, 2.0]]
    tf = client.post(f"/v2/models/mlp/versions/{version}/infer", json=v2_request(x))
    torch = client.post(f"/v2/models/mlp_torch/versions/{version}/infer", json=v2_request(x))
    assert tf.headers["x-backend"] == "tfserving" and torch.headers["x-backend"] == "torchserve"
    p_tf, p_torch = v2_output(tf.json(), "probabilities"), v2_output(torch.json(), "probabilities")
    assert p_tf.shape == (3, 3)
    np.testing.assert_allclose(p_tf, p_torch, atol=1e-5)
    # Through the TF front too, for the TorchServe copy.
    via_tf = client.post(f"/v1/models/mlp_torch/versions/{version}:predict", json={"instances": x})
    np.testing.assert_allclose(via_tf.json()["predictions"], p_tf, atol=1e-5)


def test_versions_differ_visibly(client: httpx.Client) -> None:
    x = [[1.0, 2.0, 3.0, 4.0]]
    p1 = v2_output(client.post("/v2/models/mlp/versions/1/infer", json=v2_request(x)).json(), "probabilities")
    p2 = v2_output(client.post("/v2/models/mlp/versions/2/infer", json=v2_request(x)).json(), "probabilities")
    assert int(p1.argmax()) != int(p2.argmax())


MULTI_V2 = {"inputs": [
    {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [1.5, 2.5, -10, 1]},
    {"name": "b", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]},
    {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["hello", "wörld"]},
]}


def test_v2_dtypes_through_tf_serving(client: httpx.Client) -> None:
    r = client.post("/v2/models/multi/infer", json=MULTI_V2)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["total"]["datatype"] == "FP32" and outputs["total"]["data"] == [7.0, -2.0]
    assert outputs["b_doubled"]["datatype"] == "INT64" and outputs["b_doubled"]["data"] == [2, 4, 6, 8]
    assert outputs["b_doubled"]["shape"] == [2, 2]
    assert outputs["text"]["datatype"] == "BYTES" and outputs["text"]["data"] == ["HELLO", "WöRLD"]
    assert outputs["positive"]["datatype"] == "BOOL" and outputs["positive"]["data"] == [True, False]


def test_v2_outputs_filter(client: httpx.Client) -> None:
    r = client.post("/v2/models/multi/infer", json={**MULTI_V2, "outputs": [{"name": "positive"}]})
    assert [o["name"] for o in r.json()["outputs"]] == ["positive"]


def test_tf_multi_input_row_format_passthrough(client: httpx.Client) -> None:
    body = {"instances": [{"a": [1.5, 2.5], "b": [1, 2], "s": "hi"}, {"a": [-10, 1], "b": [3, 4], "s": "yo"}]}
    r = client.post("/v1/models/multi:predict", json=body)
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    assert rows[0]["total"] == 7.0 and rows[1]["positive"] is False and rows[0]["text"] == "HI"


def test_v2_metadata_from_tf_signature_and_from_schema(client: httpx.Client) -> None:
    tf = client.get("/v2/models/affine").json()
    assert tf["name"] == "affine" and tf["versions"] == ["1", "2"] and tf["platform"] == "tensorflow_savedmodel"
    assert tf["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert tf["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    ts = client.get("/v2/models/scale/versions/1").json()
    assert ts["platform"] == "pytorch_torchserve" and ts["versions"] == ["1"]
    assert ts["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]


def test_tf_metadata_both_backends(client: httpx.Client) -> None:
    for model, backend in (("affine", "tfserving"), ("scale", "torchserve")):
        r = client.get(f"/v1/models/{model}/versions/1/metadata")
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["model_spec"] == {"name": model, "signature_name": "", "version": "1"}, backend
        sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert sig["inputs"]["x"]["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in sig["inputs"]["x"]["tensor_shape"]["dim"]] == ["-1", "3"]


@pytest.mark.parametrize("model", MODELS)
def test_tf_status_and_v2_readiness(client: httpx.Client, model: str) -> None:
    doc = client.get(f"/v1/models/{model}").json()
    assert [(s["version"], s["state"]) for s in doc["model_version_status"]] == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
    assert doc["model_version_status"][0]["status"] == {"error_code": "OK", "error_message": ""}
    one = client.get(f"/v1/models/{model}/versions/1").json()
    assert [s["version"] for s in one["model_version_status"]] == ["1"]
    assert client.get(f"/v2/models/{model}/versions/1/ready").status_code == 200


def test_health_and_server_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["name"] == "model-gateway"
    assert client.get("/ping").json() == {"status": "Healthy"}
