"""Open Inference Protocol v2 JSON <-> InferRequest / InferResponse."""

from __future__ import annotations

from typing import Any

from gateway.codecs.jsonio import dumps, expect_object, loads
from gateway.codecs.tensors import from_raw, non_finite, to_array, to_json_values, to_raw
from gateway.errors import InvalidArgument
from gateway.types import InferRequest, InferResponse, ModelRef, ModelSchema, Tensor


def decode_request(body: bytes, model: ModelRef, header_length: int | None = None) -> InferRequest:
    """A v2 JSON request; with `header_length` (the Inference-Header-Content-Length header of the binary data
    extension) only that prefix is JSON and inputs with a binary_data_size take their bytes from the rest."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise InvalidArgument(f"Inference-Header-Content-Length {header_length} is outside the body "
                              f"of {len(body)} bytes")
    doc = expect_object(loads(body if header_length is None else body[:header_length], allow_nan=True),
                        "the inference request")
    binary = _Binary(body, header_length)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgument("'inputs' must be a non-empty list of tensors")
    inputs = tuple(_decode_tensor(expect_object(t, "each input"), i, binary) for i, t in enumerate(raw_inputs))
    binary.check_consumed()
    if len({t.name for t in inputs}) != len(inputs):
        raise InvalidArgument("input names must be unique")
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise InvalidArgument("'outputs' must be a list of objects with a 'name'")
    request_id = doc.get("id")
    params = _parameters(doc, "the request")
    binary_outputs = {o["name"] for o in outputs if _parameters(o, f"output '{o['name']}'").get("binary_data")}
    if params.pop("binary_data_output", False):
        binary_outputs.add("*")
    return InferRequest(
        model=model, inputs=inputs, output_names=tuple(o["name"] for o in outputs),
        id=None if request_id is None else str(request_id), parameters=params,
        binary_outputs=frozenset(binary_outputs),
    )


def _parameters(doc: dict[str, Any], what: str) -> dict[str, Any]:
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgument(f"'parameters' of {what} must be an object")
    return dict(params)


class _Binary:
    """The binary section after the JSON header, handed out to inputs in order."""

    def __init__(self, body: bytes, header_length: int | None) -> None:
        self.data = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
        self.offset = 0

    def take(self, name: str, size: Any) -> bytes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"input '{name}': binary_data_size must be a non-negative integer")
        if self.offset + size > len(self.data):
            raise InvalidArgument(f"input '{name}': binary_data_size {size} runs past the end of the body")
        chunk = bytes(self.data[self.offset:self.offset + size])
        self.offset += size
        return chunk

    def check_consumed(self) -> None:
        if self.offset != len(self.data):
            raise InvalidArgument(f"{len(self.data) - self.offset} bytes of binary data are not claimed by any input")


def _decode_tensor(raw: dict[str, Any], index: int, binary: _Binary | None = None) -> Tensor:
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
    size = _parameters(raw, f"input '{name}'").get("binary_data_size")
    if size is not None and binary is not None:
        raw_data = binary.take(name, size)
        return Tensor(name=name, datatype=datatype, data=from_raw(name, datatype, raw_data, tuple(shape)))
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
    return dumps(doc, nan=non_finite(request.inputs))


def _encode_tensor(t: Tensor) -> dict[str, Any]:
    data = t.data.reshape(-1)
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
            "data": to_json_values(Tensor(t.name, t.datatype, data))}


def decode_response(body: bytes) -> InferResponse:
    doc = expect_object(loads(body, allow_nan=True), "the backend's v2 response")
    raw_outputs = doc.get("outputs")
    if not isinstance(raw_outputs, list):
        raise InvalidArgument("the backend's v2 response has no 'outputs' list")
    outputs = tuple(_decode_tensor(expect_object(t, "each output"), i) for i, t in enumerate(raw_outputs))
    rid = doc.get("id")
    return InferResponse(outputs=outputs, model_name=str(doc.get("model_name", "")),
                         model_version=str(doc.get("model_version", "")), id=None if rid is None else str(rid))


def encode_response(response: InferResponse, binary_outputs: frozenset[str] = frozenset()) -> tuple[bytes, int | None]:
    """(body, header length): the header length is set when some outputs went out as binary data."""
    binary = [t for t in response.outputs if "*" in binary_outputs or t.name in binary_outputs]
    raws = {t.name: to_raw(t) for t in binary}
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [_encode_tensor(t) if t.name not in raws else
                    {"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                     "parameters": {"binary_data_size": len(raws[t.name])}} for t in response.outputs],
    }
    if response.id is not None:
        doc["id"] = response.id
    header = dumps(doc, nan=non_finite(t for t in response.outputs if t.name not in raws))
    if not raws:
        return header, None
    return header + b"".join(raws[t.name] for t in binary), len(header)


def encode_metadata(name: str, versions: list[str], platform: str, schema: ModelSchema) -> bytes:
    return dumps({
        "name": name,
        "versions": versions,
        "platform": platform,
        "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in schema.inputs],
        "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in schema.outputs],
    })
