"""The interface every backend adapter implements, the optional capabilities some have, and the registry that
owns their clients.

Every adapter translates the internal InferRequest (``infer``). Some can also take a client's body in their own
protocol unchanged, or describe a model in their own terms; they say so by subclassing a capability below, and
the data plane (``DataPlane.passthrough`` / ``capability``) hands a front the backend as that capability, so no
front knows an adapter class.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, Protocol

from gateway.protos import tf_serving_pb2 as tfs
from gateway.routes.schema import BackendConfig
from gateway.types import InferRequest, InferResponse, ModelSchema, ModelStatus, Target


class Backend(Protocol):
    config: BackendConfig

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
    """Takes a TF Serving gRPC PredictRequest as it is (only model_spec is rewritten)."""

    @abstractmethod
    async def forward_predict(self, target: Target, request: tfs.PredictRequest) -> tfs.PredictResponse: ...


class DescribesTFSignatures(ABC):
    """Answers TF Serving's own model metadata (every signature), as TF Serving's REST JSON."""

    @abstractmethod
    async def metadata(self, target: Target) -> dict[str, Any]: ...


class DescribesTFSignaturesProto(ABC):
    """Answers TF Serving's own GetModelMetadata response."""

    @abstractmethod
    async def model_metadata(self, target: Target) -> tfs.GetModelMetadataResponse: ...


class Backends:
    """Backend clients keyed by their whole config, so a routes change to a URL or timeout gets a new client
    (a client is never reused for a config it was not built for). Closed together on shutdown."""

    def __init__(self) -> None:
        self._clients: dict[BackendConfig, Backend] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, config: BackendConfig) -> Backend:
        client = self._clients.get(config)
        if client is None:
            client = self._clients[config] = _create(config)
        return client

    def retire_unused(self, active: Iterable[BackendConfig]) -> None:
        """After a routes change: clients built for configs the new table no longer uses are closed once the
        calls they may still carry have had their full timeout to finish."""
        keep = set(active)
        for config in [c for c in self._clients if c not in keep]:
            task = asyncio.create_task(self._close_later(self._clients.pop(config), config.timeout_s + 1))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_later(client: Backend, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await client.close()

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


def _create(config: BackendConfig) -> Backend:
    # Imported here so the registry does not depend on every adapter module at import time.
    if config.kind == "tfserving":
        if config.transport == "grpc":
            from gateway.backends.tfserving_grpc import TFServingGrpcBackend

            return TFServingGrpcBackend(config)
        from gateway.backends.tfserving import TFServingBackend

        return TFServingBackend(config)
    if config.transport == "grpc":
        from gateway.backends.torchserve_grpc import TorchServeGrpcBackend

        return TorchServeGrpcBackend(config)
    from gateway.backends.torchserve import TorchServeBackend

    return TorchServeBackend(config)
