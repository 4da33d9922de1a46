"""Tensor conversion shared by the JSON codecs: JSON values <-> numpy arrays with clear errors."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from gateway.errors import InvalidArgument
from gateway.types import V2_TO_NUMPY, Tensor

_INT_BOUNDS = {dt: (int(np.iinfo(V2_TO_NUMPY[dt]).min), int(np.iinfo(V2_TO_NUMPY[dt]).max))
               for dt in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")}


def to_array(name: str, datatype: str, values: Any, shape: tuple[int, ...] | None) -> np.ndarray[Any, Any]:
    """JSON values (flat or nested) -> array of `datatype`, reshaped to `shape` when given.

    Raises InvalidArgument naming the tensor for unknown datatypes, ragged lists, values of the wrong kind
    (a string in FP32, a float in INT32, a number in BOOL), out-of-range integers and element-count mismatches.
    """
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"input '{name}': unsupported datatype '{datatype}'")
    if datatype == "BYTES":
        arr = _bytes_array(name, values)
    else:
        try:
            raw = np.asarray(values)
        except ValueError:
            raise InvalidArgument(f"input '{name}': nested lists are ragged (rows of different lengths)") from None
        arr = _typed(name, datatype, raw)
    if shape is not None:
        expected = math.prod(shape)
        if arr.size != expected:
            raise InvalidArgument(
                f"input '{name}': shape {list(shape)} needs {expected} elements, got {arr.size}")
        arr = arr.reshape(shape)
    return arr


def _typed(name: str, datatype: str, raw: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    kind = raw.dtype.kind
    if raw.size == 0:
        return raw.astype(V2_TO_NUMPY[datatype])
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidArgument(f"input '{name}': datatype BOOL needs true/false values")
        return raw
    if kind not in "iuf":
        raise InvalidArgument(f"input '{name}': datatype {datatype} needs numbers, got {_describe(raw)}")
    if datatype.startswith("FP"):
        return raw.astype(V2_TO_NUMPY[datatype])
    if kind == "f":
        raise InvalidArgument(f"input '{name}': datatype {datatype} needs integers, got floating point values")
    lo, hi = _INT_BOUNDS[datatype]
    if kind != "b" and (int(raw.min()) < lo or int(raw.max()) > hi):
        raise InvalidArgument(f"input '{name}': a value is out of range for {datatype} [{lo}, {hi}]")
    return raw.astype(V2_TO_NUMPY[datatype])


def _describe(raw: np.ndarray[Any, Any]) -> str:
    if raw.dtype.kind == "b":
        return "true/false values"
    return "strings" if raw.dtype.kind in "US" else "values of mixed or non-numeric types"


def _bytes_array(name: str, values: Any) -> np.ndarray[Any, Any]:
    flat: list[bytes] = []
    shape = _collect_bytes(name, values, flat, 0)
    arr = np.empty(len(flat), dtype=object)
    arr[:] = flat
    return arr.reshape(shape) if shape else arr.reshape(())


MAX_RANK = 64  # numpy's limit; deeper nesting is refused rather than recursed into


def _collect_bytes(name: str, value: Any, out: list[bytes], depth: int) -> tuple[int, ...]:
    if depth > MAX_RANK:
        raise InvalidArgument(f"input '{name}': nested more than {MAX_RANK} levels deep")
    if isinstance(value, list):
        shapes = {_collect_bytes(name, v, out, depth + 1) for v in value}
        if len(shapes) > 1:
            raise InvalidArgument(f"input '{name}': nested lists are ragged (rows of different lengths)")
        return (len(value), *(shapes.pop() if shapes else ()))
    out.append(bytes_value(name, value))
    return ()


def bytes_value(name: str, value: Any) -> bytes:
    """A BYTES element: a string (UTF-8) or TF Serving's {"b64": "..."} object."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise InvalidArgument(f"input '{name}': invalid base64 in {{\"b64\": ...}}") from None
    raise InvalidArgument(f"input '{name}': datatype BYTES needs strings, got {type(value).__name__}")


def infer_datatype(name: str, values: Any) -> str:
    """The v2 datatype for JSON values with no declared type (TF JSON to a backend without a schema)."""
    probe = values
    while isinstance(probe, list) and probe:
        probe = probe[0]
    if isinstance(probe, str | dict):
        return "BYTES"
    try:
        kind = np.asarray(values).dtype.kind
    except ValueError:
        raise InvalidArgument(f"input '{name}': nested lists are ragged (rows of different lengths)") from None
    return {"b": "BOOL", "i": "INT64", "u": "INT64", "f": "FP32"}.get(kind, "FP32")


def non_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether any float tensor holds NaN or +/-Infinity (JSON encoders must then write those tokens)."""
    return any(t.data.dtype.kind == "f" and not np.isfinite(t.data).all() for t in tensors)


def to_json_values(tensor: Tensor, *, b64: bool = False) -> Any:
    """Array -> nested JSON-ready lists; BYTES as UTF-8 strings, or {"b64": ...} when asked or not UTF-8."""
    if tensor.datatype != "BYTES":
        return tensor.data.tolist()
    return _bytes_json(tensor.data.tolist(), b64)


def _bytes_json(value: Any, b64: bool) -> Any:
    if isinstance(value, list):
        return [_bytes_json(v, b64) for v in value]
    raw = value if isinstance(value, bytes) else str(value).encode()
    if not b64:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(raw).decode()}


def from_raw(name: str, datatype: str, raw: bytes, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """The v2 binary tensor layout (REST binary extension and gRPC raw contents): little-endian row-major
    values; BYTES as a 4-byte little-endian length before each element."""
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"input '{name}': unsupported datatype '{datatype}'")
    count = math.prod(shape)
    if datatype == "BYTES":
        items = _split_bytes(name, raw)
        if len(items) != count:
            raise InvalidArgument(f"input '{name}': shape {list(shape)} needs {count} elements, got {len(items)}")
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(f"input '{name}': {datatype} shape {list(shape)} needs {expected} bytes of raw data, "
                              f"got {len(raw)}")
    arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
    if datatype == "BOOL" and raw.translate(None, b"\x00\x01"):
        raise InvalidArgument(f"input '{name}': BOOL raw data must be bytes 0 or 1")
    return arr.astype(dtype, copy=False)


def _split_bytes(name: str, raw: bytes) -> list[bytes]:
    items: list[bytes] = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidArgument(f"input '{name}': BYTES raw data ends inside a length prefix")
        size = int.from_bytes(raw[offset:offset + 4], "little")
        offset += 4
        if offset + size > end:
            raise InvalidArgument(f"input '{name}': BYTES element of {size} bytes runs past the raw data")
        items.append(raw[offset:offset + size])
        offset += size
    return items


def to_raw(tensor: Tensor) -> bytes:
    """Inverse of from_raw."""
    if tensor.datatype != "BYTES":
        return np.ascontiguousarray(tensor.data, dtype=tensor.data.dtype.newbyteorder("<")).tobytes()
    parts = []
    for item in tensor.data.reshape(-1).tolist():
        value = item if isinstance(item, bytes) else str(item).encode()
        parts.append(len(value).to_bytes(4, "little"))
        parts.append(value)
    return b"".join(parts)
