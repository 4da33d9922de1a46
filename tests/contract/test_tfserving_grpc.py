"""TF Serving's gRPC API through the official tensorflow-serving-api stubs.

PredictionService (Predict, Classify, Regress, MultiInference, GetModelMetadata) and
ModelService.GetModelStatus; reloads are in test_tfserving_reload.py.
"""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def predictions(tfs) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(tfs.channel)


@pytest.fixture(scope="module")
def models(tfs) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(tfs.channel)


def predict_request(name: str, inputs: dict[str, np.ndarray], **spec: object) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if "version" in spec:
        request.model_spec.version.value = int(spec["version"])  # type: ignore[call-overload]
    if "label" in spec:
        request.model_spec.version_label = str(spec["label"])
    if "signature" in spec:
        request.model_spec.signature_name = str(spec["signature"])
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT)
    return info.value


X = np.array([[1, 2, 3]], dtype=np.float32)


# ----------------------------------------------------------------------------- Predict


def test_predict_names_the_version_served(predictions):
    response = predictions.Predict(predict_request("affine", {"x": X}), timeout=TIMEOUT)
    assert response.model_spec == model_pb2.ModelSpec(
        name="affine", signature_name="serving_default", version={"value": 2}
    )
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [[3.5, 4.0, 4.5]])


def test_predict_a_specific_version(predictions):
    response = predictions.Predict(predict_request("affine_all", {"x": X}, version=1), timeout=TIMEOUT)
    assert response.model_spec.version.value == 1
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [[2.5, 3.0, 3.5]])


def test_predict_every_dtype(predictions):
    inputs = {
        "a": np.array([[1, 2], [-5, 1]], dtype=np.float32),
        "b": np.array([[3, 4], [-1, 0]], dtype=np.int64),
        "s": np.array([b"hello", b"\x00\xffbin"], dtype=object),
    }
    response = predictions.Predict(predict_request("multi", inputs), timeout=TIMEOUT)
    outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    assert set(outputs) == {"total", "b_doubled", "text", "positive", "s_bytes"}
    np.testing.assert_allclose(outputs["total"], [3.0, -4.0])
    assert outputs["b_doubled"].dtype == np.int64 and outputs["b_doubled"].tolist() == [[6, 8], [-2, 0]]
    assert outputs["text"].tolist() == [b"HELLO", b"\x00\xffBIN"]
    assert outputs["positive"].tolist() == [True, False]
    assert outputs["s_bytes"].tolist() == [b"hello", b"\x00\xffbin"]


def test_predict_output_filter(predictions):
    inputs = {"a": np.ones((1, 2), np.float32), "b": np.ones((1, 2), np.int64), "s": np.array([b"x"], dtype=object)}
    request = predict_request("multi", inputs)
    request.output_filter.append("total")
    response = predictions.Predict(request, timeout=TIMEOUT)
    assert list(response.outputs) == ["total"]


def test_predict_unknown_output_filter(predictions):
    inputs = {"a": np.ones((1, 2), np.float32), "b": np.ones((1, 2), np.int64), "s": np.array([b"x"], dtype=object)}
    request = predict_request("multi", inputs)
    request.output_filter.append("nope")
    error = rpc_error(predictions.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "output tensor alias not found in signature: nope Outputs expected to be in the set "
        "{b_doubled,positive,s_bytes,text,total}."
    )


def test_predict_wrong_dtype_is_invalid_argument(predictions):
    error = rpc_error(predictions.Predict, predict_request("affine", {"x": X.astype(np.int64)}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "int64" in error.details() and "float" in error.details()


def test_predict_missing_input_is_invalid_argument(predictions):
    error = rpc_error(predictions.Predict, predict_request("multi", {"a": np.ones((1, 2), np.float32)}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "input size does not match signature: 1!=3 len({a}) != len({a,b,s}). "
        "Sent extra: {}. Missing but required: {b,s}."
    )


def test_predict_wrong_input_name_is_invalid_argument(predictions):
    error = rpc_error(predictions.Predict, predict_request("affine", {"z": X}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "Signature input alias: x(feed name: serving_default_x:0) not found in request and no default value "
        "provided. Inputs expected to be in the request {z}, or default input alias set: "
    )


def test_predict_wrong_shape_for_the_graph_is_invalid_argument(predictions):
    request = predict_request("multi", {"x": np.ones((1, 5), np.float32)}, signature="matmul")
    error = rpc_error(predictions.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Matrix size-incompatible" in error.details()


def test_predict_unknown_signature_is_failed_precondition(predictions):
    error = rpc_error(predictions.Predict, predict_request("affine", {"x": X}, signature="nope"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == 'Serving signature key "nope" not found.'


def test_predict_without_model_spec_is_invalid_argument(predictions):
    error = rpc_error(predictions.Predict, predict_pb2.PredictRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Missing ModelSpec"


def test_predict_unknown_model_is_not_found(predictions):
    error = rpc_error(predictions.Predict, predict_request("nope", {"x": X}))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Latest(nope)"


def test_predict_version_not_loaded_is_not_found(predictions):
    error = rpc_error(predictions.Predict, predict_request("affine", {"x": X}, version=1))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Specific(affine, 1)"


def test_predict_unknown_label_is_invalid_argument(predictions):
    error = rpc_error(predictions.Predict, predict_request("affine", {"x": X}, label="nope"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Unrecognized servable version label: nope"


def test_error_messages_are_truncated_at_1024_characters(predictions):
    inputs = {f"extra_input_{i:04d}": X for i in range(120)}
    error = rpc_error(predictions.Predict, predict_request("affine", inputs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details()
    assert details.startswith("input size does not match signature: 120!=1 ")
    assert details.endswith("...TRUNCATED") and len(details) == 1024 + len("...TRUNCATED")


def test_messages_larger_than_4mb_both_ways(predictions):
    x = np.tile(np.array([[1, 2, 3]], dtype=np.float32), (500_000, 1))  # 6 MB each way
    response = predictions.Predict(predict_request("affine", {"x": x}), timeout=60)
    y = tf.make_ndarray(response.outputs["y"])
    assert y.shape == (500_000, 3)
    np.testing.assert_allclose(y[-1], [3.5, 4.0, 4.5])


# ----------------------------------------------------------------------------- metadata and status


def test_get_model_metadata_packs_the_signature_def_map(predictions):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "affine"
    response = predictions.GetModelMetadata(request, timeout=TIMEOUT)
    assert response.model_spec == model_pb2.ModelSpec(name="affine", version={"value": 2})
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    signature = signature_map.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert signature.inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in signature.inputs["x"].tensor_shape.dim] == [-1, 3]
    assert list(signature.outputs) == ["y"]


def test_get_model_metadata_requires_a_metadata_field(predictions):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "affine"
    error = rpc_error(predictions.GetModelMetadata, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "GetModelMetadataRequest must specify at least one metadata_field"


def test_get_model_metadata_rejects_unknown_fields(predictions):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def", "graph"])
    request.model_spec.name = "affine"
    error = rpc_error(predictions.GetModelMetadata, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Metadata field graph is not supported"


def test_get_model_status(models):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "affine_all"
    response = models.GetModelStatus(request, timeout=TIMEOUT)
    states = [(s.version, s.state, s.status.error_code) for s in response.model_version_status]
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert states == [(2, available, 0), (1, available, 0)]


def test_get_model_status_of_unknown_model_is_not_found(models):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    error = rpc_error(models.GetModelStatus, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Could not find any versions of model nope"


# ----------------------------------------------------------------------------- classify, regress, multi


def _examples(values: list[float]) -> list[example_pb2.Example]:
    examples = []
    for value in values:
        example = example_pb2.Example()
        example.features.feature["f"].float_list.value.append(value)
        examples.append(example)
    return examples


def test_classify_on_a_predict_signature_is_invalid_argument(predictions):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "affine"
    request.input.example_list.examples.extend(_examples([1.0]))
    error = rpc_error(predictions.Classify, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("No classification inputs found in SignatureDef: ")


def test_classify(predictions):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "multi"
    request.model_spec.signature_name = "classify"
    request.input.example_list.examples.extend(_examples([0.0, 2.0]))
    response = predictions.Classify(request, timeout=TIMEOUT)
    assert response.model_spec.version.value == 1
    rows = [[(c.label, c.score) for c in row.classes] for row in response.result.classifications]
    assert [[label for label, _ in row] for row in rows] == [["neg", "pos"], ["neg", "pos"]]
    assert rows[1][1][1] == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-5)


def test_regress(predictions):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "multi"
    request.model_spec.signature_name = "regress"
    request.input.example_list.examples.extend(_examples([1.5, -1.0]))
    response = predictions.Regress(request, timeout=TIMEOUT)
    assert [r.value for r in response.result.regressions] == [3.0, -2.0]


def test_multi_inference_with_a_predict_method_is_unimplemented(predictions):
    request = inference_pb2.MultiInferenceRequest()
    task = request.tasks.add(method_name="tensorflow/serving/predict")
    task.model_spec.name = "multi"
    request.input.example_list.examples.extend(_examples([1.0]))
    error = rpc_error(predictions.MultiInference, request)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.details() == "Unsupported signature method_name: tensorflow/serving/predict"


def test_multi_inference_runs_classify_and_regress_tasks(predictions):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify", "classify"), ("regress", "regress")):
        task = request.tasks.add(method_name=f"tensorflow/serving/{method}")
        task.model_spec.name = "multi"
        task.model_spec.signature_name = signature
    request.input.example_list.examples.extend(_examples([1.5]))
    response = predictions.MultiInference(request, timeout=TIMEOUT)
    assert [r.model_spec.signature_name for r in response.results] == ["classify", "regress"]
    assert [c.label for c in response.results[0].classification_result.classifications[0].classes] == ["neg", "pos"]
    assert response.results[1].regression_result.regressions[0].value == 3.0
