"""TF Serving gRPC adapter: Predict with TensorProtos, GetModelMetadata and GetModelStatus on TF Serving's :8500."""

from __future__ import annotations

from typing import Any

from gateway.backends.base import DescribesTFSignatures, DescribesTFSignaturesProto, PassesTFPredict
from gateway.backends.endpoints import Dropped, Endpoint, EndpointPool, Unsent
from gateway.backends.grpc_channel import GrpcEndpoints, TargetNotLoaded
from gateway.backends.tfserving import Signatures
from gateway.codecs import tf_proto
from gateway.errors import BackendError, BackendTimeout, GatewayError
from gateway.protos import services as svc
from gateway.protos import tf_serving_pb2 as tfs
from gateway.routes.schema import BackendConfig
from gateway.types import InferRequest, InferResponse, ModelSchema, ModelStatus, Target


class TFServingGrpcBackend(PassesTFPredict, DescribesTFSignatures, DescribesTFSignaturesProto):
    def __init__(self, config: BackendConfig) -> None:
        if config.grpc_target is None:
            raise ValueError(f"backend '{config.name}' has no grpc_target")
        self.config = config
        self.endpoints = EndpointPool(config, config.inference_targets, probe=self._probe)
        self.channel = GrpcEndpoints(config, self.endpoints)
        # Metadata per (model, version): a loaded TF Serving version never changes its graph.
        self.signatures = Signatures()
        self._metadata: dict[tuple[str, str], tfs.GetModelMetadataResponse] = {}

    @staticmethod
    def _where(target: Target) -> str:
        return f"model '{target.model}' version {target.version}"

    async def infer(self, target: Target, request: InferRequest) -> InferResponse:
        resp = await self.channel.call(svc.TF_PREDICT, tf_proto.encode_predict_request(request, target),
                                       where=self._where(target))
        try:
            outputs = tf_proto.decode_predict_response(resp)
        except GatewayError as exc:
            raise BackendError(f"TF Serving's answer could not be read: {exc.message}") from None
        return InferResponse(outputs=outputs)

    async def forward_predict(self, target: Target, request: bytes) -> bytes:
        """A client's serialized PredictRequest sent on with only model_spec's name and version rewritten: the
        TensorProtos are neither decoded nor copied. The rewrite is appended on the wire: a parser merges a
        repeated message field and keeps the last scalar and oneof member, so the backend reads the target's name
        and version and the client's signature_name. The answer's bytes come back as TF Serving wrote them."""
        patch = tfs.PredictRequest()
        patch.model_spec.name = target.model
        patch.model_spec.version.value = int(target.version)
        return await self.channel.call_raw(svc.TF_PREDICT, request + patch.SerializeToString(),
                                           where=self._where(target))

    async def _probe(self, ep: Endpoint, limit: float) -> bool:
        """Serving when a model the routes send here has an AVAILABLE version there (asked in turn until one has);
        with no model routed here yet, when it answers at all."""
        channel = self.channel.channel(ep)
        for model in self.endpoints.models or ("",):
            try:
                resp = await channel.call(svc.TF_GET_MODEL_STATUS, tfs.GetModelStatusRequest(
                    model_spec=tfs.ModelSpec(name=model)), where="probe", timeout_s=limit)
            except (Unsent, Dropped, BackendTimeout):
                raise
            except GatewayError:
                if not model:
                    return True  # an answer: it serves
                continue
            if any(s.state == tfs.ModelVersionStatus.AVAILABLE for s in resp.model_version_status):
                return True
        return False

    async def status(self, target: Target) -> ModelStatus:
        try:
            resp = await self.channel.call(svc.TF_GET_MODEL_STATUS, tf_proto.status_request(target),
                                           where=self._where(target))
        except TargetNotLoaded as exc:
            return ModelStatus(version=target.version, state="END", error_message=exc.message)
        except GatewayError as exc:
            return ModelStatus(version=target.version, state="UNKNOWN", error_message=exc.message)
        return tf_proto.status_from_proto(resp, target.version)

    async def model_metadata(self, target: Target) -> tfs.GetModelMetadataResponse:
        """TF Serving's GetModelMetadata answer (every signature) for the target version, cached."""
        key = (target.model, target.version)
        cached = self._metadata.get(key)
        if cached is None:
            cached = await self.channel.call(svc.TF_GET_MODEL_METADATA, tf_proto.metadata_request(target),
                                             where=self._where(target))
            tf_proto.signature_map(cached)  # an answer without signatures is not cached
            self._metadata[key] = cached
        return cached

    async def metadata(self, target: Target) -> dict[str, Any]:
        """The same document TFServingBackend.metadata returns (TF Serving's REST metadata JSON)."""
        return tf_proto.metadata_to_json(await self.model_metadata(target))

    async def schema(self, target: Target, signature: str | None = None) -> ModelSchema:
        return await self.signatures.schema(target, signature, lambda: self.model_metadata(target),
                                            tf_proto.signature_schema)

    async def close(self) -> None:
        await self.endpoints.close()
        await self.channel.close()

