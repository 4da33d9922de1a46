"""The public port's OpenAPI document (/openapi.json) and its docs page (/docs), built once per process.

RestApp imports this module only when one of the two is asked for (in a thread, off the event loop), so pydantic
never loads on the inference path. Every operation the REST fronts route is listed in OPERATIONS with the status
codes it really answers; tests/unit/test_openapi_routes.py fails when a front's route table and this list differ.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from swagger_ui_bundle import swagger_ui_path

from gateway import __version__
from gateway.api import public_models as m

JsonDoc = dict[str, Any]
BINARY: JsonDoc = {"schema": {"type": "string", "format": "binary"}}

# What each refusal means; the body is the front's error format (ERROR_BODY).
STATUS_TEXT = {
    400: "malformed body or path, wrong input name, datatype or shape, unknown label or variant",
    403: "an x-model-version / x-model-variant override on a model that does not allow overrides",
    404: "unknown model or version (or file)",
    413: "body over GATEWAY_MAX_BODY_BYTES (checked on the declared length and while streaming)",
    429: "the backend refused the call: overloaded",
    501: "the backend does not implement the call (:classify/:regress on a model TF Serving does not serve)",
    502: "the backend failed (5xx, unreadable answer)",
    503: "the backend is down, or the routed version is not loaded there",
    504: "the backend did not answer within its timeout_s",
}
INFERENCE_REFUSALS = (400, 403, 404, 413, 429, 501, 502, 503, 504)
LOOKUP_REFUSALS = (400, 403, 404, 502, 503, 504)


@dataclass(frozen=True)
class Operation:
    """One documented (method, path template): what it takes, what it answers."""

    method: str
    path: str
    front: str  # v2 | tf | torchserve | gateway: picks the tag and the error body
    summary: str
    ok: Mapping[str, Any]  # the 200 answer's content (media type -> media object)
    refusals: tuple[int, ...] = ()
    request: Mapping[str, Any] | None = None  # the request body's content
    headers: tuple[str, ...] = ()  # documented request headers (HEADERS)
    answers: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)  # statuses with their own content
    trailing_slash: bool = False  # the route also takes the path with a trailing "/"
    description: str = ""


def ref(model: type[BaseModel]) -> JsonDoc:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_of(*models: type[BaseModel], example: Any = None) -> dict[str, Any]:
    schema = ref(models[0]) if len(models) == 1 else {"anyOf": [ref(x) for x in models]}
    media: JsonDoc = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


# TorchServe takes any content type; a JSON body (the v2 JSON this project's handlers read) and raw bytes (an
# image...) named apart, so that client generators make a function for each.
ANY_CONTENT: JsonDoc = {
    "application/json": {"schema": {}, "example": {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                                               "data": [1, 2, 3]}]}},
    "application/octet-stream": BINARY,
    "*/*": {"schema": {}, "description": "any other content type, passed to the handler as it is"}}
ERROR_BODY: dict[str, type[BaseModel]] = {"v2": m.Error, "tf": m.Error, "torchserve": m.TorchServeError,
                                          "gateway": m.Error}
TAGS = {"v2": "Open Inference Protocol v2", "tf": "TF Serving REST", "torchserve": "TorchServe REST",
        "gateway": "gateway"}

# Path parameters by name: what a valid value looks like.
PARAMETERS: dict[str, JsonDoc] = {
    "model_name": {"description": "the logical model (a key of the routes file's models)",
                   "schema": {"type": "string", "minLength": 1}, "example": "scale"},
    "model_version": {"description": "a logical version of the model", "schema": {"type": "string", "minLength": 1},
                      "example": "1"},
    "tf_model_name": {"description": "the logical model (a key of the routes file's models)",
                      "schema": {"type": "string", "pattern": "^[^/:]+$"}, "example": "affine"},
    "version": {"description": "a logical version of the model (TF Serving's versions are integers)",
                "schema": {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}, "example": 1},
    "asset": {"description": "a file of the docs page", "schema": {"type": "string", "enum": ["swagger-ui.css",
              "swagger-ui-bundle.js"]}, "example": "swagger-ui.css"},
    "label": {"description": "a version label of the model (routes file: labels)",
              "schema": {"type": "string", "pattern": "^[^/:]+$"}, "example": "stable"},
}
HEADERS: dict[str, JsonDoc] = {
    "x-model-version": {"description": "QA override: serve this version (models with allow_overrides only; else "
                                       "403)", "schema": {"type": "string"}},
    "x-model-variant": {"description": "QA override: serve this experiment variant (allow_overrides only)",
                        "schema": {"type": "string"}},
    "inference-header-content-length": {
        "description": "binary tensor extension: the length of the JSON header at the start of an "
                       "application/octet-stream body; the inputs' bytes follow it in order",
        "schema": {"type": "integer", "minimum": 0}},
}
OVERRIDES = ("x-model-version", "x-model-variant")
SERVED_BY = {
    "x-model-name": "the logical model that served the request",
    "x-model-version": "the logical version that served the request",
    "x-backend": "the backend that served the request",
    "x-model-variant": "the experiment variant, when an experiment chose it",
}

V2_INFER_BODY = {"application/json": {"schema": ref(m.InferRequest)},
                 "application/octet-stream": {**BINARY, "description": "binary tensor extension: the JSON header "
                                              "(Inference-Header-Content-Length bytes), then the inputs' bytes"}}
V2_INFER_ANSWER = {"application/json": {"schema": ref(m.InferResponse)},
                   "application/octet-stream": {**BINARY, "description": "binary tensor extension (outputs asked "
                                                "with binary_data): the JSON header, then the outputs' bytes"}}
TF_PREDICT_BODY = json_of(m.PredictRows, m.PredictColumns, example={"instances": [[1.0, 2.0, 3.0]]})
TF_PREDICT_ANSWER = json_of(m.RowPredictions, m.ColumnarOutputs)
TF_EXAMPLES_BODY = json_of(m.ClassifyRegressRequest)
TF_EXAMPLES_ANSWER = json_of(m.ClassifyRegressResult)

_V2_MODEL = ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}")
_TF_MODEL = ("/v1/models/{tf_model_name}", "/v1/models/{tf_model_name}/versions/{version}",
             "/v1/models/{tf_model_name}/labels/{label}")
_TS_MODEL = ("/predictions/{model_name}", "/predictions/{model_name}/{model_version}")


def _operations() -> tuple[Operation, ...]:
    ops = [
        Operation("GET", "/v2/health/live", "v2", "Server live", json_of(m.ServerLive)),
        Operation("GET", "/v2/health/ready", "v2", "Server ready: a valid routes table is loaded and the process "
                  "is not draining", json_of(m.ServerReady),
                  answers={400: {"description": "draining (SIGTERM): not ready", **_content(m.ServerNotReady)}}),
        Operation("GET", "/v2", "v2", "Server metadata", json_of(m.ServerMetadata), trailing_slash=True),
    ]
    for path in _V2_MODEL:
        ops += [
            Operation("GET", path, "v2", "Model metadata: its versions, platform, inputs and outputs",
                      json_of(m.ModelMetadata), LOOKUP_REFUSALS, headers=OVERRIDES, trailing_slash=True),
            Operation("GET", f"{path}/ready", "v2", "Model ready: the routed version is loaded on its backend",
                      json_of(m.ModelReady), (403, 404), headers=OVERRIDES,
                      answers={400: {"description": "not ready (the error says why), or a bad override",
                                     **_content(m.ModelNotReady, m.Error)}}),
            Operation("POST", f"{path}/infer", "v2", "Inference (JSON tensors, or the binary tensor extension)",
                      V2_INFER_ANSWER, INFERENCE_REFUSALS, V2_INFER_BODY,
                      headers=(*OVERRIDES, "inference-header-content-length"),
                      description="Without a version the route table picks one (experiment variant, default). "
                                  "Inputs are checked against the model's schema before any backend is called."),
        ]
    ops.append(Operation("GET", "/v1/models", "tf", "Always 400: TF Serving's answer to a path without a model",
                         {}, answers={400: {"description": "Missing model name in request.",
                                            **_content(m.Error)}}))
    for path in _TF_MODEL:
        ops += [
            Operation("POST", f"{path}:predict", "tf", "Predict (row `instances` or columnar `inputs`)",
                      TF_PREDICT_ANSWER, INFERENCE_REFUSALS, TF_PREDICT_BODY, OVERRIDES,
                      description="TF-served models get the body unchanged; others get it translated."),
            Operation("POST", f"{path}:classify", "tf", "Classify (TF-served models)", TF_EXAMPLES_ANSWER,
                      INFERENCE_REFUSALS, TF_EXAMPLES_BODY, OVERRIDES),
            Operation("POST", f"{path}:regress", "tf", "Regress (TF-served models)", TF_EXAMPLES_ANSWER,
                      INFERENCE_REFUSALS, TF_EXAMPLES_BODY, OVERRIDES),
            Operation("GET", path, "tf", "Model status: every version's state, or one version's",
                      json_of(m.TFModelStatus), (400, 404)),
            Operation("GET", f"{path}/metadata", "tf", "Model metadata: signatures", json_of(m.TFModelMetadata),
                      LOOKUP_REFUSALS, headers=OVERRIDES),
        ]
    ops.append(Operation("GET", "/ping", "torchserve", "Health", json_of(m.Healthy),
                         answers={503: {"description": "draining (SIGTERM)", **_content(m.Unhealthy)}}))
    for path in _TS_MODEL:
        for method in ("POST", "PUT"):
            ops.append(Operation(
                method, path, "torchserve", "Inference: any body to a TorchServe handler, v2 JSON otherwise",
                {"application/json": {"schema": {}, "description": "the handler's own answer (TorchServe-served "
                                                                   "models), a v2 inference response otherwise"},
                 "*/*": {"schema": {}, "description": "the handler's own answer, in its own content type"}},
                INFERENCE_REFUSALS, ANY_CONTENT, OVERRIDES, trailing_slash=True,
                description="TorchServe-served models get the body unchanged with its content type, and the "
                            "handler's answer comes back as it is. Models on other backends (and shadowed "
                            "requests) read the body as a v2 JSON inference request."))
    ops += [
        Operation("GET", "/metrics", "gateway", "Prometheus metrics (text format)",
                  {"text/plain": {"schema": {"type": "string"}}}),
        Operation("GET", "/openapi.json", "gateway", "This document", {"application/json": {"schema":
                                                                                            {"type": "object"}}}),
        Operation("GET", "/docs", "gateway", "This document as a Swagger UI page",
                  {"text/html": {"schema": {"type": "string"}}}),
        Operation("GET", "/docs/{asset}", "gateway", "The docs page's scripts and styles",
                  {"text/css": {"schema": {"type": "string"}}, "text/javascript": {"schema": {"type": "string"}}},
                  (404,)),
    ]
    return tuple(ops)


def _content(*models: type[BaseModel]) -> JsonDoc:
    return {"content": json_of(*models)}


OPERATIONS = _operations()
MODELS: tuple[type[BaseModel], ...] = (
    m.Error, m.TorchServeError, m.ServerLive, m.ServerReady, m.ServerNotReady, m.ServerMetadata, m.ModelMetadata,
    m.ModelReady, m.ModelNotReady, m.InferRequest, m.InferResponse, m.PredictRows, m.PredictColumns,
    m.RowPredictions, m.ColumnarOutputs, m.ClassifyRegressRequest, m.ClassifyRegressResult, m.TFModelStatus,
    m.TFModelMetadata, m.Healthy, m.Unhealthy)

DESCRIPTION = """\
One inference gateway in front of TensorFlow Serving and TorchServe. Three REST protocols share this port:
the Open Inference Protocol v2 (`/v2`), TF Serving's REST API (`/v1`) and TorchServe's inference API
(`/predictions`, `/ping`); any of them reaches a model on any backend.

Errors come in the client's protocol: `{"error": "..."}` for v2 and TF Serving, TorchServe's
`{"code", "type", "message"}` for `/predictions` and `/ping`.

Paths and methods: a method a v2 path does not take answers 405; TF Serving answers any path or method it
does not know with 400 "Malformed request" (and matches its paths case-insensitively), and so does this
gateway under `/v1`; other unknown paths answer 404. Operations marked `x-trailing-slash` also take their path
with a trailing `/`.

Every inference answer names what served it in the `x-model-name`, `x-model-version`, `x-backend` (and, when
an experiment chose it, `x-model-variant`) headers. The gRPC fronts (v2 and TF Serving) are on their own port
and are described by server reflection.
"""


def _path_parameters(path: str) -> list[JsonDoc]:
    return [{"name": name, "in": "path", "required": True, **PARAMETERS[name]}
            for name in re.findall(r"{(\w+)}", path)]


def _header_parameters(names: tuple[str, ...]) -> list[JsonDoc]:
    return [{"name": name, "in": "header", "required": False, **HEADERS[name]} for name in names]


def _operation(op: Operation) -> JsonDoc:
    error = _content(ERROR_BODY[op.front])
    responses: dict[str, JsonDoc] = {}
    if op.ok:
        ok: JsonDoc = {"description": "OK", "content": dict(op.ok)}
        if op.front != "gateway" and "{" in op.path:
            ok["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                             for name, text in SERVED_BY.items()}
        responses["200"] = ok
    for status in op.refusals:
        responses[str(status)] = {"description": STATUS_TEXT[status], **error}
    for status, answer in op.answers.items():
        responses[str(status)] = dict(answer)
    doc: JsonDoc = {
        "tags": [TAGS[op.front]],
        "summary": op.summary,
        "operationId": _operation_id(op),
        "parameters": _path_parameters(op.path) + _header_parameters(op.headers),
        "responses": dict(sorted(responses.items())),
    }
    if op.description:
        doc["description"] = op.description
    if op.request is not None:
        doc["requestBody"] = {"required": True, "content": dict(op.request)}
    if op.trailing_slash:
        doc["x-trailing-slash"] = True
    return doc


def _operation_id(op: Operation) -> str:
    """get_v2_models_by_model_name_ready, post_v1_models_by_tf_model_name_predict: unique as (method, path) is."""
    words = re.sub(r"{(\w+)}", r"by_\1", op.path).strip("/")
    return f"{op.method.lower()}_" + re.sub(r"[^A-Za-z0-9]+", "_", words)


def build() -> JsonDoc:
    """The whole document (OpenAPI 3.1)."""
    _, defs = models_json_schema([(model, "validation") for model in MODELS],
                                 ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, JsonDoc]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Model Gateway", "version": __version__, "description": DESCRIPTION},
        "tags": [{"name": name} for name in TAGS.values()],
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }


def page(path: str) -> tuple[bytes, bytes] | None:
    """(body, content type) of /openapi.json, /docs or one of the docs page's assets; None for any other path.
    Built on each call: RestApp keeps what it served."""
    if path == "/openapi.json":
        return orjson.dumps(build()), b"application/json"
    if path == "/docs":
        return DOCS_PAGE.encode(), b"text/html; charset=utf-8"
    asset = ASSETS.get(path.removeprefix("/docs/"))
    if asset is None:
        return None
    return (swagger_ui_path / asset[0]).read_bytes(), asset[1]


# Swagger UI comes with the gateway (swagger-ui-bundle-v2): the page works without reaching any other host.
ASSETS = {"swagger-ui.css": ("swagger-ui.css", b"text/css; charset=utf-8"),
          "swagger-ui-bundle.js": ("swagger-ui-bundle.js", b"text/javascript; charset=utf-8")}
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Model Gateway: public API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
</script>
</body>
</html>
"""
