"""Bad input and failing backends: a clear 4xx/5xx in the client's protocol, never an unhandled 500 or a hang."""

from __future__ import annotations

import httpx
import pytest

from .stack import MAX_BODY_BYTES

V2_X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


def v2_error(r: httpx.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert fragment in r.json()["error"]


def ts_error(r: httpx.Response, status: int, kind: str, fragment: str) -> None:
    assert r.status_code == status, r.text
    doc = r.json()
    assert doc["code"] == status and doc["type"] == kind, doc
    assert fragment in doc["message"]


# --- malformed bodies, each front in its own error format ---

def test_malformed_json_each_front(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    v2_error(client.post("/v2/models/scale/infer", content=b"{oops", headers=headers), 400, "not valid JSON")
    v2_error(client.post("/v1/models/scale:predict", content=b"{oops", headers=headers), 400, "not valid JSON")
    ts_error(client.post("/predictions/affine", content=b"{oops", headers=headers), 400, "BadRequestException",
             "not valid JSON")


def test_malformed_json_passthrough_reaches_backend_error(client: httpx.Client) -> None:
    # Same-protocol paths forward the body untouched; the backend's 400 comes back as a 400.
    r = client.post("/v1/models/affine:predict", content=b"{oops")
    assert r.status_code == 400 and r.json()["error"]


# --- wrong shapes and dtypes, on both backend kinds ---

@pytest.mark.parametrize(("model", "status"), [("scale", 400), ("affine", 400)])
def test_wrong_shape(client: httpx.Client, model: str, status: int) -> None:
    bad = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    r = client.post(f"/v2/models/{model}/infer", json=bad)
    assert r.status_code == status, r.text
    assert r.json()["error"]


def test_wrong_dtype_against_declared_schema(client: httpx.Client) -> None:
    bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]}
    v2_error(client.post("/v2/models/scale/infer", json=bad), 400, "datatype INT32 given, model expects FP32")


def test_wrong_dtype_at_tf_serving(client: httpx.Client) -> None:
    bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["a", "b", "c"]}]}
    r = client.post("/v2/models/affine/infer", json=bad)
    assert r.status_code == 400, r.text


def test_unknown_input_name(client: httpx.Client) -> None:
    bad = {"inputs": [{"name": "z", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    v2_error(client.post("/v2/models/scale/infer", json=bad), 400, "needs input(s) x")


def test_tf_row_format_to_torchserve_with_wrong_width(client: httpx.Client) -> None:
    v2_error(client.post("/v1/models/scale:predict", json={"instances": [[1, 2]]}), 400, "does not match")


def test_handler_validation_reaches_client_as_400(client: httpx.Client) -> None:
    # TorchServe passthrough: the handler refuses the body with PredictionException(400).
    r = client.post("/predictions/scale/1", json={"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32"}]})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "BadRequestException"


# --- unknown model / version / label ---

def test_unknown_model_each_front(client: httpx.Client) -> None:
    v2_error(client.post("/v2/models/nope/infer", json=V2_X3), 404, "Model 'nope' is not served")
    v2_error(client.post("/v1/models/nope:predict", json={"instances": [[1]]}), 404,
             "Servable not found for request: Latest(nope)")
    ts_error(client.post("/predictions/nope", json=V2_X3), 404, "ModelNotFoundException", "nope")
    v2_error(client.get("/v1/models/nope"), 404, "Could not find any versions of model nope")


def test_unknown_version_each_front(client: httpx.Client) -> None:
    v2_error(client.post("/v2/models/scale/versions/7/infer", json=V2_X3), 404, "has no version 7")
    v2_error(client.post("/v1/models/affine/versions/7:predict", json={"instances": [[1, 2, 3]]}), 404,
             "Servable not found for request: Specific(affine, 7)")
    ts_error(client.post("/predictions/scale/7", json=V2_X3), 404, "ModelVersionNotFoundException", "version 7")


def test_unknown_label_is_400_like_tf_serving(client: httpx.Client) -> None:
    v2_error(client.post("/v1/models/affine/labels/gold:predict", json={"instances": [[1, 2, 3]]}), 400,
             "Unrecognized servable version label: gold")


def test_tf_paths_that_do_not_parse(client: httpx.Client) -> None:
    v2_error(client.post("/v1/models/affine/versions/x:predict", json={}), 400, "Malformed request: POST")
    v2_error(client.get("/v1/models"), 400, "Missing model name in request.")


def test_unknown_paths_and_methods(client: httpx.Client) -> None:
    v2_error(client.get("/v2/models/scale/infer"), 405, "GET is not allowed")
    v2_error(client.get("/nothing-here"), 404, "no endpoint")


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/v2/models/scale/infer", "POST"), ("DELETE", "/v2/models/scale/versions/1", "GET"),
    ("POST", "/v2/health/live", "GET"), ("GET", "/predictions/scale", "POST, PUT"), ("POST", "/ping", "GET"),
    ("POST", "/metrics", "GET"), ("PUT", "/openapi.json", "GET"), ("DELETE", "/docs", "GET")])
def test_wrong_method_is_405_naming_the_allowed_ones(client: httpx.Client, method: str, path: str, allow: str) -> None:
    """RFC 9110: a 405 carries Allow (found by schemathesis); /predictions and /ping answered 404 before."""
    r = client.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    if path.startswith(("/predictions", "/ping")):
        ts_error(r, 405, "MethodNotAllowedException", f"{method} is not allowed")
    else:
        v2_error(r, 405, f"{method} is not allowed")


def test_wrong_method_under_v1_is_400_as_tf_serving_answers(client: httpx.Client) -> None:
    v2_error(client.delete("/v1/models/scale"), 400, "Malformed request: DELETE /v1/models/scale")


def test_classify_on_torchserve_model_is_unimplemented(client: httpx.Client) -> None:
    v2_error(client.post("/v1/models/scale:classify", json={"instances": [[1, 2, 3]]}), 501, "only available")


# --- oversized body ---

def test_oversized_body_is_413_in_each_protocol(client: httpx.Client) -> None:
    big = b"[" + b"1," * (MAX_BODY_BYTES // 2) + b"1]"
    v2_error(client.post("/v2/models/scale/infer", content=big), 413, "exceeds the limit")
    ts_error(client.post("/predictions/scale", content=big), 413, "RequestEntityTooLargeException", "exceeds")


def test_oversized_chunked_body_is_413(client: httpx.Client) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    v2_error(client.post("/v2/models/scale/infer", content=chunks()), 413, "exceeds the limit")


# --- backends down, hanging, or without the target ---

def test_backend_down_is_503(client: httpx.Client) -> None:
    v2_error(client.post("/v2/models/ghost/infer", json=V2_X3), 503, "backend 'down' is unreachable")
    ts_error(client.post("/predictions/ghost", json=V2_X3), 503, "ServiceUnavailableException", "unreachable")
    r = client.get("/v1/models/ghost")
    assert r.status_code == 200 and r.json()["model_version_status"][0]["state"] == "UNKNOWN"
    assert client.get("/v2/models/ghost/ready").status_code == 400


def test_backend_hanging_is_504_within_its_timeout(client: httpx.Client) -> None:
    r = client.post("/v1/models/sleepy:predict", json={"instances": [[1]]}, timeout=10)
    v2_error(r, 504, "did not answer within 0.5s")
    assert r.elapsed.total_seconds() < 5


@pytest.mark.parametrize("version", ["1", "2"])
def test_target_not_loaded_on_backend_is_503(client: httpx.Client, version: str) -> None:
    v2_error(client.post(f"/v2/models/unloaded/versions/{version}/infer", json=V2_X3), 503, "")


def test_gateway_keeps_serving_after_errors(client: httpx.Client) -> None:
    r = client.post("/v2/models/scale/versions/1/infer", json=V2_X3)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2, 4, 6]
