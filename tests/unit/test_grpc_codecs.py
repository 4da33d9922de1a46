"""gRPC codecs: TF Serving's TensorProto / Predict / metadata / status and the Open Inference Protocol v2 messages
<-> internal types, every datatype both ways (typed and raw), TF's scalar fill, and each bad-input message.

The official messages (tensorflow, tensorflow-serving-api, tritonclient) are the reference: messages cross
between the two sides as serialized bytes, and tf.make_ndarray / tritonclient's as_numpy read what we write."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton
import tritonclient.grpc.service_pb2 as triton_pb2
from google.protobuf.message import Message
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2
from tritonclient.utils import serialize_byte_tensor

from gateway.codecs import tf_json, tf_proto, v2_grpc
from gateway.errors import BackendError, InvalidArgument, Unimplemented
from gateway.protos import tf_framework_pb2, tf_serving_pb2, v2_pb2
from gateway.types import InferRequest, InferResponse, ModelRef, ModelSchema, ModelStatus, Target, Tensor, TensorSpec

REF = ModelRef("m")
TARGET = Target(backend="b", model="m_there", version="3", logical_model="m", logical_version="1")


def cross(message: Message, cls: type[Any]) -> Any:
    """The same bytes read by the other side's class."""
    return cls.FromString(message.SerializeToString())


def bytes_array(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr.reshape(shape)


# Every v2 datatype with values that exercise its range.
SAMPLES: dict[str, np.ndarray[Any, Any]] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 255, 7], [1, 2, 3]], np.uint8),
    "UINT16": np.array([[0, 65535, 7], [1, 2, 3]], np.uint16),
    "UINT32": np.array([[0, 2**32 - 1, 7], [1, 2, 3]], np.uint32),
    "UINT64": np.array([[0, 2**64 - 1, 7], [1, 2, 3]], np.uint64),
    "INT8": np.array([[-128, 127, 0], [1, -2, 3]], np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1, 0], [1, -2, 3]], np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1, 0], [1, -2, 3]], np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1, 0], [1, -2, 3]], np.int64),
    "FP16": np.array([[0.5, -1.5, 65504], [1e-3, 0, 2]], np.float16),
    "FP32": np.array([[0.5, -1.5, 3.4e38], [1e-30, 0, 2]], np.float32),
    "FP64": np.array([[0.5, -1.5, 1e300], [1e-300, 0, 2]], np.float64),
    "BYTES": bytes_array([b"a", b"", b"\x00\xff", b"hello", b"\xe2\x82\xac", b"x" * 300], (2, 3)),
}
NUMERIC = [d for d in SAMPLES if d != "BYTES"]


def assert_tensor(tensor: Tensor, datatype: str, expected: np.ndarray[Any, Any]) -> None:
    assert tensor.datatype == datatype
    assert tensor.data.shape == expected.shape
    if datatype == "BYTES":
        assert tensor.data.tolist() == expected.tolist()
    else:
        assert tensor.data.dtype == expected.dtype
        np.testing.assert_array_equal(tensor.data, expected)


# ============================================================================ TF Serving: TensorProto


def official_shape(shape: tuple[int, ...]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape])


def gateway_proto(**fields: Any) -> tf_framework_pb2.TensorProto:
    shape = fields.pop("shape", ())
    proto = tf_framework_pb2.TensorProto(**fields)
    proto.tensor_shape.dim.extend(tf_framework_pb2.TensorShapeProto.Dim(size=d) for d in shape)
    return proto


def test_tf_dtype_table_matches_tensorflow() -> None:
    for dtype, datatype in tf_proto.DTYPE_TO_V2.items():
        tf_dtype = tf.dtypes.as_dtype(dtype)
        expected = "BYTES" if tf_dtype == tf.string else {"float16": "FP16", "float32": "FP32", "float64": "FP64",
                                                          "bool": "BOOL"}.get(tf_dtype.name, tf_dtype.name.upper())
        assert datatype == expected
        assert tf_proto.V2_TO_DTYPE[datatype] == dtype
    assert set(tf_proto.V2_TO_DTYPE) == set(SAMPLES)


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_tf_make_tensor_proto_decodes_like_make_ndarray(datatype: str) -> None:
    """tf.make_tensor_proto picks tensor_content or a typed field itself; we read both as TF does."""
    official = tf.make_tensor_proto(SAMPLES[datatype])
    tensor = tf_proto.tensor_from_proto("x", cross(official, tf_framework_pb2.TensorProto))
    assert_tensor(tensor, datatype, tf.make_ndarray(official))
    assert_tensor(tensor, datatype, SAMPLES[datatype])


# The typed field each dtype uses, filled by hand (tf.make_tensor_proto prefers tensor_content for numbers).
def typed_official(datatype: str, values: np.ndarray[Any, Any]) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=tf_proto.V2_TO_DTYPE[datatype], tensor_shape=official_shape(values.shape))
    flat = values.reshape(-1)
    if datatype == "FP16":
        proto.half_val.extend(flat.view(np.uint16).tolist())
    else:
        getattr(proto, tf_proto._TYPED_FIELD[datatype]).extend(flat.tolist())
    return proto


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_tf_typed_fields_decode_like_make_ndarray(datatype: str) -> None:
    official = typed_official(datatype, SAMPLES[datatype])
    assert not official.tensor_content
    tensor = tf_proto.tensor_from_proto("x", cross(official, tf_framework_pb2.TensorProto))
    assert_tensor(tensor, datatype, tf.make_ndarray(official))


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_tf_one_typed_value_fills_the_shape(datatype: str) -> None:
    one = SAMPLES[datatype].reshape(-1)[1:2]
    official = typed_official(datatype, one)
    official.tensor_shape.CopyFrom(official_shape((2, 3)))
    tensor = tf_proto.tensor_from_proto("x", cross(official, tf_framework_pb2.TensorProto))
    assert_tensor(tensor, datatype, tf.make_ndarray(official))
    assert tensor.data.shape == (2, 3) and len({repr(v) for v in tensor.data.reshape(-1).tolist()}) == 1


def test_tf_scalar_fill_from_make_tensor_proto() -> None:
    official = tf.make_tensor_proto(7, dtype=tf.int8, shape=[2, 2])
    assert list(official.int_val) == [7]
    tensor = tf_proto.tensor_from_proto("x", cross(official, tf_framework_pb2.TensorProto))
    assert_tensor(tensor, "INT8", np.full((2, 2), 7, np.int8))


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_tf_tensor_to_proto_reads_back_with_make_ndarray(datatype: str) -> None:
    proto = tf_proto.tensor_to_proto(Tensor("x", datatype, SAMPLES[datatype]))
    assert bool(proto.tensor_content) == (datatype != "BYTES")  # numbers always travel raw
    official = cross(proto, tensor_pb2.TensorProto)
    got = tf.make_ndarray(official)
    assert official.dtype == tf_proto.V2_TO_DTYPE[datatype]
    if datatype == "BYTES":
        assert got.tolist() == SAMPLES[datatype].tolist()
    else:
        assert got.dtype == SAMPLES[datatype].dtype
        np.testing.assert_array_equal(got, SAMPLES[datatype])


def test_tf_scalars_and_empty_tensors() -> None:
    scalar = tf_proto.tensor_to_proto(Tensor("s", "FP32", np.array(2.5, np.float32)))
    assert list(cross(scalar, tensor_pb2.TensorProto).tensor_shape.dim) == []
    assert tf.make_ndarray(cross(scalar, tensor_pb2.TensorProto)) == np.float32(2.5)
    assert_tensor(tf_proto.tensor_from_proto("s", scalar), "FP32", np.array(2.5, np.float32))
    empty = tf_proto.tensor_to_proto(Tensor("e", "INT32", np.zeros((0, 3), np.int32)))
    assert tf.make_ndarray(cross(empty, tensor_pb2.TensorProto)).shape == (0, 3)
    assert_tensor(tf_proto.tensor_from_proto("e", empty), "INT32", np.zeros((0, 3), np.int32))
    assert_tensor(tf_proto.tensor_from_proto("e", gateway_proto(dtype=tf_framework_pb2.DT_STRING, shape=(0,))),
                  "BYTES", bytes_array([], (0,)))


DT = tf_framework_pb2.DataType


@pytest.mark.parametrize(("proto", "message"), [
    (gateway_proto(dtype=DT.DT_COMPLEX64, shape=(1,), scomplex_val=[1, 2]),
     "input 'x': unsupported dtype DT_COMPLEX64"),
    (gateway_proto(dtype=DT.DT_BFLOAT16, shape=(1,), half_val=[1]), "input 'x': unsupported dtype DT_BFLOAT16"),
    (gateway_proto(dtype=DT.DT_INVALID), "input 'x': unsupported dtype DT_INVALID"),
    (gateway_proto(dtype=DT.DT_FLOAT, float_val=[1], tensor_shape=tf_framework_pb2.TensorShapeProto(unknown_rank=True)),
     "input 'x': tensor_shape has unknown_rank set"),
    (gateway_proto(dtype=DT.DT_FLOAT, shape=(-1, 2), float_val=[1, 2]),
     "input 'x': tensor_shape [-1, 2] has an unknown"),
    (gateway_proto(dtype=DT.DT_FLOAT, shape=(2, 3), float_val=[1, 2, 3, 4]),
     "input 'x': shape [2, 3] needs 6 elements, got 4 in float_val"),
    (gateway_proto(dtype=DT.DT_FLOAT, shape=(2,), float_val=[1, 2, 3]),
     "shape [2] needs 2 elements, got 3 in float_val"),
    (gateway_proto(dtype=DT.DT_FLOAT, shape=(2,)), "shape [2] needs 2 elements, got 0 in float_val"),
    (gateway_proto(dtype=DT.DT_FLOAT, shape=(2,), int_val=[1, 2]), "shape [2] needs 2 elements, got 0 in float_val"),
    (gateway_proto(dtype=DT.DT_STRING, shape=(3,), string_val=[b"a", b"b"]), "needs 3 elements, got 2 in string_val"),
    (gateway_proto(dtype=DT.DT_FLOAT, shape=(2,), tensor_content=b"\x00" * 4),
     "input 'x': FP32 shape [2] needs 8 bytes of tensor_content, got 4"),
    (gateway_proto(dtype=DT.DT_BOOL, shape=(2,), tensor_content=b"\x01\x02"),
     "BOOL tensor_content must be bytes 0 or 1"),
    (gateway_proto(dtype=DT.DT_STRING, shape=(1,), tensor_content=b"abc"), "DT_STRING values travel in string_val"),
    (gateway_proto(dtype=DT.DT_INT8, shape=(1,), int_val=[128]),
     "a value in int_val is out of range for INT8 [-128, 127]"),
    (gateway_proto(dtype=DT.DT_UINT8, shape=(1,), int_val=[-1]), "out of range for UINT8 [0, 255]"),
    (gateway_proto(dtype=DT.DT_UINT16, shape=(1,), int_val=[65536]), "out of range for UINT16 [0, 65535]"),
    (gateway_proto(dtype=DT.DT_HALF, shape=(1,), half_val=[70000]), "a value in half_val is out of range for FP16"),
])
def test_tf_bad_tensors_are_invalid_argument(proto: tf_framework_pb2.TensorProto, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        tf_proto.tensor_from_proto("x", proto)
    assert message in info.value.message


def test_tf_output_errors_name_an_output() -> None:
    resp = tf_serving_pb2.PredictResponse()
    resp.outputs["y"].CopyFrom(gateway_proto(dtype=DT.DT_COMPLEX64, shape=(1,)))
    with pytest.raises(InvalidArgument, match="output 'y': unsupported dtype DT_COMPLEX64"):
        tf_proto.decode_predict_response(resp)


def test_tf_tensor_to_proto_refuses_an_unknown_datatype() -> None:
    with pytest.raises(InvalidArgument, match="datatype BF16 has no TensorFlow dtype"):
        tf_proto.tensor_to_proto(Tensor("x", "BF16", np.zeros(1, np.float32)))


# ============================================================================ TF Serving: Predict


def official_predict(**spec: Any) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(**spec))
    req.inputs["a"].CopyFrom(tf.make_tensor_proto(np.array([[1, 2]], np.float32)))
    req.inputs["s"].CopyFrom(tf.make_tensor_proto(np.array([b"x", b"\xff"], dtype=object)))
    return req


def test_tf_decode_predict_request_reads_model_spec_and_inputs() -> None:
    req = official_predict(name="affine", version={"value": 2}, signature_name="sig")
    req.output_filter.extend(["y", "z"])
    decoded = tf_proto.decode_predict_request(cross(req, tf_serving_pb2.PredictRequest))
    assert decoded.model == ModelRef("affine", version="2")
    assert decoded.signature_name == "sig"
    assert decoded.output_names == ("y", "z")
    assert [t.name for t in decoded.inputs] == ["a", "s"]
    assert_tensor(decoded.inputs[0], "FP32", np.array([[1, 2]], np.float32))
    assert_tensor(decoded.inputs[1], "BYTES", bytes_array([b"x", b"\xff"], (2,)))


def test_tf_decode_predict_request_label_and_default_signature() -> None:
    decoded = tf_proto.decode_predict_request(cross(official_predict(name="affine", version_label="stable"),
                                                    tf_serving_pb2.PredictRequest))
    assert decoded.model == ModelRef("affine", label="stable")
    assert decoded.signature_name == "serving_default"
    latest = tf_proto.decode_predict_request(cross(official_predict(name="affine"), tf_serving_pb2.PredictRequest))
    assert latest.model == ModelRef("affine")


def test_tf_decode_predict_request_needs_a_model_spec() -> None:
    with pytest.raises(InvalidArgument, match="Missing ModelSpec"):
        tf_proto.decode_predict_request(tf_serving_pb2.PredictRequest())


def test_tf_encode_predict_response_names_the_version_served() -> None:
    response = InferResponse(outputs=(Tensor("y", "FP32", np.array([[2.5, 3]], np.float32)),
                                      Tensor("t", "BYTES", bytes_array([b"A"], (1,)))))
    official = cross(tf_proto.encode_predict_response(response, "affine", "2"), predict_pb2.PredictResponse)
    assert official.model_spec == model_pb2.ModelSpec(name="affine", version={"value": 2},
                                                      signature_name="serving_default")
    np.testing.assert_array_equal(tf.make_ndarray(official.outputs["y"]), [[2.5, 3]])
    assert tf.make_ndarray(official.outputs["t"]).tolist() == [b"A"]


def test_tf_encode_predict_request_targets_the_backend_model() -> None:
    request = InferRequest(model=REF, inputs=(Tensor("x", "INT64", np.array([[1, 2]], np.int64)),),
                           output_names=("y",), signature_name="sig")
    official = cross(tf_proto.encode_predict_request(request, TARGET), predict_pb2.PredictRequest)
    assert official.model_spec == model_pb2.ModelSpec(name="m_there", version={"value": 3}, signature_name="sig")
    assert list(official.output_filter) == ["y"]
    np.testing.assert_array_equal(tf.make_ndarray(official.inputs["x"]), [[1, 2]])
    plain = tf_proto.encode_predict_request(InferRequest(model=REF, inputs=()), TARGET)
    assert plain.model_spec.signature_name == "" and not plain.output_filter  # TF's default signature


def test_tf_encode_predict_request_needs_a_numeric_version() -> None:
    target = Target(backend="b", model="m", version="1.0", logical_model="m", logical_version="1")
    with pytest.raises(InvalidArgument, match=r"version '1\.0' is not a number"):
        tf_proto.encode_predict_request(InferRequest(model=REF, inputs=()), target)


def test_tf_decode_predict_response_in_name_order() -> None:
    resp = predict_pb2.PredictResponse()
    resp.outputs["z"].CopyFrom(tf.make_tensor_proto(np.array([True])))
    resp.outputs["a"].CopyFrom(tf.make_tensor_proto(np.array([1.5, 2], np.float64)))
    outputs = tf_proto.decode_predict_response(cross(resp, tf_serving_pb2.PredictResponse))
    assert [t.name for t in outputs] == ["a", "z"]
    assert_tensor(outputs[0], "FP64", np.array([1.5, 2]))
    assert_tensor(outputs[1], "BOOL", np.array([True]))


# ============================================================================ TF Serving: metadata and status


def official_metadata(**signatures: meta_graph_pb2.SignatureDef) -> get_model_metadata_pb2.GetModelMetadataResponse:
    sigs = get_model_metadata_pb2.SignatureDefMap()
    for name, sig in signatures.items():
        sigs.signature_def[name].CopyFrom(sig)
    resp = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=model_pb2.ModelSpec(name="multi", version={"value": 1}))
    resp.metadata["signature_def"].Pack(sigs)  # the official type URL: tensorflow.serving.SignatureDefMap
    return resp


def tensor_info(name: str, dtype: int, *dims: int) -> meta_graph_pb2.TensorInfo:
    return meta_graph_pb2.TensorInfo(name=name, dtype=dtype, tensor_shape=official_shape(dims))


MULTI_SIG = meta_graph_pb2.SignatureDef(
    inputs={"a": tensor_info("serving_default_a:0", types_pb2.DT_FLOAT, -1, 2),
            "s": tensor_info("serving_default_s:0", types_pb2.DT_STRING, -1)},
    outputs={"total": tensor_info("StatefulPartitionedCall:0", types_pb2.DT_FLOAT, -1),
             "positive": tensor_info("StatefulPartitionedCall:1", types_pb2.DT_BOOL, -1)},
    method_name="tensorflow/serving/predict")


def test_tf_signature_schema_unpacks_the_signature_def_map() -> None:
    metadata = cross(official_metadata(serving_default=MULTI_SIG, other=meta_graph_pb2.SignatureDef()),
                     tf_serving_pb2.GetModelMetadataResponse)
    assert tf_proto.signature_schema(metadata, "serving_default") == ModelSchema(
        inputs=(TensorSpec("a", "FP32", (-1, 2)), TensorSpec("s", "BYTES", (-1,))),
        outputs=(TensorSpec("positive", "BOOL", (-1,)), TensorSpec("total", "FP32", (-1,))))
    assert tf_proto.signature_schema(metadata, "other") == ModelSchema()
    # The REST document built from the same answer gives the same schema through the REST codec.
    doc = tf_proto.metadata_to_json(metadata)
    assert doc["model_spec"] == {"name": "multi", "version": "1", "signature_name": ""}
    assert tf_json.signature_specs(doc, "serving_default") == tf_proto.signature_schema(metadata, "serving_default")


def test_tf_signature_schema_errors() -> None:
    metadata = cross(official_metadata(serving_default=MULTI_SIG), tf_serving_pb2.GetModelMetadataResponse)
    with pytest.raises(InvalidArgument, match='Serving signature name: "nope" not found in signature def'):
        tf_proto.signature_schema(metadata, "nope")
    with pytest.raises(BackendError, match="no signature_def"):
        tf_proto.signature_schema(tf_serving_pb2.GetModelMetadataResponse(), "serving_default")


def test_tf_encode_metadata_response_reads_with_the_official_classes() -> None:
    schema = ModelSchema(inputs=(TensorSpec("x", "FP32", (-1, 3)),), outputs=(TensorSpec("y", "INT8", (-1,)),))
    official = cross(tf_proto.encode_metadata_response("scale", "2", schema),
                     get_model_metadata_pb2.GetModelMetadataResponse)
    assert official.model_spec == model_pb2.ModelSpec(name="scale", version={"value": 2})
    assert official.metadata["signature_def"].type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert official.metadata["signature_def"].Unpack(sigs)
    sig = sigs.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert sig.inputs["x"] == tensor_info("x", types_pb2.DT_FLOAT, -1, 3)
    assert sig.outputs["y"] == tensor_info("y", types_pb2.DT_INT8, -1)
    assert tf_proto.signature_schema(cross(official, tf_serving_pb2.GetModelMetadataResponse),
                                     "serving_default") == schema


def test_tf_status_both_ways() -> None:
    State = get_model_status_pb2.ModelVersionStatus
    official = get_model_status_pb2.GetModelStatusResponse(model_version_status=[
        State(version=2, state=State.AVAILABLE),
        State(version=1, state=State.END, status={"error_code": 2, "error_message": "load failed"})])
    resp = cross(official, tf_serving_pb2.GetModelStatusResponse)
    assert tf_proto.statuses_from_proto(resp) == (ModelStatus("2", "AVAILABLE"), ModelStatus("1", "END", "load failed"))
    assert tf_proto.status_from_proto(resp) == ModelStatus("2", "AVAILABLE")
    assert tf_proto.status_from_proto(resp, "1") == ModelStatus("1", "END", "load failed")
    assert tf_proto.status_from_proto(resp, "7").state == "UNKNOWN"

    statuses = [ModelStatus("3", "LOADING"), ModelStatus("2", "AVAILABLE"), ModelStatus("1", "END", "gone"),
                ModelStatus("4", "UNKNOWN", "backend down"), ModelStatus("5", "WEIRD")]
    encoded = cross(tf_proto.encode_status_response(statuses), get_model_status_pb2.GetModelStatusResponse)
    assert [(s.version, State.State.Name(s.state), s.status.error_code, s.status.error_message)
            for s in encoded.model_version_status] == [
        (3, "LOADING", 0, ""), (2, "AVAILABLE", 0, ""), (1, "END", 2, "gone"), (4, "UNKNOWN", 14, "backend down"),
        (5, "UNKNOWN", 0, "")]
    for number, name in ((0, "UNKNOWN"), (10, "START"), (20, "LOADING"), (30, "AVAILABLE"), (40, "UNLOADING"),
                         (50, "END")):
        assert tf_serving_pb2.ModelVersionStatus.State.Value(name) == number


# ============================================================================ v2 gRPC: requests


def triton_input(name: str, datatype: str, shape: tuple[int, ...]) -> triton_pb2.ModelInferRequest.InferInputTensor:
    return triton_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


def typed_request(*tensors: tuple[str, str, np.ndarray[Any, Any]]) -> triton_pb2.ModelInferRequest:
    req = triton_pb2.ModelInferRequest(model_name="m")
    for name, datatype, values in tensors:
        entry = req.inputs.add()
        entry.CopyFrom(triton_input(name, datatype, values.shape))
        getattr(entry.contents, v2_grpc.CONTENTS_FIELD[datatype]).extend(values.reshape(-1).tolist())
    return req


def raw_request(*tensors: tuple[str, str, np.ndarray[Any, Any]]) -> triton_pb2.ModelInferRequest:
    req = triton_pb2.ModelInferRequest(model_name="m")
    for name, datatype, values in tensors:
        req.inputs.add().CopyFrom(triton_input(name, datatype, values.shape))
        if datatype == "BYTES":
            req.raw_input_contents.append(serialize_byte_tensor(values).item())
        else:
            req.raw_input_contents.append(values.astype(values.dtype.newbyteorder("<")).tobytes())
    return req


def decode(req: Message) -> InferRequest:
    return v2_grpc.decode_infer_request(cross(req, v2_pb2.ModelInferRequest), REF)


@pytest.mark.parametrize("datatype", [d for d in SAMPLES if d != "FP16"])
def test_v2_typed_contents_every_datatype(datatype: str) -> None:
    decoded = decode(typed_request(("x", datatype, SAMPLES[datatype])))
    assert_tensor(decoded.inputs[0], datatype, SAMPLES[datatype])


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_v2_raw_contents_every_datatype(datatype: str) -> None:
    decoded = decode(raw_request(("x", datatype, SAMPLES[datatype]), ("y", "INT32", np.arange(3, dtype=np.int32))))
    assert_tensor(decoded.inputs[0], datatype, SAMPLES[datatype])
    assert_tensor(decoded.inputs[1], "INT32", np.arange(3, dtype=np.int32))


def test_v2_scalar_and_empty_inputs() -> None:
    decoded = decode(typed_request(("s", "FP32", np.array(2.5, np.float32)),
                                   ("e", "INT64", np.zeros((0, 2), np.int64))))
    assert_tensor(decoded.inputs[0], "FP32", np.array(2.5, np.float32))
    assert_tensor(decoded.inputs[1], "INT64", np.zeros((0, 2), np.int64))


def test_v2_request_fields_parameters_and_outputs() -> None:
    req = typed_request(("x", "FP32", np.ones((1, 2), np.float32)))
    req.id = "req-7"
    req.parameters["flag"].bool_param = True
    req.parameters["n"].int64_param = -3
    req.parameters["s"].string_param = "hi"
    req.parameters["f"].double_param = 0.25
    req.parameters["big"].uint64_param = 2**64 - 1
    req.parameters["binary_data_output"].bool_param = True  # the HTTP binary extension: meaningless here
    req.parameters["unset"].SetInParent()
    req.inputs[0].parameters["binary_data_size"].int64_param = 8
    out = req.outputs.add(name="y")
    out.parameters["binary_data"].bool_param = True
    req.outputs.add(name="z")
    decoded = decode(req)
    assert decoded.id == "req-7"
    assert decoded.parameters == {"big": 2**64 - 1, "f": 0.25, "flag": True, "n": -3, "s": "hi"}
    assert decoded.output_names == ("y", "z")
    assert decoded.binary_outputs == frozenset()
    assert decode(typed_request(("x", "FP32", np.ones(1, np.float32)))).id is None


def v2_case(build: Any) -> triton_pb2.ModelInferRequest:
    req = triton_pb2.ModelInferRequest(model_name="m")
    build(req)
    return req


def add(req: triton_pb2.ModelInferRequest, name: str = "x", datatype: str = "FP32", shape: tuple[int, ...] = (2,),
        **contents: list[Any]) -> triton_pb2.ModelInferRequest.InferInputTensor:
    entry = req.inputs.add(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(entry.contents, field).extend(values)
    return entry


def shared_memory(tensor: Any) -> Any:
    tensor.parameters["shared_memory_region"].string_param = "region0"
    return tensor


@pytest.mark.parametrize(("build", "error", "message"), [
    (lambda r: None, InvalidArgument, "'inputs' must be a non-empty list of tensors"),
    (lambda r: add(r, name="", fp32_contents=[1, 2]), InvalidArgument, "inputs[0]: 'name' must be a non-empty string"),
    (lambda r: add(r, datatype="FP99"), InvalidArgument, "input 'x': unsupported datatype 'FP99'"),
    (lambda r: add(r, shape=(-1, 2)), InvalidArgument, "input 'x': shape [-1, 2] must be non-negative integers"),
    (lambda r: add(r, fp32_contents=[1, 2, 3]), InvalidArgument,
     "input 'x': shape [2] needs 2 elements, got 3 in fp32_contents"),
    (lambda r: add(r, shape=(2, 2), fp32_contents=[1]), InvalidArgument, "shape [2, 2] needs 4 elements, got 1"),
    (lambda r: add(r), InvalidArgument, "input 'x': shape [2] needs 2 elements, got 0 in fp32_contents"),
    (lambda r: add(r, int_contents=[1, 2]), InvalidArgument,
     "input 'x': datatype FP32 takes fp32_contents, got int_contents"),
    (lambda r: add(r, fp32_contents=[1, 2], fp64_contents=[1, 2]), InvalidArgument,
     "takes fp32_contents, got fp64_contents"),
    (lambda r: add(r, datatype="FP16", fp32_contents=[1, 2]), InvalidArgument,
     "input 'x': FP16 data must be sent in raw contents"),
    (lambda r: add(r, datatype="INT8", int_contents=[1, 200]), InvalidArgument,
     "input 'x': a value is out of range for INT8 [-128, 127]"),
    (lambda r: add(r, datatype="INT16", int_contents=[-40000, 1]), InvalidArgument, "out of range for INT16"),
    (lambda r: add(r, datatype="UINT8", uint_contents=[256, 1]), InvalidArgument, "out of range for UINT8 [0, 255]"),
    (lambda r: add(r, datatype="UINT16", uint_contents=[70000, 1]), InvalidArgument, "out of range for UINT16"),
    (lambda r: (add(r, fp32_contents=[1, 2]), add(r, fp32_contents=[1, 2])), InvalidArgument,
     "input names must be unique"),
    (lambda r: (add(r), add(r, name="y"), r.raw_input_contents.append(b"\x00" * 8)), InvalidArgument,
     "raw_input_contents has 1 entries for 2 inputs"),
    (lambda r: (add(r, fp32_contents=[1, 2]), r.raw_input_contents.append(b"\x00" * 8)), InvalidArgument,
     "input 'x': contents must be empty when raw_input_contents is used"),
    (lambda r: (add(r), r.raw_input_contents.append(b"\x00" * 4)), InvalidArgument,
     "input 'x': FP32 shape [2] needs 8 bytes of raw data, got 4"),
    (lambda r: (add(r, datatype="BOOL"), r.raw_input_contents.append(b"\x00\x07")), InvalidArgument,
     "BOOL raw data must be bytes 0 or 1"),
    (lambda r: (add(r, datatype="BYTES"), r.raw_input_contents.append(b"\x05\x00\x00\x00ab")), InvalidArgument,
     "BYTES element of 5 bytes runs past the raw data"),
    (lambda r: (add(r, datatype="BYTES", shape=(3,)), r.raw_input_contents.append(b"\x01\x00\x00\x00a")),
     InvalidArgument, "input 'x': shape [3] needs 3 elements, got 1"),
    (lambda r: shared_memory(add(r, fp32_contents=[1, 2])), Unimplemented,
     "input 'x': shared memory inputs are not supported"),
    (lambda r: (add(r, fp32_contents=[1, 2]), shared_memory(r.outputs.add(name="y"))), Unimplemented,
     "output 'y': shared memory outputs are not supported"),
])
def test_v2_bad_requests(build: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        decode(v2_case(build))
    assert message in str(info.value)


# ============================================================================ v2 gRPC: responses and backend side


def test_v2_encode_infer_response_reads_with_tritonclient() -> None:
    outputs = tuple(Tensor(f"o_{d.lower()}", d, SAMPLES[d]) for d in SAMPLES)
    response = InferResponse(outputs=outputs, model_name="m", model_version="2", id="abc")
    official = cross(v2_grpc.encode_infer_response(response), triton_pb2.ModelInferResponse)
    assert (official.model_name, official.model_version, official.id) == ("m", "2", "abc")
    assert [(o.name, o.datatype, list(o.shape)) for o in official.outputs] == [
        (t.name, t.datatype, [2, 3]) for t in outputs]
    assert len(official.raw_output_contents) == len(outputs)
    result = triton.InferResult(official)
    for tensor in outputs:
        got = result.as_numpy(tensor.name)
        if tensor.datatype == "BYTES":
            assert got.tolist() == tensor.data.tolist()
        else:
            assert got.dtype == tensor.data.dtype
            np.testing.assert_array_equal(got, tensor.data)
    assert v2_grpc.encode_infer_response(InferResponse(outputs=())).id == ""


@pytest.mark.parametrize("raw", [True, False])
def test_v2_backend_request_and_response_round_trip(raw: bool) -> None:
    datatypes = [d for d in SAMPLES if raw or d != "FP16"]
    request = InferRequest(model=REF, inputs=tuple(Tensor(f"i_{d}", d, SAMPLES[d]) for d in datatypes),
                           output_names=("y",), id="r1",
                           parameters={"flag": True, "n": 3, "big": 2**64 - 1, "f": 0.5, "s": "x", "doc": {"k": [1]}})
    encoded = v2_grpc.encode_infer_request(request, TARGET, raw=raw)
    assert (encoded.model_name, encoded.model_version, encoded.id) == ("m_there", "3", "r1")
    assert len(encoded.raw_input_contents) == (len(datatypes) if raw else 0)
    official = cross(encoded, triton_pb2.ModelInferRequest)
    assert [o.name for o in official.outputs] == ["y"]
    assert official.parameters["big"].uint64_param == 2**64 - 1
    assert official.parameters["doc"].string_param == '{"k":[1]}'
    decoded = v2_grpc.decode_infer_request(encoded, REF)
    for tensor, d in zip(decoded.inputs, datatypes, strict=True):
        assert_tensor(tensor, d, SAMPLES[d])
    assert decoded.parameters == {**request.parameters, "doc": '{"k":[1]}'}

    # The same tensors as a backend's answer: raw (Triton-style) and typed contents are both read.
    response = v2_grpc.encode_infer_response(InferResponse(outputs=request.inputs, model_name="m", model_version="3"))
    if not raw:
        response.ClearField("raw_output_contents")
        for out, tensor in zip(response.outputs, request.inputs, strict=True):
            out.contents.CopyFrom(v2_grpc.encode_contents(tensor))
    back = v2_grpc.decode_infer_response(cross(response, v2_pb2.ModelInferResponse))
    assert (back.model_name, back.model_version, back.id) == ("m", "3", None)
    for tensor, d in zip(back.outputs, datatypes, strict=True):
        assert_tensor(tensor, d, SAMPLES[d])


def test_v2_backend_side_errors() -> None:
    fp16 = InferRequest(model=REF, inputs=(Tensor("h", "FP16", SAMPLES["FP16"]),))
    with pytest.raises(InvalidArgument, match="'h': FP16 has no typed contents field; send it raw"):
        v2_grpc.encode_infer_request(fp16, TARGET, raw=False)
    with pytest.raises(InvalidArgument, match="parameter 'n': -9223372036854775809 does not fit a 64-bit integer"):
        v2_grpc.encode_infer_request(InferRequest(model=REF, inputs=(), parameters={"n": -(2**63) - 1}), TARGET)
    resp = v2_pb2.ModelInferResponse(outputs=[v2_pb2.ModelInferResponse.InferOutputTensor(
        name="y", datatype="FP32", shape=[2])], raw_output_contents=[b"", b""])
    with pytest.raises(InvalidArgument, match="raw_output_contents has 2 entries for 1 outputs"):
        v2_grpc.decode_infer_response(resp)
    resp = v2_pb2.ModelInferResponse(outputs=[v2_pb2.ModelInferResponse.InferOutputTensor(
        name="y", datatype="FP32", shape=[2])])
    with pytest.raises(InvalidArgument, match="output 'y': shape \\[2\\] needs 2 elements, got 0"):
        v2_grpc.decode_infer_response(resp)


def test_v2_encode_model_metadata() -> None:
    schema = ModelSchema(inputs=(TensorSpec("x", "FP32", (-1, 4)),), outputs=(TensorSpec("p", "FP32", (-1, 3)),))
    official = cross(v2_grpc.encode_model_metadata("mlp", ["1", "2"], "tensorflow_savedmodel", schema),
                     triton_pb2.ModelMetadataResponse)
    assert official == triton_pb2.ModelMetadataResponse(
        name="mlp", versions=["1", "2"], platform="tensorflow_savedmodel",
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        outputs=[{"name": "p", "datatype": "FP32", "shape": [-1, 3]}])
