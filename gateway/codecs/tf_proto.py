"""TF Serving gRPC messages (PredictRequest, TensorProto, metadata, status) <-> InferRequest / InferResponse."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from google.protobuf import json_format

from gateway.codecs.tensors import to_raw
from gateway.codecs.tf_json import DEFAULT_SIGNATURE
from gateway.errors import BackendError, InvalidArgument
from gateway.protos import pack_any, unpack_any
from gateway.protos import tf_error_codes_pb2 as tf_error
from gateway.protos import tf_framework_pb2 as tf
from gateway.protos import tf_serving_pb2 as tfs
from gateway.types import (
    V2_TO_NUMPY,
    InferRequest,
    InferResponse,
    ModelRef,
    ModelSchema,
    ModelStatus,
    Target,
    Tensor,
    TensorSpec,
)

_DT = tf.DataType
DTYPE_TO_V2: Mapping[int, str] = {
    _DT.DT_FLOAT: "FP32", _DT.DT_DOUBLE: "FP64", _DT.DT_HALF: "FP16", _DT.DT_INT8: "INT8", _DT.DT_INT16: "INT16",
    _DT.DT_INT32: "INT32", _DT.DT_INT64: "INT64", _DT.DT_UINT8: "UINT8", _DT.DT_UINT16: "UINT16",
    _DT.DT_UINT32: "UINT32", _DT.DT_UINT64: "UINT64", _DT.DT_BOOL: "BOOL", _DT.DT_STRING: "BYTES",
}
V2_TO_DTYPE: Mapping[str, int] = {v: k for k, v in DTYPE_TO_V2.items()}

# The typed TensorProto field each datatype travels in when tensor_content is empty (tensor.proto's comments).
_TYPED_FIELD = {
    "FP32": "float_val", "FP64": "double_val", "FP16": "half_val", "INT8": "int_val", "INT16": "int_val",
    "INT32": "int_val", "UINT8": "int_val", "UINT16": "int_val", "INT64": "int64_val", "UINT32": "uint32_val",
    "UINT64": "uint64_val", "BOOL": "bool_val", "BYTES": "string_val",
}
# Wire type of each typed field: values are range-checked before narrowing (TF would truncate silently).
_FIELD_DTYPE = {"int_val": np.dtype(np.int32), "half_val": np.dtype(np.int32)}
_STATE_NAMES = frozenset(tfs.ModelVersionStatus.State.keys())


# ----------------------------------------------------------------------------------------------- tensors


MAX_FILL_ELEMENTS = 1 << 24  # TF's one-value-fills-the-shape rule, bounded


def tensor_from_proto(name: str, proto: tf.TensorProto, role: str = "input") -> Tensor:
    """A TensorProto -> Tensor. Values come from tensor_content (raw little-endian) or from the dtype's typed
    field, where ONE value fills the whole shape (TF's rule). Raises InvalidArgument naming the tensor for an
    unsupported dtype, an unknown rank or dimension, and an element count that does not match the shape."""
    what = f"{role} '{name}'"
    datatype = DTYPE_TO_V2.get(proto.dtype)
    if datatype is None:
        raise InvalidArgument(f"{what}: unsupported dtype {_dtype_name(proto.dtype)}")
    shape = _shape(what, proto.tensor_shape)
    if proto.tensor_content:
        return Tensor(name, datatype, _from_content(what, datatype, proto.tensor_content, shape))
    field = _TYPED_FIELD[datatype]
    values = getattr(proto, field)
    count, given = math.prod(shape), len(values)
    if given != count and not (given == 1 and count > 1):
        raise InvalidArgument(f"{what}: shape {list(shape)} needs {count} elements, got {given} in {field}")
    if given != count and count > MAX_FILL_ELEMENTS:
        # A few bytes on the wire must not become gigabytes in the gateway.
        raise InvalidArgument(f"{what}: one value may fill at most {MAX_FILL_ELEMENTS} elements, shape "
                              f"{list(shape)} has {count}; send the values (or tensor_content) instead")
    arr = _typed_values(what, datatype, field, values)
    if given != count:
        arr = np.full(shape, arr[0], dtype=arr.dtype) if datatype != "BYTES" else _bytes_fill(arr[0], shape)
    return Tensor(name, datatype, arr.reshape(shape))


def _dtype_name(dtype: int) -> str:
    try:
        return str(_DT.Name(dtype))
    except ValueError:
        return str(dtype)


def _shape(what: str, shape: tf.TensorShapeProto) -> tuple[int, ...]:
    if shape.unknown_rank:
        raise InvalidArgument(f"{what}: tensor_shape has unknown_rank set; a tensor needs a known shape")
    dims = tuple(int(d.size) for d in shape.dim)
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"{what}: tensor_shape {list(dims)} has an unknown (negative) dimension")
    return dims


def _from_content(what: str, datatype: str, content: bytes, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        raise InvalidArgument(f"{what}: DT_STRING values travel in string_val, not tensor_content")
    dtype = V2_TO_NUMPY[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(content) != expected:
        raise InvalidArgument(f"{what}: {datatype} shape {list(shape)} needs {expected} bytes of tensor_content, "
                              f"got {len(content)}")
    if datatype == "BOOL" and content.translate(None, b"\x00\x01"):
        raise InvalidArgument(f"{what}: BOOL tensor_content must be bytes 0 or 1")
    return np.frombuffer(content, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)


def _typed_values(what: str, datatype: str, field: str, values: Any) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        arr = np.empty(len(values), dtype=object)
        arr[:] = list(values)
        return arr
    wire = _FIELD_DTYPE.get(field)
    if wire is None:
        return np.asarray(values, dtype=V2_TO_NUMPY[datatype])
    raw = np.asarray(values, dtype=wire)
    target = np.dtype(np.uint16) if datatype == "FP16" else V2_TO_NUMPY[datatype]
    info = np.iinfo(target)
    if raw.size and (int(raw.min()) < info.min or int(raw.max()) > info.max):
        raise InvalidArgument(f"{what}: a value in {field} is out of range for {datatype} [{info.min}, {info.max}]")
    narrowed = raw.astype(target)
    # half_val carries the 16 bits of each IEEE half in an int32.
    return narrowed.view(np.float16) if datatype == "FP16" else narrowed


def _bytes_fill(value: bytes, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    arr = np.empty(math.prod(shape), dtype=object)
    arr[:] = [value] * arr.size
    return arr


def tensor_to_proto(tensor: Tensor) -> tf.TensorProto:
    """Tensor -> TensorProto: numbers as tensor_content (one copy, what TF Serving answers with), BYTES in
    string_val."""
    dtype = V2_TO_DTYPE.get(tensor.datatype)
    if dtype is None:
        raise InvalidArgument(f"tensor '{tensor.name}': datatype {tensor.datatype} has no TensorFlow dtype")
    proto = tf.TensorProto(dtype=dtype)  # type: ignore[arg-type]
    proto.tensor_shape.dim.extend(tf.TensorShapeProto.Dim(size=d) for d in tensor.shape)
    if tensor.datatype == "BYTES":
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in tensor.data.reshape(-1))
    elif tensor.data.size:
        proto.tensor_content = to_raw(tensor)
    return proto


# ----------------------------------------------------------------------------------------------- predict


def model_ref(spec: tfs.ModelSpec) -> ModelRef:
    """What a ModelSpec asks for: a name and at most one of a version (Int64Value) or a label."""
    version = str(spec.version.value) if spec.HasField("version") else None
    return ModelRef(name=spec.name, version=version, label=spec.version_label or None)


def input_specs(req: tfs.PredictRequest) -> list[TensorSpec]:
    """Name, datatype and shape of each input from the TensorProto headers alone (no tensor data decoded)."""
    return [TensorSpec(name, DTYPE_TO_V2.get(proto.dtype, _dtype_name(proto.dtype)),
                       _shape(f"input '{name}'", proto.tensor_shape)) for name, proto in req.inputs.items()]


def decode_predict_request(req: tfs.PredictRequest) -> InferRequest:
    """A client's PredictRequest (the TF-compatible gRPC front)."""
    if not req.HasField("model_spec"):
        raise InvalidArgument("Missing ModelSpec")
    inputs = tuple(tensor_from_proto(name, req.inputs[name]) for name in sorted(req.inputs))
    return InferRequest(model=model_ref(req.model_spec), inputs=inputs, output_names=tuple(req.output_filter),
                        signature_name=req.model_spec.signature_name or DEFAULT_SIGNATURE)


def encode_predict_response(response: InferResponse, model_name: str, version: str,
                            signature_name: str = DEFAULT_SIGNATURE) -> tfs.PredictResponse:
    """The answer to a client; model_spec names the (logical) version actually served, as TF Serving does."""
    out = tfs.PredictResponse(model_spec=model_spec(model_name, version, signature_name))
    for tensor in response.outputs:
        out.outputs[tensor.name].CopyFrom(tensor_to_proto(tensor))
    return out


def encode_predict_request(request: InferRequest, target: Target) -> tfs.PredictRequest:
    """The PredictRequest a TF Serving backend receives for `target` (its model name and version there)."""
    out = tfs.PredictRequest(model_spec=model_spec(target.model, target.version, request.signature_name or ""),
                             output_filter=list(request.output_names))
    for tensor in request.inputs:
        out.inputs[tensor.name].CopyFrom(tensor_to_proto(tensor))
    return out


def decode_predict_response(resp: tfs.PredictResponse) -> tuple[Tensor, ...]:
    """A TF Serving backend's outputs, in name order; unreadable tensors raise InvalidArgument."""
    return tuple(tensor_from_proto(name, resp.outputs[name], "output") for name in sorted(resp.outputs))


def model_spec(name: str, version: str, signature_name: str = "") -> tfs.ModelSpec:
    """The ModelSpec an answer names: the (logical) model and version actually served."""
    spec = tfs.ModelSpec(name=name, signature_name=signature_name)
    spec.version.value = _version_number(version)
    return spec


def _version_number(version: str) -> int:
    try:
        return int(version)
    except ValueError:
        raise InvalidArgument(f"version {version!r} is not a number; TF Serving versions are integers") from None


# ---------------------------------------------------------------------------------------------- metadata


def metadata_request(target: Target) -> tfs.GetModelMetadataRequest:
    return tfs.GetModelMetadataRequest(model_spec=model_spec(target.model, target.version),
                                       metadata_field=["signature_def"])


def signature_map(metadata: tfs.GetModelMetadataResponse) -> tfs.SignatureDefMap:
    """The SignatureDefMap packed in the metadata response's "signature_def" Any."""
    packed = metadata.metadata.get("signature_def")
    found = None if packed is None else unpack_any(packed, tfs.SignatureDefMap)
    if found is None:
        raise BackendError("TF Serving metadata has no signature_def")
    return found


def signature_schema(metadata: tfs.GetModelMetadataResponse, signature: str) -> ModelSchema:
    """Inputs and outputs of one signature (same rules as tf_json.signature_specs for the REST metadata)."""
    sigs = signature_map(metadata).signature_def
    if signature not in sigs:
        raise InvalidArgument(f"Serving signature name: \"{signature}\" not found in signature def")
    sig = sigs[signature]
    return ModelSchema(inputs=_specs(sig.inputs), outputs=_specs(sig.outputs))


def _specs(infos: Mapping[str, tf.TensorInfo]) -> tuple[TensorSpec, ...]:
    out = []
    for name in sorted(infos):
        info = infos[name]
        dims = () if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
        out.append(TensorSpec(name=name, datatype=DTYPE_TO_V2.get(info.dtype, "BYTES"), shape=dims))
    return tuple(out)


def encode_metadata_response(name: str, version: str, schema: ModelSchema) -> tfs.GetModelMetadataResponse:
    """GetModelMetadata's answer for a model whose schema comes from the routes file: one serving_default
    predict signature."""
    sig = tf.SignatureDef(method_name="tensorflow/serving/predict")
    for specs, infos in ((schema.inputs, sig.inputs), (schema.outputs, sig.outputs)):
        for s in specs:
            info = infos[s.name]
            info.name = s.name
            info.dtype = V2_TO_DTYPE.get(s.datatype, _DT.DT_INVALID)
            info.tensor_shape.dim.extend(tf.TensorShapeProto.Dim(size=d) for d in s.shape)
    sigs = tfs.SignatureDefMap()
    sigs.signature_def[DEFAULT_SIGNATURE].CopyFrom(sig)
    out = tfs.GetModelMetadataResponse(model_spec=model_spec(name, version))
    out.metadata["signature_def"].CopyFrom(pack_any(sigs))
    return out


def metadata_to_json(metadata: tfs.GetModelMetadataResponse) -> dict[str, Any]:
    """TF Serving's REST metadata document for the same answer (the Any unpacked), as TFServingBackend.metadata
    returns it: int64 values as strings, every field printed."""
    def as_dict(message: Any) -> dict[str, Any]:
        doc: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                                        always_print_fields_with_no_presence=True)
        return doc

    return {"model_spec": as_dict(metadata.model_spec),
            "metadata": {"signature_def": as_dict(signature_map(metadata))}}


# ------------------------------------------------------------------------------------------------ status


def status_request(target: Target) -> tfs.GetModelStatusRequest:
    return tfs.GetModelStatusRequest(model_spec=model_spec(target.model, target.version))


def statuses_from_proto(resp: tfs.GetModelStatusResponse) -> tuple[ModelStatus, ...]:
    return tuple(ModelStatus(version=str(s.version), state=tfs.ModelVersionStatus.State.Name(s.state),
                             error_message=s.status.error_message) for s in resp.model_version_status)


def status_from_proto(resp: tfs.GetModelStatusResponse, version: str | None = None) -> ModelStatus:
    """`version`'s entry (else the first one, as the REST adapter reads it); UNKNOWN when there is none."""
    found = statuses_from_proto(resp)
    for status in found:
        if version is None or status.version == version:
            return status
    return ModelStatus(version=version or "", state="UNKNOWN",
                       error_message="TF Serving's status answer lists no such version")


def encode_status_response(statuses: Iterable[ModelStatus]) -> tfs.GetModelStatusResponse:
    """GetModelStatus's answer; a state TF Serving does not name becomes UNKNOWN."""
    out = tfs.GetModelStatusResponse()
    for s in statuses:
        state = s.state if s.state in _STATE_NAMES else "UNKNOWN"
        entry = out.model_version_status.add(version=_version_number(s.version),
                                             state=tfs.ModelVersionStatus.State.Value(state))
        entry.status.error_code = tf_error.Code.Value(status_error_code(s))
        entry.status.error_message = s.error_message
    return out


def status_error_code(status: ModelStatus) -> str:
    """The error code TF Serving puts next to a state (the rule the REST front uses too)."""
    if status.state == "AVAILABLE" or not status.error_message:
        return "OK"
    return "UNAVAILABLE" if status.state == "UNKNOWN" else "UNKNOWN"
