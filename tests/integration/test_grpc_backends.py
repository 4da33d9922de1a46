"""The gRPC backend adapters against real TorchServe (token auth on) and TF Serving (real binary or the stand-in):
inference on every model_repo model and dtype, status, schema, the pass-through paths, error mapping, timeouts,
client-side round robin and TorchServe key refresh."""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from gateway.backends.endpoints import Dropped, Endpoint, Unsent
from gateway.backends.grpc_channel import CredentialsRefused, GrpcChannel, TargetNotLoaded, channel_target, map_status
from gateway.backends.tfserving import TFServingBackend
from gateway.backends.tfserving_grpc import TFServingGrpcBackend
from gateway.backends.torchserve_grpc import TorchServeGrpcBackend
from gateway.codecs import tf_proto
from gateway.deadline import set_deadline
from gateway.dev import localstack
from gateway.errors import (
    BackendBusy,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidArgument,
    PayloadTooLarge,
    ResourceExhausted,
    Unimplemented,
)
from gateway.protos import services as svc
from gateway.protos import tf_serving_pb2 as tfs
from gateway.routes.schema import BackendConfig
from gateway.types import InferRequest, InferResponse, ModelRef, ModelSchema, Target, Tensor, TensorSpec

from .stack import Blackhole

T = TypeVar("T")
X3 = np.array([[1, 2, 3], [-4, 0.5, 10]], np.float32)
X4 = np.array([[1, 2, 3, 4], [0.5, -1, 2, 0]], np.float32)
# model_repo/README.md: the same mlp weights in both frameworks.
MLP_X1 = {"1": [0.023943, 0.237932, 0.738126], "2": [0.037872, 0.960652, 0.001476]}


def target(model: str, version: str) -> Target:
    return Target(backend="b", model=model, version=version, logical_model=model, logical_version=version)


def request(*tensors: Tensor, outputs: tuple[str, ...] = ()) -> InferRequest:
    return InferRequest(model=ModelRef("m"), inputs=tensors, output_names=outputs)


def x(values: np.ndarray[Any, Any], datatype: str = "FP32") -> Tensor:
    return Tensor("x", datatype, values)


def output(response: InferResponse, name: str) -> np.ndarray[Any, Any]:
    return next(t.data for t in response.outputs if t.name == name)


def tf_config(tfserving: localstack.TFServingEndpoints, **kw: Any) -> BackendConfig:
    fields: dict[str, Any] = {"name": "tf_grpc", "kind": "tfserving", "url": tfserving.rest_url, "transport": "grpc",
                              "grpc_target": tfserving.grpc_target, "timeout_s": 10, **kw}
    return BackendConfig(**fields)


def ts_config(torchserve: localstack.TorchServeEndpoints, **kw: Any) -> BackendConfig:
    fields: dict[str, Any] = {
        "name": "ts_grpc", "kind": "torchserve", "url": torchserve.inference_url, "transport": "grpc",
        "management_url": torchserve.management_url, "grpc_target": torchserve.grpc_inference_target,
        "grpc_management_target": torchserve.grpc_management_target, "token_file": torchserve.key_file,
        "timeout_s": 10, **kw}
    return BackendConfig(**fields)


async def in_own_context(coro: Awaitable[T], deadline_s: float | None = None) -> T:
    """Run with a client deadline set the way a front sets it, without leaking it into the test's context."""
    async def run() -> T:
        set_deadline(deadline_s)
        return await coro

    return await asyncio.create_task(run(), context=contextvars.copy_context())


@pytest.fixture()
async def tf(tfserving: localstack.TFServingEndpoints) -> AsyncIterator[TFServingGrpcBackend]:
    backend = TFServingGrpcBackend(tf_config(tfserving))
    yield backend
    await backend.close()


@pytest.fixture()
async def ts(torchserve: localstack.TorchServeEndpoints) -> AsyncIterator[TorchServeGrpcBackend]:
    backend = TorchServeGrpcBackend(ts_config(torchserve))
    yield backend
    await backend.close()


# ----------------------------------------------------------------------------------------- TF Serving


@pytest.mark.parametrize(("version", "offset"), [("1", 2.0), ("2", 3.0)])
async def test_tf_affine_infer_status_schema(tf: TFServingGrpcBackend, version: str, offset: float) -> None:
    response = await tf.infer(target("affine", version), request(x(X3)))
    assert [(t.name, t.datatype, t.shape) for t in response.outputs] == [("y", "FP32", (2, 3))]
    np.testing.assert_allclose(output(response, "y"), 0.5 * X3 + offset, rtol=1e-6)
    status = await tf.status(target("affine", version))
    assert (status.version, status.state, status.error_message) == (version, "AVAILABLE", "")
    assert await tf.schema(target("affine", version)) == ModelSchema(
        inputs=(TensorSpec("x", "FP32", (-1, 3)),), outputs=(TensorSpec("y", "FP32", (-1, 3)),))


async def test_tf_multi_every_dtype(tf: TFServingGrpcBackend) -> None:
    s = np.empty(2, dtype=object)
    s[:] = [b"hello", b"\x00\xffbin"]
    response = await tf.infer(target("multi", "1"), request(
        Tensor("a", "FP32", np.array([[1, 2], [-5, 1]], np.float32)),
        Tensor("b", "INT64", np.array([[3, 4], [-1, 0]], np.int64)), Tensor("s", "BYTES", s)))
    types = {t.name: t.datatype for t in response.outputs}
    assert {k: types[k] for k in ("total", "b_doubled", "text", "positive")} == {
        "total": "FP32", "b_doubled": "INT64", "text": "BYTES", "positive": "BOOL"}
    np.testing.assert_allclose(output(response, "total"), [10.0, -5.0])
    assert output(response, "b_doubled").tolist() == [[6, 8], [-2, 0]]
    assert output(response, "text").tolist() == [b"HELLO", b"\x00\xffBIN"]
    assert output(response, "positive").tolist() == [True, False]


async def test_tf_output_filter_is_sent(tf: TFServingGrpcBackend) -> None:
    s = np.empty(1, dtype=object)
    s[:] = [b"x"]
    response = await tf.infer(target("multi", "1"), request(
        Tensor("a", "FP32", np.ones((1, 2), np.float32)), Tensor("b", "INT64", np.ones((1, 2), np.int64)),
        Tensor("s", "BYTES", s), outputs=("total",)))
    assert [t.name for t in response.outputs] == ["total"]


async def test_tf_metadata_matches_the_rest_adapter(tf: TFServingGrpcBackend,
                                                    tfserving: localstack.TFServingEndpoints) -> None:
    rest = TFServingBackend(tf_config(tfserving, transport="rest"))
    try:
        for model in ("affine", "multi", "mlp"):
            t = target(model, "1")
            assert await tf.metadata(t) == await rest.metadata(t)
            assert await tf.schema(t) == await rest.schema(t)
    finally:
        await rest.close()


async def test_tf_large_tensors_pass_the_4mb_default_limit(tf: TFServingGrpcBackend) -> None:
    big = np.tile(X3, (200_000, 1))  # 4.8 MB each way
    response = await tf.infer(target("affine", "1"), request(x(big)))
    np.testing.assert_allclose(output(response, "y")[-2:], 0.5 * X3 + 2, rtol=1e-6)


async def test_tf_forward_predict_rewrites_only_the_model_spec(tf: TFServingGrpcBackend) -> None:
    client = tfs.PredictRequest()
    client.model_spec.name = "logical_affine"
    client.model_spec.version_label = "stable"
    client.model_spec.signature_name = "serving_default"
    client.inputs["x"].CopyFrom(tf_proto.tensor_to_proto(x(X3)))
    raw = client.SerializeToString()
    answer = await tf.forward_predict(target("affine", "2"), raw)
    response = tfs.PredictResponse.FromString(answer)  # TF Serving's bytes, as it wrote them
    assert (response.model_spec.name, response.model_spec.version.value) == ("affine", 2)
    np.testing.assert_allclose(tf_proto.tensor_from_proto("y", response.outputs["y"]).data, 0.5 * X3 + 3, rtol=1e-6)


async def test_tf_unknown_version_is_unavailable(tf: TFServingGrpcBackend) -> None:
    with pytest.raises(BackendUnavailable) as info:
        await tf.infer(target("affine", "9"), request(x(X3)))
    assert isinstance(info.value, TargetNotLoaded)
    assert "backend 'tf_grpc' has no model 'affine' version 9 available" in info.value.message
    status = await tf.status(target("affine", "9"))
    assert (status.version, status.state) == ("9", "END")
    with pytest.raises(BackendUnavailable):
        await tf.schema(target("affine", "9"))


async def test_tf_wrong_dtype_is_invalid_argument(tf: TFServingGrpcBackend) -> None:
    with pytest.raises(InvalidArgument) as info:
        await tf.infer(target("affine", "1"), request(x(X3.astype(np.int64), "INT64")))
    assert "int64" in info.value.message and "float" in info.value.message


# ----------------------------------------------------------------------------------------- TorchServe


@pytest.mark.parametrize(("version", "factor"), [("1", 2.0), ("2", 3.0)])
async def test_ts_scale(ts: TorchServeGrpcBackend, version: str, factor: float) -> None:
    response = await ts.infer(target("scale", version), request(x(X3)))
    assert (response.model_name, response.model_version) == ("scale", version)
    assert [(t.name, t.datatype, t.shape) for t in response.outputs] == [("y", "FP32", (2, 3))]
    np.testing.assert_allclose(output(response, "y"), factor * X3, rtol=1e-6)
    status = await ts.status(target("scale", version))
    assert (status.version, status.state, status.error_message) == (version, "AVAILABLE", "")
    assert await ts.schema(target("scale", version)) is None


@pytest.mark.parametrize("version", ["1", "2"])
async def test_mlp_agrees_across_backends(tf: TFServingGrpcBackend, ts: TorchServeGrpcBackend, version: str) -> None:
    on_tf = output(await tf.infer(target("mlp", version), request(x(X4))), "probabilities")
    on_ts = output(await ts.infer(target("mlp", version), request(x(X4))), "probabilities")
    np.testing.assert_allclose(on_tf, on_ts, atol=1e-5)
    np.testing.assert_allclose(on_tf[0], MLP_X1[version], atol=1e-5)
    assert (await ts.status(target("mlp", version))).state == "AVAILABLE"


async def test_ts_forward_passes_the_body_through(ts: TorchServeGrpcBackend) -> None:
    body = b'{"id": "f1", "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}'
    answer, content_type = await ts.forward_predictions(target("scale", "1"), body, "application/json")
    assert content_type == "application/json"
    doc = json.loads(answer)
    assert (doc["id"], doc["outputs"][0]["data"]) == ("f1", [2, 4, 6])


@pytest.mark.parametrize(("model", "version", "message"), [
    ("scale", "9", "model 'scale' version 9 is not registered: Model version: 9 does not exist for model: scale"),
    ("nope", "1", "model 'nope' version 1 is not registered: Model not found: nope"),
])
async def test_ts_unknown_model_or_version_is_unavailable(ts: TorchServeGrpcBackend, model: str, version: str,
                                                          message: str) -> None:
    with pytest.raises(TargetNotLoaded) as info:
        await ts.infer(target(model, version), request(x(X3)))
    assert info.value.message == f"backend 'ts_grpc' {message}"
    assert info.value.http_status == 503
    status = await ts.status(target(model, version))
    assert (status.state, status.error_message) == ("END", f"backend 'ts_grpc' {message}")


async def test_ts_wrong_dtype_is_invalid_argument(ts: TorchServeGrpcBackend) -> None:
    with pytest.raises(InvalidArgument) as info:
        await ts.infer(target("scale", "1"), request(x(X3.astype(np.int64), "INT64")))
    assert info.value.message == "input 'x': datatype 'INT64' does not match the model's 'FP32'"


async def test_ts_status_needs_the_management_target(torchserve: localstack.TorchServeEndpoints) -> None:
    backend = TorchServeGrpcBackend(ts_config(torchserve, grpc_management_target=None))
    try:
        status = await backend.status(target("scale", "1"))
        assert (status.state, status.error_message) == ("UNKNOWN", "backend 'ts_grpc' has no grpc_management_target")
    finally:
        await backend.close()


async def test_ts_without_a_key_is_refused(torchserve: localstack.TorchServeEndpoints) -> None:
    backend = TorchServeGrpcBackend(ts_config(torchserve, token_file=None))
    try:
        with pytest.raises(CredentialsRefused, match="refused the gateway's token: Token Authorization failed"):
            await backend.infer(target("scale", "1"), request(x(X3)))
        assert (await backend.status(target("scale", "1"))).state == "UNKNOWN"
    finally:
        await backend.close()


async def test_ts_rotated_key_is_picked_up(ts: TorchServeGrpcBackend,
                                           torchserve: localstack.TorchServeEndpoints) -> None:
    assert torchserve.key_file is not None
    await ts.infer(target("scale", "1"), request(x(X3)))
    old = localstack.read_torchserve_key(torchserve.key_file, "inference")
    assert await asyncio.to_thread(localstack.rotate_torchserve_key, torchserve, "inference") != old
    for _ in range(3):
        await ts.infer(target("scale", "1"), request(x(X3)))
    assert ts.keys.tokens.key("inference") == localstack.read_torchserve_key(torchserve.key_file, "inference")


@pytest.mark.parametrize("kind", ["inference", "management"])
async def test_ts_expired_key_is_rotated_with_the_api_key(ts: TorchServeGrpcBackend, kind: str,
                                                          torchserve: localstack.TorchServeEndpoints) -> None:
    """An expired key is refused while key_file.json still holds it. Simulated: rotate, then put the old file
    back; the adapter must rotate the key itself (REST management API, API key)."""
    key_file = torchserve.key_file
    assert key_file is not None
    assert (await ts.status(target("scale", "1"))).state == "AVAILABLE"
    await ts.infer(target("scale", "1"), request(x(X3)))
    stale = key_file.read_bytes()
    await asyncio.to_thread(localstack.rotate_torchserve_key, torchserve, kind)  # type: ignore[arg-type]
    key_file.write_bytes(stale)
    assert (await ts.status(target("scale", "1"))).state == "AVAILABLE"
    await ts.infer(target("scale", "1"), request(x(X3)))
    assert localstack.read_torchserve_key(key_file, kind) != json.loads(stale)[kind]["key"]  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- failures


def down_config(kind: str) -> BackendConfig:
    address = f"127.0.0.1:{localstack.free_port()}"
    return BackendConfig(name="down", kind=kind, url="http://127.0.0.1:1", transport="grpc",  # type: ignore[arg-type]
                         grpc_target=address, grpc_management_target=address, timeout_s=5, connect_timeout_s=1)


async def test_backend_down_is_unavailable_at_once() -> None:
    for backend in (TFServingGrpcBackend(down_config("tfserving")), TorchServeGrpcBackend(down_config("torchserve"))):
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match=r"backend 'down' is unreachable: .*Connection refused"):
                await backend.infer(target("scale", "1"), request(x(X3)))
            assert time.monotonic() - started < 2
            status = await backend.status(target("scale", "1"))
            assert status.state == "UNKNOWN" and "Connection refused" in status.error_message
        finally:
            await backend.close()


async def test_hanging_backend_times_out_quickly(blackhole: Blackhole) -> None:
    config = BackendConfig(name="hanging", kind="tfserving", url="http://127.0.0.1:1", transport="grpc",
                           grpc_target=f"127.0.0.1:{blackhole.port}", timeout_s=0.3, connect_timeout_s=5)
    backend = TFServingGrpcBackend(config)
    try:
        started = time.monotonic()
        with pytest.raises(BackendTimeout, match=r"backend 'hanging' did not answer within 0\.3s"):
            await backend.infer(target("affine", "1"), request(x(X3)))
        assert time.monotonic() - started < 1.5
    finally:
        await backend.close()


async def test_hanging_backend_honours_the_client_deadline(blackhole: Blackhole) -> None:
    config = BackendConfig(name="hanging", kind="torchserve", url="http://127.0.0.1:1", transport="grpc",
                           grpc_target=f"127.0.0.1:{blackhole.port}", timeout_s=30, connect_timeout_s=5)
    backend = TorchServeGrpcBackend(config)
    try:
        started = time.monotonic()
        with pytest.raises(BackendTimeout, match=r"did not answer within 0\.2"):
            await in_own_context(backend.infer(target("scale", "1"), request(x(X3))), deadline_s=0.25)
        assert time.monotonic() - started < 1.5
    finally:
        await backend.close()


async def test_hanging_backend_is_unavailable_after_the_connect_timeout(blackhole: Blackhole) -> None:
    """A peer that accepts TCP but never speaks HTTP/2 fails the connection after connect_timeout_s."""
    config = BackendConfig(name="hanging", kind="tfserving", url="http://127.0.0.1:1", transport="grpc",
                           grpc_target=f"127.0.0.1:{blackhole.port}", timeout_s=10, connect_timeout_s=0.5)
    backend = TFServingGrpcBackend(config)
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="SETTINGS"):
            await backend.infer(target("affine", "1"), request(x(X3)))
        assert time.monotonic() - started < 3
    finally:
        await backend.close()


# ----------------------------------------------------------------------------------------- channel


async def test_round_robin_spreads_calls_over_every_address() -> None:
    """Two servers behind one target (as a headless Service's DNS name gives them): calls alternate."""
    hits: list[int] = []
    servers = []
    for index in range(2):
        async def status(request: tfs.GetModelStatusRequest, context: Any, index: int = index) -> Any:
            hits.append(index)
            return tfs.GetModelStatusResponse()

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(svc.MODEL_SERVICE, {
            "GetModelStatus": grpc.unary_unary_rpc_method_handler(
                status, request_deserializer=tfs.GetModelStatusRequest.FromString,
                response_serializer=tfs.GetModelStatusResponse.SerializeToString)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append((server, port))
    address = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in servers)
    channel = GrpcChannel(BackendConfig(name="rr", kind="tfserving", url="http://x", timeout_s=5), address)
    try:
        for _ in range(10):
            await channel.call(svc.TF_GET_MODEL_STATUS, tfs.GetModelStatusRequest())
        assert sorted(set(hits)) == [0, 1] and min(hits.count(0), hits.count(1)) >= 4
    finally:
        await channel.close()
        for server, _ in servers:
            await server.stop(None)


@pytest.mark.parametrize(("address", "expected"), [
    ("tfserving:8500", "dns:///tfserving:8500"),
    ("127.0.0.1:8500", "dns:///127.0.0.1:8500"),
    ("[::1]:8500", "dns:///[::1]:8500"),
    ("dns:///tfserving.models.svc:8500", "dns:///tfserving.models.svc:8500"),
    ("ipv4:10.0.0.1:8500,10.0.0.2:8500", "ipv4:10.0.0.1:8500,10.0.0.2:8500"),
    ("unix:///run/tfs.sock", "unix:///run/tfs.sock"),
])
def test_channel_target_resolves_every_address(address: str, expected: str) -> None:
    assert channel_target(address) == expected


S = grpc.StatusCode


@pytest.mark.parametrize(("code", "details", "error", "message"), [
    (S.UNAVAILABLE, "connection refused", BackendUnavailable, "backend 'b' is unavailable: connection refused"),
    (S.DEADLINE_EXCEEDED, "Deadline Exceeded", BackendTimeout, "backend 'b' did not answer within 2.5s"),
    (S.INVALID_ARGUMENT, "bad shape", InvalidArgument, "bad shape"),
    (S.FAILED_PRECONDITION, "Serving signature name: \"x\" not found", InvalidArgument, "Serving signature name"),
    (S.OUT_OF_RANGE, "index 7", InvalidArgument, "index 7"),
    (S.NOT_FOUND, "Servable not found", TargetNotLoaded, "backend 'b' has no model 'm' version 1 available: Serv"),
    (S.RESOURCE_EXHAUSTED, "Received message larger than max (9 vs. 4)", PayloadTooLarge, "larger than max"),
    (S.RESOURCE_EXHAUSTED, "queue full", ResourceExhausted, "backend 'b': queue full"),
    (S.UNIMPLEMENTED, "Method not found!", Unimplemented, "backend 'b' does not implement this call"),
    (S.PERMISSION_DENIED, "Token Authorization failed", CredentialsRefused, "refused the gateway's credentials"),
    (S.UNAUTHENTICATED, "no", CredentialsRefused, "refused the gateway's credentials"),
    (S.INTERNAL, "boom", BackendError, "backend 'b' failed (INTERNAL): boom"),
    (S.UNKNOWN, "Exception calling application", BackendError, "backend 'b' failed (UNKNOWN)"),
    (S.CANCELLED, "cancelled", BackendError, "backend 'b' failed (CANCELLED)"),
])
def test_status_codes_map_to_gateway_errors(code: grpc.StatusCode, details: str, error: type[GatewayError],
                                            message: str) -> None:
    mapped = map_status(code, details, backend="b", where="model 'm' version 1", limit=2.5)
    assert type(mapped) is error
    assert message in mapped.message


@pytest.mark.parametrize(("code", "details", "error", "message"), [
    (S.INTERNAL, "Model not found: m\norg.pytorch.serve.archive.model.ModelNotFoundException", TargetNotLoaded,
     "backend 'ts' model 'm' version 1 is not registered: Model not found: m"),
    (S.NOT_FOUND, "Model version: 1 does not exist for model: m\norg.pytorch.serve.archive.model."
     "ModelVersionNotFoundException", TargetNotLoaded, "is not registered: Model version: 1 does not exist"),
    (S.INVALID_ARGUMENT, "input 'x': bad\norg.pytorch.serve.http.InternalServerException", InvalidArgument,
     "input 'x': bad"),
    (S.UNAVAILABLE, "Prediction failed\norg.pytorch.serve.http.InternalServerException", BackendError,
     "backend 'ts' model 'm' version 1 failed: Prediction failed"),
    (S.UNAVAILABLE, "No worker is available to serve request: m\norg.pytorch.serve.http."
     "ServiceUnavailableException", BackendBusy, "model 'm' version 1: No worker is available"),
    # A full job queue, as TorchServe 0.12 answers it over gRPC (503 ServiceUnavailableException over REST).
    (S.INTERNAL, 'Model "m" Version 1" has no worker to serve inference request. Please use scale workers API to '
     "add workers.\nInternalServerException.()", BackendBusy, 'model \'m\' version 1: Model "m" Version 1" has no '
     "worker to serve inference request"),
    (S.RESOURCE_EXHAUSTED, "too big\norg.pytorch.serve.http.RequestEntityTooLargeException", PayloadTooLarge,
     "model 'm' version 1: too big"),
    (S.UNKNOWN, "Worker died.\norg.pytorch.serve.http.InternalServerException", BackendError, "failed: Worker died."),
    (S.UNAVAILABLE, "failed to connect to all addresses", Unsent, "backend 'ts' is unreachable"),
    (S.UNAVAILABLE, "Socket closed", Dropped, "backend 'ts' is unreachable"),
    (S.PERMISSION_DENIED, "Token Authorization failed", CredentialsRefused, "refused the gateway's token"),
])
def test_torchserve_statuses_are_read_with_the_java_exception(code: grpc.StatusCode, details: str,
                                                              error: type[GatewayError], message: str) -> None:
    backend = TorchServeGrpcBackend(BackendConfig(name="ts", kind="torchserve", url="http://x", transport="grpc",
                                                  grpc_target="127.0.0.1:1"))
    mapped = backend.inference.channel(Endpoint("127.0.0.1:1")).error(code, details, "model 'm' version 1", 2.5)
    assert type(mapped) is error
    assert message in mapped.message
    assert "org.pytorch" not in mapped.message
