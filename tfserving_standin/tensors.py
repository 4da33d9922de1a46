"""TensorProto <-> numpy, with TF Serving's serialization choices."""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from tfserving_standin import dtypes
from tfserving_standin.status import invalid_argument

_INT_VAL = {types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8, types_pb2.DT_UINT16}


def to_ndarray(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
    """Tensor::FromProto; failures read "tensor parsing error: <alias>" as in saved_model/util.cc."""
    import tensorflow as tf

    if proto.dtype == types_pb2.DT_INVALID or proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"tensor parsing error: {alias}")
    if any(dim.size < 0 for dim in proto.tensor_shape.dim):
        raise invalid_argument(f"tensor parsing error: {alias}")
    try:
        array = tf.make_ndarray(proto)
    except Exception:
        raise invalid_argument(f"tensor parsing error: {alias}") from None
    expected = tuple(dim.size for dim in proto.tensor_shape.dim)
    if array.shape != expected:
        raise invalid_argument(f"tensor parsing error: {alias}")
    return array


def to_proto(array: np.ndarray, dtype: int, as_content: bool = False) -> tensor_pb2.TensorProto:
    """Tensor::AsProtoField (TF Serving's default) or AsProtoTensorContent."""
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=int(size))
    flat = array.reshape(-1)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
        return proto
    if as_content:
        proto.tensor_content = np.ascontiguousarray(flat.astype(dtypes.NUMPY[dtype], copy=False)).tobytes()
        return proto
    if dtype == types_pb2.DT_FLOAT:
        proto.float_val.extend(flat.tolist())
    elif dtype == types_pb2.DT_DOUBLE:
        proto.double_val.extend(flat.tolist())
    elif dtype in _INT_VAL:
        proto.int_val.extend(flat.astype(np.int64).tolist())
    elif dtype == types_pb2.DT_INT64:
        proto.int64_val.extend(flat.tolist())
    elif dtype == types_pb2.DT_UINT32:
        proto.uint32_val.extend(flat.tolist())
    elif dtype == types_pb2.DT_UINT64:
        proto.uint64_val.extend(flat.tolist())
    elif dtype == types_pb2.DT_BOOL:
        proto.bool_val.extend(flat.tolist())
    elif dtype in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        proto.half_val.extend(flat.view(np.uint16).astype(np.int32).tolist())
    elif dtype == types_pb2.DT_COMPLEX64:
        proto.scomplex_val.extend(np.stack([flat.real, flat.imag], axis=-1).reshape(-1).tolist())
    elif dtype == types_pb2.DT_COMPLEX128:
        proto.dcomplex_val.extend(np.stack([flat.real, flat.imag], axis=-1).reshape(-1).tolist())
    else:
        proto.tensor_content = np.ascontiguousarray(flat).tobytes()
    return proto
