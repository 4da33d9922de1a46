"""gRPC fronts on grpc.aio, in the same event loop as the ASGI app: Open Inference Protocol v2, TF Serving's
PredictionService and ModelService, grpc.health.v1 and server reflection. Each front decodes to the same
InferRequest and calls the same DataPlane as REST."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from gateway import __version__
from gateway.api import tf_compat
from gateway.api.connections import grpc_options
from gateway.api.v2_rest import PLATFORMS
from gateway.backends.base import DescribesTFSignaturesProto, PassesTFPredict
from gateway.codecs import tf_proto, v2_grpc
from gateway.codecs.tf_json import DEFAULT_SIGNATURE
from gateway.dataplane import DataPlane, check_specs, longest_call_s
from gateway.deadline import set_deadline
from gateway.errors import GatewayError, InvalidArgument, MalformedRequest
from gateway.lifecycle import grpc_max_connection_age_s, stop_listening
from gateway.protos import services as svc
from gateway.protos import tf_serving_pb2 as tfs
from gateway.protos import v2_pb2 as v2
from gateway.protos.reflection import public_pool
from gateway.routes.table import Hints, Route, RouteTable
from gateway.settings import Settings
from gateway.types import ModelRef

log = logging.getLogger("gateway.grpc")
#: The least time a call may run on after its connection's age GOAWAY (see GrpcFront.start).
MAX_CALL_S = 120.0
MAX_DETAILS = 1024  # TF Serving truncates gRPC error messages here too
SERVED_SERVICES = (svc.V2_INFERENCE_SERVICE, svc.PREDICTION_SERVICE, svc.MODEL_SERVICE)
# Liveness and readiness (grpc.health.v1 and reflection are grpc's own servicers: always open).
HEALTH_METHODS = frozenset({svc.V2_SERVER_LIVE.path, svc.V2_SERVER_READY.path})

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Impl = Callable[[Any, Context], Awaitable[Any]]


def served_by_metadata(route: Route) -> tuple[tuple[str, str], ...]:
    """Trailing metadata naming what served the call (the REST fronts' response headers), on answers and errors."""
    t = route.target
    metadata = (("x-model-name", t.logical_model), ("x-model-version", t.logical_version), ("x-backend", t.backend))
    return (*metadata, ("x-model-variant", route.variant)) if route.variant else metadata


def served_by(context: Context, route: Route) -> None:
    context.set_trailing_metadata(served_by_metadata(route))


def _unary(method: svc.Method[Any, Any], impl: Impl, protocol: str, plane: DataPlane,
           raw: bool = False) -> grpc.RpcMethodHandler[Any, Any]:
    """One place where the client's deadline is taken, the caller is authenticated (when GATEWAY_AUTH_FILE turns
    that on; ServerLive/ServerReady stay open while GATEWAY_AUTH_OPEN has "health"), gateway errors become gRPC
    status codes, and the call is measured (the data plane decides whether: an inference it routed). ``raw``:
    ``impl`` takes the request's bytes and answers bytes (it parses and serializes only what it needs)."""
    size = len if raw else _byte_size
    auth = plane.auth
    authenticate = auth is not None and not (auth.open_health and method.path in HEALTH_METHODS)

    async def handler(request: Any, context: Context) -> Any:
        exchange = plane.begin(method.path, lambda name: _metadata(context).get(name))
        set_deadline(context.time_remaining())
        code, detail, response = grpc.StatusCode.OK, "", None
        try:
            if authenticate:
                assert auth is not None
                exchange.caller = auth.authenticate_metadata(context.invocation_metadata())
            response = await impl(request, context)
            return response
        except GatewayError as exc:
            code, detail = exc.grpc_code, exc.message
            served = served_by_metadata(exchange.route) if exchange.route is not None else ()
            await context.abort(exc.grpc_code, exc.message[:MAX_DETAILS], trailing_metadata=(*served, *exc.trailers))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the client went away: its backend call is cancelled with it
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error in %s", method.path)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal gateway error in {method.path}")
        finally:
            sized = exchange.inference  # sizes of inference messages only (ByteSize walks the message)
            plane.measure(exchange, protocol, code.name, received=size(request) if sized else None,
                          sent=size(response) if sized and response is not None else None,
                          request_id=_metadata(context).get("x-request-id") if plane.telemetry.access_log_sample
                          else None, detail=detail)

    if raw:
        return grpc.unary_unary_rpc_method_handler(handler)
    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=method.request.FromString, response_serializer=method.response.SerializeToString)


def _byte_size(message: Any) -> int:
    return int(message.ByteSize())


def _metadata(context: Context) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def _hints(context: Context, parameters: Mapping[str, Any] | None = None, request_id: str = "") -> Hints:
    """Routing hints from request metadata: the same names as the REST headers (sticky keys, overrides)."""
    metadata = _metadata(context)
    return Hints(header=metadata.get, parameters=parameters or {},
                 request_id=request_id or metadata.get("x-request-id"))


def _ref(name: str, version: str = "", label: str = "") -> ModelRef:
    return ModelRef(name=name, version=version or None, label=label or None)


class V2Servicer:
    """inference.GRPCInferenceService."""

    def __init__(self, plane: DataPlane, front: GrpcFront) -> None:
        self.plane = plane
        self.front = front

    async def server_live(self, request: v2.ServerLiveRequest, context: Context) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def server_ready(self, request: v2.ServerReadyRequest, context: Context) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=not self.front.draining)

    async def server_metadata(self, request: v2.ServerMetadataRequest, context: Context) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="model-gateway", version=__version__)

    async def model_ready(self, request: v2.ModelReadyRequest, context: Context) -> v2.ModelReadyResponse:
        route = self.plane.lookup(_ref(request.name, request.version), _hints(context))
        status = await self.plane.status(route)
        served_by(context, route)
        return v2.ModelReadyResponse(ready=status.state == "AVAILABLE")

    async def model_metadata(self, request: v2.ModelMetadataRequest, context: Context) -> v2.ModelMetadataResponse:
        route = self.plane.lookup(_ref(request.name, request.version), _hints(context))
        schema = await self.plane.schema(route)
        versions = [request.version] if request.version else sorted(route.model.versions, key=int)
        served_by(context, route)
        return v2_grpc.encode_model_metadata(route.model.name, versions, PLATFORMS[route.backend.kind], schema)

    async def model_infer(self, request: v2.ModelInferRequest, context: Context) -> v2.ModelInferResponse:
        ref = _ref(request.model_name, request.model_version)
        infer_request = v2_grpc.decode_infer_request(request, ref)
        route = self.plane.route(ref, _hints(context, infer_request.parameters, request.id))
        response = await self.plane.infer(infer_request, route)
        served_by(context, route)
        return v2_grpc.encode_infer_response(response)

    def _unary(self, method: svc.Method[Any, Any], impl: Impl) -> grpc.RpcMethodHandler[Any, Any]:
        return _unary(method, impl, "v2_grpc", self.plane)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        return {
            svc.V2_SERVER_LIVE.name: self._unary(svc.V2_SERVER_LIVE, self.server_live),
            svc.V2_SERVER_READY.name: self._unary(svc.V2_SERVER_READY, self.server_ready),
            svc.V2_SERVER_METADATA.name: self._unary(svc.V2_SERVER_METADATA, self.server_metadata),
            svc.V2_MODEL_READY.name: self._unary(svc.V2_MODEL_READY, self.model_ready),
            svc.V2_MODEL_METADATA.name: self._unary(svc.V2_MODEL_METADATA, self.model_metadata),
            svc.V2_MODEL_INFER.name: self._unary(svc.V2_MODEL_INFER, self.model_infer),
        }


class TFServingServicer:
    """tensorflow.serving.PredictionService (Predict, GetModelMetadata) and ModelService.GetModelStatus."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def predict(self, raw: bytes, context: Context) -> bytes:
        """Predict on the request's bytes: TF Serving over gRPC on both sides forwards them as they are (only
        model_spec is rewritten, by appending to the bytes both ways: no tensor is copied into a message or
        serialized again); any other backend gets the decoded request."""
        try:
            request = tfs.PredictRequest.FromString(raw)
        except DecodeError as exc:
            raise MalformedRequest(f"PredictRequest could not be parsed: {exc}") from None
        plane = self.plane
        route = tf_compat.resolve(plane.route, tf_proto.model_ref(request.model_spec), _hints(context))
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        answered_as = tfs.PredictResponse(model_spec=tf_proto.model_spec(
            route.model.name, route.target.logical_version, signature))
        served_by(context, route)
        native = plane.passthrough(route, PassesTFPredict)
        if native is not None:
            # The TensorProto headers are still checked against the signature, which TF Serving does not do.
            schema = await plane.input_schema(route, request.model_spec.signature_name or None)
            if schema is not None:
                check_specs(route.model.name, tf_proto.input_specs(request), schema)
            answer = await plane.forward(route, lambda: native.forward_predict(route.target, raw))
            return answer + bytes(answered_as.SerializeToString())  # the logical model_spec wins on the wire
        infer_request = tf_proto.decode_predict_request(request)
        tf_compat.check_signature(infer_request.signature_name, route)
        response = tf_proto.encode_predict_response(await self.plane.infer(infer_request, route),
                                                    route.model.name, route.target.logical_version, signature)
        return bytes(response.SerializeToString())

    async def get_model_metadata(self, request: tfs.GetModelMetadataRequest,
                                 context: Context) -> tfs.GetModelMetadataResponse:
        if not request.metadata_field:
            raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise InvalidArgument(f"Metadata field {field} is not supported")
        route = tf_compat.resolve(self.plane.lookup, tf_proto.model_ref(request.model_spec), _hints(context))
        served_by(context, route)
        version = route.target.logical_version
        tf = self.plane.capability(route, DescribesTFSignaturesProto)
        if tf is not None:
            # TF Serving's own answer (every signature), renamed to the logical model and version.
            answer = tfs.GetModelMetadataResponse()
            answer.CopyFrom(await tf.model_metadata(route.target))
            answer.model_spec.CopyFrom(tfs.ModelSpec(name=route.model.name))
            answer.model_spec.version.value = int(version)
            return answer
        return tf_proto.encode_metadata_response(route.model.name, version, await self.plane.schema(route))

    async def get_model_status(self, request: tfs.GetModelStatusRequest,
                               context: Context) -> tfs.GetModelStatusResponse:
        ref = tf_proto.model_ref(request.model_spec)
        return tf_proto.encode_status_response(await tf_compat.statuses(self.plane, ref.name, ref.version))

    def _unary(self, method: svc.Method[Any, Any], impl: Impl) -> grpc.RpcMethodHandler[Any, Any]:
        return _unary(method, impl, "tf_grpc", self.plane)

    def prediction_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        return {
            svc.TF_PREDICT.name: _unary(svc.TF_PREDICT, self.predict, "tf_grpc", self.plane, raw=True),
            svc.TF_GET_MODEL_METADATA.name: self._unary(svc.TF_GET_MODEL_METADATA, self.get_model_metadata),
        }

    def model_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        return {svc.TF_GET_MODEL_STATUS.name: self._unary(svc.TF_GET_MODEL_STATUS, self.get_model_status)}


class GrpcFront:
    """The gRPC listener. Started and stopped by the ASGI lifespan, so it shares the loop and the DataPlane;
    with several worker processes each binds the same port (SO_REUSEPORT) and the kernel spreads connections."""

    def __init__(self, plane: DataPlane, settings: Settings) -> None:
        self.plane = plane
        self.settings = settings
        self.draining = False
        self._close_listener: asyncio.TimerHandle | None = None
        self._listener_stopped = False
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.grace_s: float | None = None  # how long a call may run on after its connection's age GOAWAY

    async def start(self) -> None:
        limit = self.settings.max_body_bytes
        options: list[tuple[str, Any]] = [
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            *grpc_options(self.settings, listeners=2),  # gateway/api/connections.py
        ]
        age_s = grpc_max_connection_age_s(self.settings.drain_s)
        if age_s is not None:  # connections move away within a drain (gateway/lifecycle.py)
            # A call still running this long after its connection's age GOAWAY is cancelled: longer than the
            # longest call the routes at start allow (gateway/dataplane.py: longest_call_s), so none is cut.
            self.grace_s = max(MAX_CALL_S, 2 * longest_call_s(self.plane.store.current))
            options += [("grpc.max_connection_age_ms", int(age_s * 1000)),
                        ("grpc.max_connection_age_grace_ms", int(self.grace_s * 1000))]
        self.plane.store.on_swap.append(self._check_grace)
        server = grpc.aio.server(options=options)
        v2_servicer, tf_servicer = V2Servicer(self.plane, self), TFServingServicer(self.plane)
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(svc.V2_INFERENCE_SERVICE, v2_servicer.handlers()),
            grpc.method_handlers_generic_handler(svc.PREDICTION_SERVICE, tf_servicer.prediction_handlers()),
            grpc.method_handlers_generic_handler(svc.MODEL_SERVICE, tf_servicer.model_handlers()),
        ))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (*SERVED_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(
            names, server, pool=public_pool(reflection_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR))
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        cert, key = self.settings.tls_cert_file, self.settings.tls_key_file
        if cert is not None and key is not None:  # the certificate is re-read on change (gateway/tls.py)
            from gateway.tls import CertificateFiles, grpc_server_credentials

            credentials = grpc_server_credentials(CertificateFiles(cert, key, self.settings.tls_reload_s))
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        await server.start()
        for name in ("", *SERVED_SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.server = server
        log.info("gRPC listening on %s:%d%s", self.settings.host, self.port, " (TLS)" if cert is not None else "")

    def _check_grace(self, table: RouteTable) -> None:
        """New routes whose longest call outlasts the connections' grace (fixed when the listener started)."""
        longest = longest_call_s(table)
        if self.grace_s is not None and longest > self.grace_s:
            log.warning("routes revision %s allows calls of %.0f s (queue wait + timeout), longer than the %.0f s a "
                        "gRPC call may run after its connection's age GOAWAY (set at start): longer calls can be cut "
                        "until the gateway restarts", table.revision, longest, self.grace_s)

    async def begin_drain(self) -> None:
        """Turn not-ready (health NOT_SERVING, ServerReady false); half-way through the drain stop accepting
        connections (the other workers' listeners get them). Calls on the connections made are served until
        ``stop``, while the connections' maximum age moves their clients away (gateway/lifecycle.py)."""
        if self.draining:
            return
        self.draining = True
        await self.health.enter_graceful_shutdown()
        self._close_listener = asyncio.get_running_loop().call_later(self.settings.drain_s / 2, self._stop_listening)

    def _stop_listening(self) -> None:
        if self.server is None or not self.port or self._listener_stopped:
            return
        self._listener_stopped = True
        closed = stop_listening(self.port)
        log.info("gRPC: draining; stopped accepting on port %d (%d listener(s))", self.port, closed)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Turn not-ready, stop accepting, let in-flight calls finish (clients get GOAWAY), then close."""
        await self.begin_drain()
        if self._close_listener is not None:
            self._close_listener.cancel()
        self._stop_listening()
        if self.server is not None:
            await self.server.stop(grace_s)
