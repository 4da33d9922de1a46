"""The interface every backend adapter implements, and the optional capabilities some have (the registry that
owns the adapters' clients is registry.py).

Every adapter translates the internal InferRequest (``infer``). Some can also take a client's body in their own
protocol unchanged, or describe a model in their own terms; they say so by subclassing a capability below, and
the data plane (``DataPlane.passthrough`` / ``capability``) hands a front the backend as that capability, so no
front knows an adapter class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

from gateway.backends.endpoints import EndpointPool
from gateway.protos import tf_serving_pb2 as tfs
from gateway.routes.schema import BackendConfig
from gateway.types import InferRequest, InferResponse, ModelSchema, ModelStatus, Target


class Backend(Protocol):
    config: BackendConfig
    endpoints: EndpointPool  # its inference endpoints: balanced, health-checked, ejected (endpoints.py)

    async def infer(self, target: Target, request: InferRequest) -> InferResponse:
        """Translate, send, and translate back; raises GatewayError subclasses only."""
        ...

    async def status(self, target: Target) -> ModelStatus:
        ...

    async def schema(self, target: Target, signature: str | None = None) -> ModelSchema | None:
        """The target's tensors as the backend reports them; None when the backend cannot tell."""
        ...

    async def close(self) -> None:
        ...


# --- capabilities: what some backends do beyond infer() ----------------------------------------------------------

class PassesPredictions(ABC):
    """Takes TorchServe ``/predictions`` bodies as they are (any content type) to the handler, and answers with the
    handler's own body."""

    @abstractmethod
    async def forward_predictions(self, target: Target, body: bytes, content_type: str) -> tuple[bytes, str]:
        """(answer body, its content type)."""


class PassesTFRest(ABC):
    """Takes TF Serving REST bodies (``:predict``, ``:classify``, ``:regress``) as they are."""

    @abstractmethod
    async def forward_tf_rest(self, target: Target, verb: str, body: bytes) -> bytes:
        """TF Serving's JSON answer to ``verb`` (predict, classify, regress)."""


class PassesTFPredict(ABC):
    """Takes a client's serialized TF Serving PredictRequest as it is (only model_spec is rewritten, by appending
    to the bytes) and answers with TF Serving's serialized PredictResponse, neither parsed nor copied into
    messages."""

    @abstractmethod
    async def forward_predict(self, target: Target, request: bytes) -> bytes: ...


class DescribesTFSignatures(ABC):
    """Answers TF Serving's own model metadata (every signature), as TF Serving's REST JSON."""

    @abstractmethod
    async def metadata(self, target: Target) -> dict[str, Any]: ...


class DescribesTFSignaturesProto(ABC):
    """Answers TF Serving's own GetModelMetadata response."""

    @abstractmethod
    async def model_metadata(self, target: Target) -> tfs.GetModelMetadataResponse: ...
