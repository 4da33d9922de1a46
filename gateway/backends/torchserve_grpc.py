"""TorchServe gRPC adapter: inference via InferenceAPIsService/Predictions (the v2 JSON handlers read
data[i]["body"]), status via ManagementAPIsService/DescribeModel; token auth as "authorization" metadata."""

from __future__ import annotations

import json
from typing import TypeVar

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from gateway.backends.base import PassesPredictions
from gateway.backends.endpoints import Endpoint, EndpointPool
from gateway.backends.grpc_channel import GrpcChannel, GrpcEndpoints, TargetNotLoaded
from gateway.backends.http import HttpClient
from gateway.backends.torchserve import described_status
from gateway.backends.torchserve_errors import GRPC_AS_HTTP, NO_WORKER, answer_error, grpc_details
from gateway.backends.torchserve_keys import KeyRefresher, TokenFile
from gateway.codecs import v2_json
from gateway.errors import BackendError, GatewayError
from gateway.protos import services as svc
from gateway.protos import torchserve_inference_pb2 as tsi
from gateway.protos import torchserve_management_pb2 as tsm
from gateway.routes.schema import BackendConfig
from gateway.types import InferRequest, InferResponse, ModelSchema, ModelStatus, Target

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
# Codes that are TorchServe's answer even when its details name no exception (grpc's own failures never use them).
_ANSWERS = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                      grpc.StatusCode.UNAUTHENTICATED})


class TorchServeGrpcBackend(PassesPredictions):
    def __init__(self, config: BackendConfig, http_client: str = "aiohttp") -> None:
        if config.grpc_target is None:
            raise ValueError(f"backend '{config.name}' has no grpc_target")
        self.config = config
        self.endpoints = EndpointPool(config, config.inference_targets, probe=self._probe)
        self.inference = GrpcEndpoints(config, self.endpoints, refine=self._refine)
        self.management = (None if config.grpc_management_target is None
                           else GrpcChannel(config, config.grpc_management_target, refine=self._refine))
        self.http = HttpClient(config, client=http_client)  # only for key rotation (REST management API)
        self.keys = KeyRefresher(config, TokenFile(config.token_file), self.http)

    @staticmethod
    def _where(target: Target) -> str:
        return f"model '{target.model}' version {target.version}"

    async def _call(self, kind: str, channel: GrpcChannel | GrpcEndpoints, method: svc.Method[Req, Resp],
                    request: Req, where: str) -> Resp:
        """One call with the `kind` bearer key (a refused key is refreshed once: backends/torchserve_keys.py)."""
        return await self.keys.call(kind, lambda key: channel.call(
            method, request, where=where, metadata=() if key is None else (("authorization", f"Bearer {key}"),)))

    async def _predict(self, target: Target, body: bytes) -> bytes:
        request = tsi.PredictionsRequest(model_name=target.model, model_version=target.version,
                                         input={"body": body})
        resp = await self._call("inference", self.inference, svc.TS_PREDICTIONS, request, self._where(target))
        return resp.prediction

    async def infer(self, target: Target, request: InferRequest) -> InferResponse:
        prediction = await self._predict(target, v2_json.encode_request(request))
        try:
            return v2_json.decode_response(prediction)
        except GatewayError as exc:
            raise BackendError(f"TorchServe's answer is not a v2 inference response: {exc.message}") from None

    async def forward_predictions(self, target: Target, body: bytes, content_type: str) -> tuple[bytes, str]:
        """The body goes to the handler unchanged as data[0]["body"]. gRPC carries no content type: the answer
        is called JSON when it looks like JSON."""
        prediction = await self._predict(target, body)
        looks_json = prediction.lstrip()[:1] in (b"{", b"[", b'"')
        return prediction, "application/json" if looks_json else "application/octet-stream"

    async def status(self, target: Target) -> ModelStatus:
        if self.management is None:
            return ModelStatus(version=target.version, state="UNKNOWN",
                               error_message=f"backend '{self.config.name}' has no grpc_management_target")
        request = tsm.DescribeModelRequest(model_name=target.model, model_version=target.version)
        try:
            resp = await self._call("management", self.management, svc.TS_DESCRIBE_MODEL, request,
                                    self._where(target))
        except TargetNotLoaded as exc:
            return ModelStatus(version=target.version, state="END", error_message=exc.message)
        except GatewayError as exc:
            return ModelStatus(version=target.version, state="UNKNOWN", error_message=exc.message)
        return described_status(target.version, resp.msg)

    async def schema(self, target: Target, signature: str | None = None) -> ModelSchema | None:
        # TorchServe does not describe tensors; the routes file's schema is the source for its models.
        return None

    async def _probe(self, ep: Endpoint, limit: float) -> bool:
        """TorchServe's Ping on that endpoint: serving while its health says Healthy (or Partial Healthy)."""
        channel = self.inference.channel(ep)
        resp = await self.keys.call("inference", lambda key: channel.call(
            svc.TS_PING, empty_pb2.Empty(), where="ping", timeout_s=limit,
            metadata=() if key is None else (("authorization", f"Bearer {key}"),)))
        try:
            status = str(json.loads(resp.health).get("status", ""))
        except (ValueError, AttributeError):
            return False
        return status.endswith("Healthy") and status != "Unhealthy"

    def _refine(self, code: grpc.StatusCode, details: str, where: str) -> GatewayError | None:
        """TorchServe's answers read as over REST (gateway/backends/torchserve_errors.py); None: not TorchServe's
        own answer (no exception named, no known code), for the generic status mapping."""
        message, kind = grpc_details(details)
        if not kind and NO_WORKER not in message and code not in _ANSWERS:
            return None
        return answer_error(f"backend '{self.config.name}' {where}", GRPC_AS_HTTP.get(code, 500), kind, message)

    async def close(self) -> None:
        await self.endpoints.close()
        await self.inference.close()
        if self.management is not None:
            await self.management.close()
        await self.http.close()
