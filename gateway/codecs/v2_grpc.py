"""Open Inference Protocol v2 gRPC (ModelInferRequest / ModelInferResponse) <-> InferRequest / InferResponse."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gateway.codecs.jsonio import dumps
from gateway.codecs.tensors import from_raw, to_raw
from gateway.errors import InvalidArgument, Unimplemented
from gateway.protos import v2_pb2 as v2
from gateway.types import V2_TO_NUMPY, InferRequest, InferResponse, ModelRef, ModelSchema, Target, Tensor

# The InferTensorContents field of each datatype; FP16 (and BF16) have none: they travel only as raw contents.
CONTENTS_FIELD: Mapping[str, str] = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
# Wire type of the fields shared by narrower types: values are range-checked before narrowing.
_WIDE = {"int_contents": np.dtype(np.int32), "uint_contents": np.dtype(np.uint32)}
# Parameters of the HTTP binary data extension mean nothing over gRPC (tensors are binary already).
_IGNORED_PARAMETERS = frozenset({"binary_data", "binary_data_output", "binary_data_size"})
_SHARED_MEMORY = "shared_memory_region"
_INT64_MAX = 2**63 - 1

InferTensor = v2.ModelInferRequest.InferInputTensor | v2.ModelInferResponse.InferOutputTensor


# ------------------------------------------------------------------------------------------------ decode


def decode_infer_request(req: v2.ModelInferRequest, model: ModelRef) -> InferRequest:
    """A client's ModelInferRequest. Inputs take their data from typed contents or, for all of them at once,
    from raw_input_contents (one entry per input, in order). Raises InvalidArgument naming the input."""
    if not req.inputs:
        raise InvalidArgument("'inputs' must be a non-empty list of tensors")
    for index, tensor in enumerate(req.inputs):
        if not tensor.name:
            raise InvalidArgument(f"inputs[{index}]: 'name' must be a non-empty string")
        if _SHARED_MEMORY in tensor.parameters:
            raise Unimplemented(f"input '{tensor.name}': shared memory inputs are not supported by the gateway")
    inputs = _decode_tensors(req.inputs, req.raw_input_contents, "input")
    if len({t.name for t in inputs}) != len(inputs):
        raise InvalidArgument("input names must be unique")
    for out in req.outputs:
        if _SHARED_MEMORY in out.parameters:
            raise Unimplemented(f"output '{out.name}': shared memory outputs are not supported by the gateway")
    return InferRequest(model=model, inputs=inputs, output_names=tuple(o.name for o in req.outputs),
                        id=req.id or None, parameters=decode_parameters(req.parameters))


def decode_infer_response(resp: v2.ModelInferResponse) -> InferResponse:
    """A v2 gRPC backend's answer (raw_output_contents or typed contents)."""
    outputs = _decode_tensors(resp.outputs, resp.raw_output_contents, "output")
    return InferResponse(outputs=outputs, model_name=resp.model_name, model_version=resp.model_version,
                         id=resp.id or None)


def _decode_tensors(tensors: Sequence[InferTensor], raw: Sequence[bytes], role: str) -> tuple[Tensor, ...]:
    if raw and len(raw) != len(tensors):
        raise InvalidArgument(f"raw_{role}_contents has {len(raw)} entries for {len(tensors)} {role}s: with raw "
                              f"contents every {role} needs one, in the order of the {role}s")
    return tuple(_decode_tensor(t, raw[i] if raw else None, role) for i, t in enumerate(tensors))


def _decode_tensor(tensor: InferTensor, raw: bytes | None, role: str) -> Tensor:
    name, datatype, what = tensor.name, tensor.datatype, f"{role} '{tensor.name}'"
    if datatype not in V2_TO_NUMPY:
        raise InvalidArgument(f"{what}: unsupported datatype '{datatype}'")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{what}: shape {list(shape)} must be non-negative integers")
    given = [f.name for f, _ in tensor.contents.ListFields()]
    if raw is not None:
        if given:
            raise InvalidArgument(f"{what}: contents must be empty when raw_{role}_contents is used")
        return Tensor(name, datatype, from_raw(name, datatype, raw, shape))
    return Tensor(name, datatype, _typed(what, datatype, tensor.contents, given, shape))


def _typed(what: str, datatype: str, contents: v2.InferTensorContents, given: list[str],
           shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(f"{what}: {datatype} data must be sent in raw contents (it has no typed field)")
    wrong = [g for g in given if g != field]
    if wrong:
        raise InvalidArgument(f"{what}: datatype {datatype} takes {field}, got {', '.join(wrong)}")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidArgument(f"{what}: shape {list(shape)} needs {count} elements, got {len(values)} in {field}")
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    wide = _WIDE.get(field)
    if wide is None or wide == dtype:
        return np.asarray(values, dtype=dtype).reshape(shape)
    raw = np.asarray(values, dtype=wide)
    info = np.iinfo(dtype)
    if raw.size and (int(raw.min()) < info.min or int(raw.max()) > info.max):
        raise InvalidArgument(f"{what}: a value is out of range for {datatype} [{info.min}, {info.max}]")
    return raw.astype(dtype).reshape(shape)


def decode_parameters(params: Mapping[str, v2.InferParameter]) -> dict[str, Any]:
    """InferParameter oneofs -> Python values; binary-data-extension parameters and unset ones are dropped."""
    out: dict[str, Any] = {}
    for key in sorted(params):
        choice = params[key].WhichOneof("parameter_choice")
        if choice is not None and key not in _IGNORED_PARAMETERS:
            out[key] = getattr(params[key], choice)
    return out


# ------------------------------------------------------------------------------------------------ encode


def encode_infer_response(response: InferResponse) -> v2.ModelInferResponse:
    """The answer to a client: data in raw_output_contents, as Triton does (tritonclient's as_numpy reads it)."""
    out = v2.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                id=response.id or "")
    for tensor in response.outputs:
        out.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    out.raw_output_contents.extend(to_raw(t) for t in response.outputs)
    return out


def encode_infer_request(request: InferRequest, target: Target, *, raw: bool = True) -> v2.ModelInferRequest:
    """The ModelInferRequest a v2 gRPC backend receives for `target`: raw_input_contents (one copy each), or typed
    contents with raw=False (FP16 has no typed field and is refused then)."""
    out = v2.ModelInferRequest(model_name=target.model, model_version=target.version, id=request.id or "")
    encode_parameters(request.parameters, out.parameters)
    for tensor in request.inputs:
        entry = out.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if not raw:
            entry.contents.CopyFrom(encode_contents(tensor))
    if raw:
        out.raw_input_contents.extend(to_raw(t) for t in request.inputs)
    out.outputs.extend(v2.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in request.output_names)
    return out


def encode_contents(tensor: Tensor) -> v2.InferTensorContents:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidArgument(f"tensor '{tensor.name}': {tensor.datatype} has no typed contents field; send it raw")
    contents = v2.InferTensorContents()
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        contents.bytes_contents.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    else:
        getattr(contents, field).extend(flat.tolist())
    return contents


def encode_parameters(params: Mapping[str, Any], into: Any) -> None:
    """Python values -> InferParameter map entries. int64 overflow goes to uint64_param; values with no
    InferParameter kind (lists, objects, null) travel as their JSON text in string_param."""
    for key, value in params.items():
        try:
            _set_parameter(into[key], value)
        except ValueError:
            raise InvalidArgument(f"parameter '{key}': {value} does not fit a 64-bit integer") from None


def _set_parameter(param: v2.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int) and value > _INT64_MAX:
        param.uint64_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    elif isinstance(value, str):
        param.string_param = value
    else:
        param.string_param = dumps(value).decode()


def encode_model_metadata(name: str, versions: Sequence[str], platform: str,
                          schema: ModelSchema) -> v2.ModelMetadataResponse:
    Meta = v2.ModelMetadataResponse.TensorMetadata
    return v2.ModelMetadataResponse(
        name=name, versions=list(versions), platform=platform,
        inputs=[Meta(name=s.name, datatype=s.datatype, shape=s.shape) for s in schema.inputs],
        outputs=[Meta(name=s.name, datatype=s.datatype, shape=s.shape) for s in schema.outputs],
    )
