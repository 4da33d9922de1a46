"""TF Serving REST JSON (row `instances` and columnar `inputs` formats) <-> InferRequest / InferResponse."""

from __future__ import annotations

from typing import Any

from gateway.codecs.jsonio import dumps, expect_object, loads
from gateway.codecs.tensors import infer_datatype, non_finite, to_array, to_json_values
from gateway.errors import BackendError, InvalidArgument
from gateway.types import InferRequest, InferResponse, ModelRef, ModelSchema, Tensor, TensorSpec

# TensorFlow DataType names <-> v2 datatypes (only the types both sides share).
TF_TO_V2 = {
    "DT_FLOAT": "FP32", "DT_DOUBLE": "FP64", "DT_HALF": "FP16", "DT_INT8": "INT8", "DT_INT16": "INT16",
    "DT_INT32": "INT32", "DT_INT64": "INT64", "DT_UINT8": "UINT8", "DT_UINT16": "UINT16",
    "DT_UINT32": "UINT32", "DT_UINT64": "UINT64", "DT_BOOL": "BOOL", "DT_STRING": "BYTES",
}
V2_TO_TF = {v: k for k, v in TF_TO_V2.items()}
DEFAULT_SIGNATURE = "serving_default"


def parse_predict(body: bytes) -> dict[str, Any]:
    """The JSON of a TF predict body (TF Serving accepts NaN/Infinity tokens)."""
    return expect_object(loads(body, allow_nan=True), "the request body")


def signature_of(doc: dict[str, Any]) -> str:
    signature = doc.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature, str):
        raise InvalidArgument("'signature_name' must be a string")
    return signature or DEFAULT_SIGNATURE


def decode_predict(body: bytes | dict[str, Any], model: ModelRef,
                   schema: ModelSchema | None) -> tuple[InferRequest, bool]:
    """A TF predict body (or its parsed JSON) -> (request, row_format). Unnamed inputs take the schema's single
    input name; JSON numbers take the schema's datatypes."""
    doc = parse_predict(body) if isinstance(body, bytes) else body
    has_rows, has_cols = "instances" in doc, "inputs" in doc
    if has_rows and has_cols:
        raise InvalidArgument("Not formatted correctly expecting only one of 'inputs' or 'instances'")
    if not has_rows and not has_cols:
        raise InvalidArgument("Missing 'inputs' or 'instances' key")
    signature = signature_of(doc)
    specs = {s.name: s for s in schema.inputs} if schema else {}
    named = _rows(doc["instances"]) if has_rows else _columns(doc["inputs"])
    if named is None:
        named = {_sole_input(schema, model.name): doc["instances"] if has_rows else doc["inputs"]}
    inputs = tuple(_tensor(name, values, specs.get(name)) for name, values in named.items())
    return InferRequest(model=model, inputs=inputs, signature_name=signature), has_rows


def _rows(instances: Any) -> dict[str, Any] | None:
    """Named rows ({input: value} objects) -> columns; None for rows of bare values (one unnamed input)."""
    if not isinstance(instances, list):
        raise InvalidArgument("'instances' must be a list")
    named = [_is_named(r) for r in instances]
    if not any(named):
        return None
    if not all(named):
        raise InvalidArgument("'instances' must be all objects (named inputs) or all values")
    names = set(instances[0])
    for i, row in enumerate(instances):
        if set(row) != names:
            raise InvalidArgument(f"instances[{i}] has inputs {sorted(row)}, expected {sorted(names)}")
    return {n: [row[n] for row in instances] for n in instances[0]}


def _is_named(value: Any) -> bool:
    # {"b64": "..."} is a bytes value, not an input named "b64".
    return isinstance(value, dict) and set(value) != {"b64"}


def _columns(inputs: Any) -> dict[str, Any] | None:
    if _is_named(inputs):
        if not inputs:
            raise InvalidArgument("'inputs' must name at least one input")
        return dict(inputs)
    return None


def _sole_input(schema: ModelSchema | None, model: str) -> str:
    if schema is None or len(schema.inputs) != 1:
        raise InvalidArgument(
            f"model '{model}' does not declare exactly one input, so unnamed inputs cannot be mapped: "
            "name them ({\"inputs\": {\"<name>\": ...}})")
    return schema.inputs[0].name


def _tensor(name: str, values: Any, spec: TensorSpec | None) -> Tensor:
    datatype = spec.datatype if spec else infer_datatype(name, values)
    return Tensor(name=name, datatype=datatype, data=to_array(name, datatype, values, None))


def encode_predict_response(response: InferResponse, row_format: bool) -> bytes:
    """TF's answer shape: `predictions` for row requests, `outputs` for columnar; one output drops its name."""
    values = {t.name: to_json_values(t, b64=t.name.endswith("_bytes")) for t in response.outputs}
    nan = non_finite(response.outputs)
    if not row_format:
        return dumps({"outputs": next(iter(values.values())) if len(values) == 1 else values}, nan=nan)
    batch = {t.shape[0] if t.shape else None for t in response.outputs}
    if len(batch) != 1 or None in batch:
        raise InvalidArgument("Tensors in the output have inconsistent batch size; use the columnar "
                              "('inputs') request format for this model")
    if len(values) == 1:
        return dumps({"predictions": next(iter(values.values()))}, nan=nan)
    rows = [{name: vals[i] for name, vals in values.items()} for i in range(batch.pop() or 0)]
    return dumps({"predictions": rows}, nan=nan)


def encode_backend_request(request: InferRequest) -> bytes:
    """Columnar TF predict body for a TF Serving backend (keeps every input named)."""
    doc: dict[str, Any] = {"inputs": {t.name: to_json_values(t) for t in request.inputs}}
    if request.signature_name and request.signature_name != DEFAULT_SIGNATURE:
        doc["signature_name"] = request.signature_name
    return dumps(doc, nan=non_finite(request.inputs))


def decode_backend_response(body: bytes, outputs: tuple[TensorSpec, ...]) -> tuple[Tensor, ...]:
    """A columnar TF answer -> tensors typed from the signature's outputs (a single output has no name)."""
    doc = loads(body, allow_nan=True)
    if not isinstance(doc, dict) or "outputs" not in doc:
        raise BackendError("TF Serving answered without 'outputs'")
    raw = doc["outputs"]
    named = raw if len(outputs) != 1 else {outputs[0].name: raw}
    if not isinstance(named, dict):
        raise BackendError("TF Serving's 'outputs' is not an object for a multi-output signature")
    specs = {s.name: s for s in outputs}
    result = []
    for name, values in named.items():
        spec = specs.get(name)
        datatype = spec.datatype if spec else infer_datatype(name, values)
        data = to_array(name, datatype, values, None)
        if data.size == 0 and spec is not None and len(spec.shape) > 1 and all(d >= 0 for d in spec.shape[1:]):
            # JSON's [] has no inner dimensions; an empty batch keeps the signature's.
            data = data.reshape((0, *spec.shape[1:]))
        result.append(Tensor(name=name, datatype=datatype, data=data))
    return tuple(result)


def signature_specs(metadata: dict[str, Any], signature: str) -> ModelSchema:
    """Inputs and outputs of one signature from TF Serving's GET .../metadata JSON."""
    try:
        sigs = metadata["metadata"]["signature_def"]["signature_def"]
    except (KeyError, TypeError):
        raise BackendError("TF Serving metadata has no signature_def") from None
    if signature not in sigs:
        raise InvalidArgument(f"Serving signature name: \"{signature}\" not found in signature def")
    sig = sigs[signature]
    return ModelSchema(inputs=_specs(sig.get("inputs", {})), outputs=_specs(sig.get("outputs", {})))


def _specs(tensors: dict[str, Any]) -> tuple[TensorSpec, ...]:
    out = []
    for name, info in sorted(tensors.items()):
        shape_info = info.get("tensor_shape", {})
        dims = () if shape_info.get("unknown_rank") else tuple(
            int(d.get("size", -1)) for d in shape_info.get("dim", []))
        out.append(TensorSpec(name=name, datatype=TF_TO_V2.get(info.get("dtype", ""), "BYTES"), shape=dims))
    return tuple(out)


def encode_signature_metadata(name: str, version: str, schema: ModelSchema) -> bytes:
    """TF Serving's metadata JSON for a model whose schema comes from the routes file (non-TF backends)."""
    def tensors(specs: tuple[TensorSpec, ...]) -> dict[str, Any]:
        return {s.name: {
            "dtype": V2_TO_TF.get(s.datatype, "DT_INVALID"),
            "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in s.shape], "unknown_rank": False},
            "name": s.name,
        } for s in specs}

    return dumps({
        "model_spec": {"name": name, "signature_name": "", "version": version},
        "metadata": {"signature_def": {
            "signature_def": {DEFAULT_SIGNATURE: {
                "inputs": tensors(schema.inputs), "outputs": tensors(schema.outputs),
                "method_name": "tensorflow/serving/predict", "defaults": {},
            }},
        }},
    })
