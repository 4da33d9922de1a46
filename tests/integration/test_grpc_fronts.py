"""The gateway's gRPC fronts with clients nobody here wrote: the official tensorflow-serving-api stubs and
tritonclient's gRPC client; both backend kinds over both transports; errors as gRPC status codes."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as tritongrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tritonclient.utils import InferenceServerException

from .stack import MAX_BODY_BYTES, Gateway
from .test_translation_matrix import BACKEND, EXPECTED, MODELS

X = np.array([[1.0, 2.0, 3.0], [-4.0, 0.5, 10.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def channel(gateway: Gateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.grpc_target, options=[("grpc.max_send_message_length", -1)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def tf_stub(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def triton(gateway: Gateway) -> Iterator[tritongrpc.InferenceServerClient]:
    client = tritongrpc.InferenceServerClient(url=gateway.grpc_target)
    yield client
    client.close()


def predict_request(model: str, x: np.ndarray, version: int | None = None,  # type: ignore[type-arg]
                    label: str | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    return request


def trailing(call: grpc.Call) -> dict[str, str]:
    return {k: v for k, v in call.trailing_metadata()}


# --- TF Serving PredictionService with the official stub ---

@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("version", [1, 2])
def test_tf_grpc_predict_every_backend(tf_stub: prediction_service_pb2_grpc.PredictionServiceStub, model: str,
                                       version: int) -> None:
    response, call = tf_stub.Predict.with_call(predict_request(model, X, version), timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), EXPECTED[model][str(version)](X), rtol=1e-6)
    assert response.model_spec.name == model and response.model_spec.version.value == version
    assert trailing(call) == {"x-model-name": model, "x-model-version": str(version), "x-backend": BACKEND[model]}


def test_tf_grpc_label_and_default(tf_stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    labelled = tf_stub.Predict(predict_request("scale", X, label="stable"), timeout=30)
    assert labelled.model_spec.version.value == 1
    default = tf_stub.Predict(predict_request("affine", X), timeout=30)
    assert default.model_spec.version.value == 2


def test_tf_grpc_every_dtype_of_multi(tf_stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "multi"
    request.inputs["a"].CopyFrom(tf.make_tensor_proto(np.array([[1.5, 2.5], [-10, 1]], np.float32)))
    request.inputs["b"].CopyFrom(tf.make_tensor_proto(np.array([[1, 2], [3, 4]], np.int64)))
    request.inputs["s"].CopyFrom(tf.make_tensor_proto(np.array([b"hi", b"yo"], dtype=object)))
    request.output_filter.extend(["text", "positive"])
    response = tf_stub.Predict(request, timeout=30)
    assert sorted(response.outputs) == ["positive", "text"]
    assert tf.make_ndarray(response.outputs["text"]).tolist() == [b"HI", b"YO"]
    assert tf.make_ndarray(response.outputs["positive"]).tolist() == [True, False]


def test_tf_grpc_metadata_and_status(channel: grpc.Channel,
                                     tf_stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    for model in ("affine", "scale_grpc"):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        response = tf_stub.GetModelMetadata(request, timeout=30)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(sigs)
        x = sigs.signature_def["serving_default"].inputs["x"]
        assert x.dtype == tf.float32.as_datatype_enum
        assert [d.size for d in x.tensor_shape.dim] == [-1, 3]
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "scale_grpc"}), timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == [(2, 30), (1, 30)], status


# --- Open Inference Protocol v2 with tritonclient's gRPC client ---

def test_triton_grpc_health_and_metadata(triton: tritongrpc.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("scale_grpc", "1")
    meta = triton.get_model_metadata("affine_grpc", as_json=True)
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "3"]}]
    assert triton.get_server_metadata(as_json=True)["name"] == "model-gateway"


@pytest.mark.parametrize("model", MODELS)
def test_triton_grpc_infer_every_backend(triton: tritongrpc.InferenceServerClient, model: str) -> None:
    inp = tritongrpc.InferInput("x", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    result = triton.infer(model, [inp], model_version="1", request_id="g1", client_timeout=30)
    np.testing.assert_allclose(result.as_numpy("y"), EXPECTED[model]["1"](X), rtol=1e-6)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (model, "1", "g1")


def test_triton_grpc_bytes_and_int64(triton: tritongrpc.InferenceServerClient) -> None:
    inputs = []
    for name, arr, dt in (("a", np.array([[1.5, 2.5], [-10.0, 1.0]], np.float32), "FP32"),
                          ("b", np.array([[1, 2], [3, 4]], np.int64), "INT64"),
                          ("s", np.array([b"hello", "wörld".encode()], dtype=object), "BYTES")):
        inp = tritongrpc.InferInput(name, list(arr.shape), dt)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    result = triton.infer("multi", inputs, client_timeout=30)
    assert result.as_numpy("b_doubled").tolist() == [[2, 4], [6, 8]]
    assert result.as_numpy("text").tolist() == [b"HELLO", "WöRLD".encode()]


# --- errors: the right status code and a readable message, never UNKNOWN or a hang ---

def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value


def test_tf_grpc_errors(tf_stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    err = rpc_error(tf_stub.Predict, predict_request("nope", X), timeout=10)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "Servable not found for request: Latest(nope)" in err.details()
    err = rpc_error(tf_stub.Predict, predict_request("affine", X, label="gold"), timeout=10)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "Unrecognized servable version label" in err.details()
    err = rpc_error(tf_stub.Predict, predict_request("scale", X.astype(np.int32)), timeout=10)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "datatype INT32" in err.details()
    err = rpc_error(tf_stub.Predict, predict_request("affine_grpc", np.zeros((1, 4), np.float32)), timeout=10)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not match" in err.details()
    err = rpc_error(tf_stub.Predict, predict_request("ghost", X), timeout=10)
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "unreachable" in err.details()


def test_grpc_oversized_message_is_resource_exhausted(
        tf_stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    big = np.zeros((MAX_BODY_BYTES // 12 + 10, 3), np.float32)
    err = rpc_error(tf_stub.Predict, predict_request("scale", big), timeout=10)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpc_client_deadline_is_honoured_and_passed_on(tf_stub: prediction_service_pb2_grpc.PredictionServiceStub
                                                        ) -> None:
    # `sleepy` sits behind a backend that never answers and has a 0.5 s timeout of its own: a 0.2 s client
    # deadline must end the call first, as DEADLINE_EXCEEDED.
    err = rpc_error(tf_stub.Predict, predict_request("sleepy", X), timeout=0.2)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_triton_grpc_errors(triton: tritongrpc.InferenceServerClient) -> None:
    inp = tritongrpc.InferInput("x", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match="not served") as info:
        triton.infer("nope", [inp])
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="has no version 9"):
        triton.infer("scale", [inp], model_version="9")


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService", "tensorflow.serving.PredictionService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=10))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "tensorflow.serving.PredictionService",
            "tensorflow.serving.ModelService", "grpc.health.v1.Health"} <= names
