"""Open Inference Protocol v2 JSON <-> InferRequest / InferResponse."""

from __future__ import annotations

from typing import Any

from gateway.codecs.jsonio import dumps, expect_object, loads
from gateway.codecs.tensors import to_array, to_json_values
from gateway.errors import InvalidArgument
from gateway.types import InferRequest, InferResponse, ModelRef, ModelSchema, Tensor


def decode_request(body: bytes, model: ModelRef) -> InferRequest:
    doc = expect_object(loads(body), "the inference request")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgument("'inputs' must be a non-empty list of tensors")
    inputs = tuple(_decode_tensor(expect_object(t, "each input"), i) for i, t in enumerate(raw_inputs))
    if len({t.name for t in inputs}) != len(inputs):
        raise InvalidArgument("input names must be unique")
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise InvalidArgument("'outputs' must be a list of objects with a 'name'")
    request_id = doc.get("id")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgument("'parameters' must be an object")
    return InferRequest(
        model=model, inputs=inputs, output_names=tuple(o["name"] for o in outputs),
        id=None if request_id is None else str(request_id), parameters=params,
    )


def _decode_tensor(raw: dict[str, Any], index: int) -> Tensor:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"inputs[{index}]: 'name' must be a non-empty string")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidArgument(f"input '{name}': 'datatype' must be a string")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InvalidArgument(f"input '{name}': 'shape' must be a list of non-negative integers")
    if "data" not in raw:
        raise InvalidArgument(f"input '{name}': 'data' is missing")
    return Tensor(name=name, datatype=datatype, data=to_array(name, datatype, raw["data"], tuple(shape)))


def encode_request(request: InferRequest) -> bytes:
    """The v2 body a backend speaking v2 JSON receives (TorchServe handlers in model_repo do)."""
    doc: dict[str, Any] = {"inputs": [_encode_tensor(t) for t in request.inputs]}
    if request.id is not None:
        doc["id"] = request.id
    if request.output_names:
        doc["outputs"] = [{"name": n} for n in request.output_names]
    if request.parameters:
        doc["parameters"] = request.parameters
    return dumps(doc)


def _encode_tensor(t: Tensor) -> dict[str, Any]:
    data = t.data.reshape(-1)
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
            "data": to_json_values(Tensor(t.name, t.datatype, data))}


def decode_response(body: bytes) -> InferResponse:
    doc = expect_object(loads(body), "the backend's v2 response")
    raw_outputs = doc.get("outputs")
    if not isinstance(raw_outputs, list):
        raise InvalidArgument("the backend's v2 response has no 'outputs' list")
    outputs = tuple(_decode_tensor(expect_object(t, "each output"), i) for i, t in enumerate(raw_outputs))
    rid = doc.get("id")
    return InferResponse(outputs=outputs, model_name=str(doc.get("model_name", "")),
                         model_version=str(doc.get("model_version", "")), id=None if rid is None else str(rid))


def encode_response(response: InferResponse) -> bytes:
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [_encode_tensor(t) for t in response.outputs],
    }
    if response.id is not None:
        doc["id"] = response.id
    return dumps(doc)


def encode_metadata(name: str, versions: list[str], platform: str, schema: ModelSchema) -> bytes:
    return dumps({
        "name": name,
        "versions": versions,
        "platform": platform,
        "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in schema.inputs],
        "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in schema.outputs],
    })
