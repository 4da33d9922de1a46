"""Internal request/response types: the one shape every codec decodes to and encodes from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

# Open Inference Protocol v2 datatypes -> numpy dtypes. BYTES tensors hold numpy object arrays of bytes.
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
NUMPY_TO_V2: dict[np.dtype[Any], str] = {v: k for k, v in V2_TO_NUMPY.items()}

BackendKind = Literal["tfserving", "torchserve"]
Transport = Literal["rest", "grpc"]


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor. `data` is a numpy array already shaped; BYTES tensors are object arrays of bytes."""

    name: str
    datatype: str
    data: np.ndarray[Any, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Declared name, datatype and shape of a model input or output; -1 marks a free dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelSchema:
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelRef:
    """What the client asked for: a logical model and at most one of version or label."""

    name: str
    version: str | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: one backend, the model's name and version there, and the logical identity."""

    backend: str
    model: str
    version: str
    logical_model: str
    logical_version: str


@dataclass(frozen=True, slots=True)
class InferRequest:
    model: ModelRef
    inputs: tuple[Tensor, ...]
    output_names: tuple[str, ...] = ()
    id: str | None = None
    signature_name: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # Outputs the client wants as raw bytes (v2 binary data extension); "*" means all of them.
    binary_outputs: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class InferResponse:
    outputs: tuple[Tensor, ...]
    model_name: str = ""
    model_version: str = ""
    id: str | None = None


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One version's state as TF Serving names them (AVAILABLE, LOADING, UNAVAILABLE ...)."""

    version: str
    state: str
    error_message: str = ""
