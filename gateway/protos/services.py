"""The public gRPC method paths the gateway serves or calls, with their (private-package) message classes.

The generated service descriptors carry private names (``/gateway.tf.serving.PredictionService/Predict``), so
never use them for routing: serve with ``grpc.method_handlers_generic_handler(service, ...)`` and call with
``channel.unary_unary(m.path, request_serializer=m.request.SerializeToString,
response_deserializer=m.response.FromString)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from gateway.protos import etcd_rpc_pb2 as etcd
from gateway.protos import tf_serving_pb2 as tfs
from gateway.protos import torchserve_inference_pb2 as tsi
from gateway.protos import torchserve_management_pb2 as tsm
from gateway.protos import v2_pb2 as v2

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


@dataclasses.dataclass(frozen=True, slots=True)
class Method(Generic[Req, Resp]):
    """One unary gRPC method: ``path`` is ``/<public service>/<method>``."""

    path: str
    request: type[Req]
    response: type[Resp]

    @property
    def service(self) -> str:
        return self.path[1:].rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


# Services the gateway serves (its gRPC fronts); the TorchServe ones are what it calls.
V2_INFERENCE_SERVICE = "inference.GRPCInferenceService"  # Open Inference Protocol (KServe v2, Triton)
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
TORCHSERVE_INFERENCE_SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
TORCHSERVE_MANAGEMENT_SERVICE = "org.pytorch.serve.grpc.management.ManagementAPIsService"
# TorchServe's Open Inference Protocol service: the v2 messages, under TorchServe's own package. Its
# InferParameter has no double_param/uint64_param (Triton extensions): TorchServe ignores them.
TORCHSERVE_OPEN_INFERENCE_SERVICE = "org.pytorch.serve.grpc.openinference.GRPCInferenceService"


def _method(service: str, name: str, request: type[Req], response: type[Resp]) -> Method[Req, Resp]:
    return Method(f"/{service}/{name}", request, response)


V2_SERVER_LIVE = _method(V2_INFERENCE_SERVICE, "ServerLive", v2.ServerLiveRequest, v2.ServerLiveResponse)
V2_SERVER_READY = _method(V2_INFERENCE_SERVICE, "ServerReady", v2.ServerReadyRequest, v2.ServerReadyResponse)
V2_MODEL_READY = _method(V2_INFERENCE_SERVICE, "ModelReady", v2.ModelReadyRequest, v2.ModelReadyResponse)
V2_SERVER_METADATA = _method(
    V2_INFERENCE_SERVICE, "ServerMetadata", v2.ServerMetadataRequest, v2.ServerMetadataResponse
)
V2_MODEL_METADATA = _method(V2_INFERENCE_SERVICE, "ModelMetadata", v2.ModelMetadataRequest, v2.ModelMetadataResponse)
V2_MODEL_INFER = _method(V2_INFERENCE_SERVICE, "ModelInfer", v2.ModelInferRequest, v2.ModelInferResponse)

TF_CLASSIFY = _method(PREDICTION_SERVICE, "Classify", tfs.ClassificationRequest, tfs.ClassificationResponse)
TF_REGRESS = _method(PREDICTION_SERVICE, "Regress", tfs.RegressionRequest, tfs.RegressionResponse)
TF_PREDICT = _method(PREDICTION_SERVICE, "Predict", tfs.PredictRequest, tfs.PredictResponse)
TF_GET_MODEL_METADATA = _method(
    PREDICTION_SERVICE, "GetModelMetadata", tfs.GetModelMetadataRequest, tfs.GetModelMetadataResponse
)
TF_GET_MODEL_STATUS = _method(MODEL_SERVICE, "GetModelStatus", tfs.GetModelStatusRequest, tfs.GetModelStatusResponse)

TS_PING = _method(TORCHSERVE_INFERENCE_SERVICE, "Ping", empty_pb2.Empty, tsi.TorchServeHealthResponse)
TS_PREDICTIONS = _method(TORCHSERVE_INFERENCE_SERVICE, "Predictions", tsi.PredictionsRequest, tsi.PredictionResponse)
TS_DESCRIBE_MODEL = _method(
    TORCHSERVE_MANAGEMENT_SERVICE, "DescribeModel", tsm.DescribeModelRequest, tsm.ManagementResponse
)
TS_REGISTER_MODEL = _method(
    TORCHSERVE_MANAGEMENT_SERVICE, "RegisterModel", tsm.RegisterModelRequest, tsm.ManagementResponse
)
TS_SCALE_WORKER = _method(TORCHSERVE_MANAGEMENT_SERVICE, "ScaleWorker", tsm.ScaleWorkerRequest, tsm.ManagementResponse)
TS_SET_DEFAULT = _method(TORCHSERVE_MANAGEMENT_SERVICE, "SetDefault", tsm.SetDefaultRequest, tsm.ManagementResponse)
TS_UNREGISTER_MODEL = _method(
    TORCHSERVE_MANAGEMENT_SERVICE, "UnregisterModel", tsm.UnregisterModelRequest, tsm.ManagementResponse
)

_OIP = TORCHSERVE_OPEN_INFERENCE_SERVICE
TS_OIP_SERVER_LIVE = _method(_OIP, "ServerLive", v2.ServerLiveRequest, v2.ServerLiveResponse)
TS_OIP_SERVER_READY = _method(_OIP, "ServerReady", v2.ServerReadyRequest, v2.ServerReadyResponse)
TS_OIP_MODEL_READY = _method(_OIP, "ModelReady", v2.ModelReadyRequest, v2.ModelReadyResponse)
TS_OIP_SERVER_METADATA = _method(_OIP, "ServerMetadata", v2.ServerMetadataRequest, v2.ServerMetadataResponse)
TS_OIP_MODEL_METADATA = _method(_OIP, "ModelMetadata", v2.ModelMetadataRequest, v2.ModelMetadataResponse)
TS_OIP_MODEL_INFER = _method(_OIP, "ModelInfer", v2.ModelInferRequest, v2.ModelInferResponse)

#: Every service -> its methods, in the order of the original .proto.
SERVICES: Mapping[str, tuple[Method[Any, Any], ...]] = MappingProxyType(
    {
        V2_INFERENCE_SERVICE: (
            V2_SERVER_LIVE,
            V2_SERVER_READY,
            V2_MODEL_READY,
            V2_SERVER_METADATA,
            V2_MODEL_METADATA,
            V2_MODEL_INFER,
        ),
        PREDICTION_SERVICE: (TF_CLASSIFY, TF_REGRESS, TF_PREDICT, TF_GET_MODEL_METADATA),
        MODEL_SERVICE: (TF_GET_MODEL_STATUS,),
        TORCHSERVE_INFERENCE_SERVICE: (TS_PING, TS_PREDICTIONS),
        TORCHSERVE_MANAGEMENT_SERVICE: (
            TS_DESCRIBE_MODEL,
            TS_REGISTER_MODEL,
            TS_SCALE_WORKER,
            TS_SET_DEFAULT,
            TS_UNREGISTER_MODEL,
        ),
        TORCHSERVE_OPEN_INFERENCE_SERVICE: (
            TS_OIP_SERVER_LIVE,
            TS_OIP_SERVER_READY,
            TS_OIP_MODEL_READY,
            TS_OIP_SERVER_METADATA,
            TS_OIP_MODEL_METADATA,
            TS_OIP_MODEL_INFER,
        ),
    }
)
#: Every method by its path.
METHODS: Mapping[str, Method[Any, Any]] = MappingProxyType(
    {method.path: method for methods in SERVICES.values() for method in methods}
)

# etcd's v3 API, which the gateway calls (gateway/etcd/client.py) when its routes live in etcd. Watch and
# LeaseKeepAlive are bidirectional streams: their Method names the message of each direction.
ETCD_KV_SERVICE = "etcdserverpb.KV"
ETCD_WATCH_SERVICE = "etcdserverpb.Watch"
ETCD_LEASE_SERVICE = "etcdserverpb.Lease"
ETCD_AUTH_SERVICE = "etcdserverpb.Auth"
ETCD_RANGE = _method(ETCD_KV_SERVICE, "Range", etcd.RangeRequest, etcd.RangeResponse)
ETCD_PUT = _method(ETCD_KV_SERVICE, "Put", etcd.PutRequest, etcd.PutResponse)
ETCD_DELETE_RANGE = _method(ETCD_KV_SERVICE, "DeleteRange", etcd.DeleteRangeRequest, etcd.DeleteRangeResponse)
ETCD_TXN = _method(ETCD_KV_SERVICE, "Txn", etcd.TxnRequest, etcd.TxnResponse)
ETCD_WATCH = _method(ETCD_WATCH_SERVICE, "Watch", etcd.WatchRequest, etcd.WatchResponse)
ETCD_LEASE_GRANT = _method(ETCD_LEASE_SERVICE, "LeaseGrant", etcd.LeaseGrantRequest, etcd.LeaseGrantResponse)
ETCD_LEASE_REVOKE = _method(ETCD_LEASE_SERVICE, "LeaseRevoke", etcd.LeaseRevokeRequest, etcd.LeaseRevokeResponse)
ETCD_LEASE_KEEPALIVE = _method(ETCD_LEASE_SERVICE, "LeaseKeepAlive", etcd.LeaseKeepAliveRequest,
                               etcd.LeaseKeepAliveResponse)
ETCD_AUTHENTICATE = _method(ETCD_AUTH_SERVICE, "Authenticate", etcd.AuthenticateRequest, etcd.AuthenticateResponse)
#: The etcd methods the gateway calls (a subset of each service), apart from SERVICES (what the gateway serves
#: or calls on backends), so that the backends' compatibility checks are not asked about etcd.
ETCD_METHODS: tuple[Method[Any, Any], ...] = (ETCD_RANGE, ETCD_PUT, ETCD_DELETE_RANGE, ETCD_TXN, ETCD_WATCH,
                                              ETCD_LEASE_GRANT, ETCD_LEASE_REVOKE, ETCD_LEASE_KEEPALIVE,
                                              ETCD_AUTHENTICATE)
