"""Bad input and failing backends: a clear 4xx/5xx in the client's protocol, never an unhandled 500 or a hang."""

from __future__ import annotations

import httpx
import pytest

from .stack import MAX_BODY_BYTES, Gateway

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


# --- pathological JSON: nesting, huge numbers, odd encodings, on every JSON-taking endpoint ---

# (front, method, path, body template): $N is a number, $S a string the case may replace; as given, the body is
# valid for the model.
V2_BODY = '{"inputs": [{"name": "$S", "shape": [1, 3], "datatype": "FP32", "data": [$N, 2, 3]}]}'
TF_BODY = '{"instances": [{"$S": [$N, 2, 3]}]}'
EXAMPLES_BODY = '{"examples": [{"$S": [$N, 2, 3]}]}'
JSON_ENDPOINTS = [
    ("v2", "POST", "/v2/models/scale/infer", V2_BODY),  # TorchServe behind
    ("v2", "POST", "/v2/models/affine/versions/1/infer", V2_BODY),  # TF Serving behind
    ("tf", "POST", "/v1/models/scale:predict", TF_BODY),  # translated
    ("tf", "POST", "/v1/models/affine:predict", TF_BODY),  # passed through to TF Serving unchanged
    ("tf", "POST", "/v1/models/affine/labels/stable:classify", EXAMPLES_BODY),
    ("tf", "POST", "/v1/models/affine:regress", EXAMPLES_BODY),
    ("torchserve", "POST", "/predictions/scale", V2_BODY),  # passed through to the TorchServe handler
    ("torchserve", "PUT", "/predictions/scale/1", V2_BODY),
    ("torchserve", "POST", "/predictions/affine", V2_BODY),  # read as v2 JSON, translated for TF Serving
]


def body(template: str, number: str = "1", string: str = "x") -> bytes:
    return template.replace("$N", number).replace("$S", string).encode()


def duplicate_first_key(template: str) -> bytes:
    key = template.split('"')[1]
    return f'{{"{key}": "a", {template[1:-1]}, "{key}": "b"}}'.replace("$N", "1").replace("$S", "x").encode()


PATHOLOGICAL = {
    "100k nested arrays": lambda t: b"[" * 100_000 + b"]" * 100_000,
    "50k nested objects": lambda t: b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
    "100k nested arrays inside": lambda t: body(t, "[" * 100_000 + "1" + "]" * 100_000),
    "1e400": lambda t: body(t, "1e400"),
    "-1e400": lambda t: body(t, "-1e400"),
    "10**400": lambda t: body(t, "1" + "0" * 400),
    "5000-digit integer": lambda t: body(t, "9" * 5000),
    "UTF-16 with BOM": lambda t: body(t).decode().encode("utf-16"),
    "UTF-16LE": lambda t: body(t).decode().encode("utf-16-le"),
    "UTF-16BE": lambda t: body(t).decode().encode("utf-16-be"),
    "UTF-32 with BOM": lambda t: body(t).decode().encode("utf-32"),
    "UTF-32BE": lambda t: body(t).decode().encode("utf-32-be"),
    "UTF-8 with BOM": lambda t: b"\xef\xbb\xbf" + body(t),
    "invalid UTF-8": lambda t: body(t).replace(b'"x', b'"\xff\xfe'),
    "UTF-8 encoded surrogate": lambda t: body(t).replace(b'"x', b'"\xed\xa0\x80'),
    "lone surrogate escape": lambda t: body(t, string="\\ud800"),
    "lone low surrogate escape": lambda t: body(t, string="x\\udfff"),
    "NUL byte in a string": lambda t: body(t, string="x\x00"),
    "NUL escape in a string": lambda t: body(t, string="x\\u0000"),
    "NUL after the document": lambda t: body(t) + b"\x00",
    "NaN and Infinity tokens": lambda t: body(t, "NaN").replace(b", 2,", b", Infinity,"),
    "duplicate keys": duplicate_first_key,
    "900 KB string": lambda t: body(t, string="x" * 900_000),
    "empty body": lambda t: b"",
    "whitespace only": lambda t: b" \r\n\t ",
    "top-level array": lambda t: b"[1, 2, 3]",
    "top-level string": lambda t: b'"x"',
    "top-level number": lambda t: b"5",
    "top-level null": lambda t: b"null",
    "top-level true": lambda t: b"true",
}


def front_error(front: str, r: httpx.Response) -> None:
    """A clear 4xx in the front's own error format."""
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    doc = r.json()
    if front == "torchserve":
        assert doc["code"] == r.status_code and doc["type"].endswith("Exception") and doc["message"], doc
    else:
        assert isinstance(doc["error"], str) and doc["error"], doc


@pytest.mark.parametrize(("front", "method", "path", "template"), JSON_ENDPOINTS,
                         ids=[f"{m} {p}" for _, m, p, _ in JSON_ENDPOINTS])
def test_pathological_json_is_a_clear_4xx_on_every_front(gateway: Gateway, front: str, method: str, path: str,
                                                         template: str) -> None:
    """Never a 5xx, never a hang (a client timeout on each): a 4xx in the front's format. Three 200s are the
    protocols' own: NaN/Infinity tokens are JSON that TF Serving (and so this gateway) accepts; bodies passed
    through unchanged get their backend's reading: TF Serving stops at the end of the first JSON value, and
    TorchServe reads the JSON for its handler, 1e400 as infinity."""
    passed_to = {"/v1/models/affine:predict": "tfserving", "/predictions/scale": "torchserve",
                 "/predictions/scale/1": "torchserve"}.get(path, "")
    backends_own = {"tfserving": "NUL after the document", "torchserve": "e400"}
    with gateway.client(timeout=30) as client:
        valid = client.request(method, path, content=body(template), headers={"content-type": "application/json"})
        assert valid.status_code == 200 or path.endswith((":classify", ":regress")), valid.text  # affine: predict only
        for case, make in PATHOLOGICAL.items():
            r = client.request(method, path, content=make(template), headers={"content-type": "application/json"})
            backends_reading = passed_to and backends_own[passed_to] in case
            if (case == "NaN and Infinity tokens" or backends_reading) and r.status_code == 200:
                continue
            try:
                front_error(front, r)
            except AssertionError as exc:
                raise AssertionError(f"{case}: {exc}") from None
        again = client.request(method, path, content=body(template), headers={"content-type": "application/json"})
        assert again.status_code == valid.status_code, again.text  # the backend survived it all


ADMIN_JSON_ENDPOINTS = [
    ("PUT", "/routes", '{"revision": $N, "backends": {}, "models": {"$S": {}}}'),
    ("POST", "/models/nope/default", '{"version": "$S", "revision": $N}'),
    ("POST", "/rollouts", '{"model": "nope", "to_version": "1", "dwell_s": $N, "why": "$S"}'),
    ("POST", "/rollouts/nope/abort", '{"who": "$S", "why": "x", "n": $N}'),
]


@pytest.mark.parametrize(("method", "path", "template"), ADMIN_JSON_ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _ in ADMIN_JSON_ENDPOINTS])
def test_pathological_json_is_a_clear_4xx_on_the_admin_api(gateway: Gateway, method: str, path: str,
                                                           template: str) -> None:
    """The admin API's JSON bodies (they name no model that exists: nothing can be written)."""
    headers = {"authorization": f"Bearer {gateway.admin_token}", "content-type": "application/json",
               "if-match": "0"}
    with httpx.Client(base_url=gateway.admin_url, timeout=30, headers=headers) as admin:
        for case, make in PATHOLOGICAL.items():
            r = admin.request(method, path, content=make(template))
            try:
                front_error("admin", r)
            except AssertionError as exc:
                raise AssertionError(f"{case}: {exc}") from None
