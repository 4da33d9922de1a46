"""Codecs: v2 JSON and TF JSON <-> internal types, every v2 datatype, and each bad-input message."""

import base64

import numpy as np
import orjson
import pytest

from gateway.codecs import jsonio, tf_json, v2_json
from gateway.codecs.tensors import from_raw
from gateway.errors import BackendError, InvalidArgument, MalformedRequest
from gateway.types import InferResponse, ModelRef, ModelSchema, Tensor, TensorSpec

REF = ModelRef("m")


def v2_body(*inputs: dict, **extra: object) -> bytes:  # type: ignore[type-arg]
    return orjson.dumps({"inputs": list(inputs), **extra})


@pytest.mark.parametrize(("datatype", "data", "dtype"), [
    ("BOOL", [True, False], np.bool_), ("UINT8", [0, 255], np.uint8), ("UINT16", [1, 65535], np.uint16),
    ("UINT32", [1, 2], np.uint32), ("UINT64", [1, 2], np.uint64), ("INT8", [-128, 127], np.int8),
    ("INT16", [-3, 3], np.int16), ("INT32", [-3, 3], np.int32), ("INT64", [-(2**62), 2**62], np.int64),
    ("FP16", [0.5, 1.5], np.float16), ("FP32", [0.5, 1], np.float32), ("FP64", [0.25, 2], np.float64),
])
def test_v2_every_numeric_datatype_round_trips(datatype: str, data: list, dtype: type) -> None:  # type: ignore[type-arg]
    request = v2_json.decode_request(v2_body({"name": "x", "shape": [2], "datatype": datatype, "data": data}), REF)
    tensor = request.inputs[0]
    assert tensor.data.dtype == np.dtype(dtype)
    encoded = orjson.loads(v2_json.encode_request(request))["inputs"][0]
    assert encoded == {"name": "x", "datatype": datatype, "shape": [2], "data": tensor.data.tolist()}
    assert np.array_equal(np.asarray(encoded["data"], dtype=dtype), np.asarray(data, dtype=dtype))


def test_v2_bytes_and_nested_data_and_outputs_filter() -> None:
    body = v2_body({"name": "s", "shape": [2, 2], "datatype": "BYTES", "data": [["a", "b"], ["c", "d"]]},
                   id="req-1", outputs=[{"name": "y"}])
    request = v2_json.decode_request(body, REF)
    assert request.inputs[0].data.tolist() == [[b"a", b"b"], [b"c", b"d"]]
    assert request.output_names == ("y",)
    assert request.id == "req-1"


def test_v2_response_is_flat_and_names_the_model() -> None:
    response = InferResponse(outputs=(Tensor("y", "FP32", np.arange(6, dtype=np.float32).reshape(2, 3)),),
                             model_name="m", model_version="2", id="abc")
    doc = orjson.loads(v2_json.encode_response(response)[0])
    assert doc == {"model_name": "m", "model_version": "2", "id": "abc",
                   "outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]}]}


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "body is not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"{}", "'inputs' must be a non-empty list"),
    (v2_body({"shape": [1], "datatype": "FP32", "data": [1]}), "inputs[0]: 'name' must be a non-empty string"),
    (v2_body({"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}), "unsupported datatype 'FP99'"),
    (v2_body({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}), "'shape' must be a list of non-neg"),
    (v2_body({"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2]}), "shape [2, 3] needs 6 elements"),
    (v2_body({"name": "x", "shape": [1], "datatype": "FP32"}), "'data' is missing"),
    (v2_body({"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", "b"]}), "FP32 needs numbers"),
    (v2_body({"name": "x", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}), "INT32 needs integers"),
    (v2_body({"name": "x", "shape": [1], "datatype": "UINT8", "data": [-1]}), "out of range for UINT8"),
    (v2_body({"name": "x", "shape": [2], "datatype": "BOOL", "data": [1, 0]}), "BOOL needs true/false"),
    (v2_body({"name": "x", "shape": [2], "datatype": "BYTES", "data": [1, 2]}), "BYTES needs strings"),
    (v2_body({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}), "ragged"),
    (v2_body({"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
             {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}), "input names must be unique"),
])
def test_v2_bad_requests_are_invalid_argument(body: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        v2_json.decode_request(body, REF)
    assert message in info.value.message
    assert info.value.http_status == 400


def test_malformed_json_is_its_own_class() -> None:
    with pytest.raises(MalformedRequest):
        v2_json.decode_request(b"\xff", REF)


SCALE = ModelSchema(inputs=(TensorSpec("x", "FP32", (-1, 3)),), outputs=(TensorSpec("y", "FP32", (-1, 3)),))


def test_tf_row_format_unnamed_input_takes_schema_name() -> None:
    request, row = tf_json.decode_predict(b'{"instances": [[1, 2, 3], [4, 5, 6]]}', REF, SCALE)
    assert row is True
    assert request.inputs[0].name == "x"
    assert request.inputs[0].data.dtype == np.float32
    assert request.inputs[0].shape == (2, 3)


def test_tf_named_rows_and_b64_become_columns() -> None:
    body = b'{"instances": [{"a": [1.5, 2], "s": "hi"}, {"a": [3, 4], "s": {"b64": "' + \
        base64.b64encode(b"\x00\xff").decode().encode() + b'"}}]}'
    request, _ = tf_json.decode_predict(body, REF, None)
    by_name = {t.name: t for t in request.inputs}
    assert by_name["a"].datatype == "FP32" and by_name["a"].shape == (2, 2)
    assert by_name["s"].data.tolist() == [b"hi", b"\x00\xff"]


def test_tf_columnar_named_inputs() -> None:
    request, row = tf_json.decode_predict(b'{"inputs": {"b": [[1, 2]], "flag": [true]}}', REF, None)
    assert row is False
    assert {t.name: t.datatype for t in request.inputs} == {"b": "INT64", "flag": "BOOL"}


def test_tf_nan_tokens_are_accepted() -> None:
    request, _ = tf_json.decode_predict(b'{"instances": [[NaN, Infinity, -Infinity]]}', REF, SCALE)
    values = request.inputs[0].data[0]
    assert np.isnan(values[0]) and np.isinf(values[1]) and values[2] < 0


@pytest.mark.parametrize(("body", "message"), [
    (b'{"instances": [[1]], "inputs": [[1]]}', "expecting only one of 'inputs' or 'instances'"),
    (b'{"signature_name": "serving_default"}', "Missing 'inputs' or 'instances' key"),
    (b'{"instances": [{"x": [1]}, [1]]}', "all objects (named inputs) or all values"),
    (b'{"instances": [{"x": [1]}, {"y": [1]}]}', "instances[1] has inputs ['y'], expected ['x']"),
    (b'{"instances": {"x": 1}}', "'instances' must be a list"),
    (b'{"instances": [[1, 2], [3]]}', "ragged"),
])
def test_tf_bad_requests(body: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        tf_json.decode_predict(body, REF, SCALE)
    assert message in info.value.message


def test_tf_unnamed_input_without_single_input_schema_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="does not declare exactly one input"):
        tf_json.decode_predict(b'{"instances": [[1, 2, 3]]}', REF, None)


def test_tf_response_shapes() -> None:
    y = Tensor("y", "FP32", np.array([[1, 2], [3, 4]], dtype=np.float32))
    label = Tensor("label_bytes", "BYTES", np.array([b"a", b"b"], dtype=object))
    text = Tensor("text", "BYTES", np.array([b"A", b"B"], dtype=object))
    one = InferResponse(outputs=(y,))
    assert orjson.loads(tf_json.encode_predict_response(one, True)) == {"predictions": [[1, 2], [3, 4]]}
    assert orjson.loads(tf_json.encode_predict_response(one, False)) == {"outputs": [[1, 2], [3, 4]]}
    many = InferResponse(outputs=(y, label, text))
    assert orjson.loads(tf_json.encode_predict_response(many, True)) == {"predictions": [
        {"y": [1, 2], "label_bytes": {"b64": "YQ=="}, "text": "A"},
        {"y": [3, 4], "label_bytes": {"b64": "Yg=="}, "text": "B"}]}
    assert orjson.loads(tf_json.encode_predict_response(many, False))["outputs"]["text"] == ["A", "B"]


def test_tf_row_response_needs_one_batch_size() -> None:
    uneven = InferResponse(outputs=(Tensor("a", "FP32", np.zeros((2, 1), np.float32)),
                                    Tensor("b", "FP32", np.zeros((3,), np.float32))))
    with pytest.raises(InvalidArgument, match="inconsistent batch size"):
        tf_json.encode_predict_response(uneven, True)


def test_tf_backend_response_single_output_has_no_name() -> None:
    outputs = tf_json.decode_backend_response(b'{"outputs": [[1.0, 2.0]]}', (TensorSpec("y", "FP32", (-1, 2)),))
    assert outputs[0].name == "y" and outputs[0].data.dtype == np.float32
    multi = tf_json.decode_backend_response(
        b'{"outputs": {"n": [1, 2], "s": ["A"]}}', (TensorSpec("n", "INT64", (-1,)), TensorSpec("s", "BYTES", (-1,))))
    assert [(t.name, t.datatype) for t in multi] == [("n", "INT64"), ("s", "BYTES")]
    with pytest.raises(BackendError):
        tf_json.decode_backend_response(b'{"predictions": []}', ())


def test_signature_metadata_round_trips_through_specs() -> None:
    body = tf_json.encode_signature_metadata("scale", "2", SCALE)
    doc = orjson.loads(body)
    assert doc["model_spec"] == {"name": "scale", "signature_name": "", "version": "2"}
    assert tf_json.signature_specs(doc, "serving_default") == SCALE
    with pytest.raises(InvalidArgument, match='"other" not found'):
        tf_json.signature_specs(doc, "other")


# --- v2 binary data extension (and the raw layout gRPC shares) ---

def binary_body(header: dict, *chunks: bytes) -> tuple[bytes, int]:  # type: ignore[type-arg]
    head = orjson.dumps(header)
    return head + b"".join(chunks), len(head)


def test_binary_inputs_every_layout() -> None:
    x = np.array([[1.5, -2.0]], dtype=np.float32)
    words = b"".join(len(w).to_bytes(4, "little") + w for w in (b"ab", b"", b"\xff"))
    body, n = binary_body({"inputs": [
        {"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
        {"name": "f", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}},
        {"name": "s", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(words)}},
        {"name": "j", "shape": [1], "datatype": "INT64", "data": [7]},
    ], "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}, x.tobytes(), b"\x01\x00", words)
    request = v2_json.decode_request(body, REF, n)
    by_name = {t.name: t.data for t in request.inputs}
    assert np.array_equal(by_name["x"], x)
    assert by_name["f"].tolist() == [True, False]
    assert by_name["s"].tolist() == [b"ab", b"", b"\xff"]
    assert by_name["j"].tolist() == [7]
    assert request.binary_outputs == frozenset({"y"})


@pytest.mark.parametrize(("inputs", "chunk", "message"), [
    ([{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}], b"\0" * 4,
     "needs 8 bytes of raw data, got 4"),
    ([{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 8}}], b"\0" * 4,
     "runs past the end of the body"),
    ([{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}], b"\0" * 6,
     "2 bytes of binary data are not claimed"),
    ([{"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 3}}], b"\5\0\0",
     "ends inside a length prefix"),
    ([{"name": "b", "shape": [1], "datatype": "BOOL", "parameters": {"binary_data_size": 1}}], b"\x07",
     "BOOL raw data must be bytes 0 or 1"),
])
def test_binary_inputs_refused(inputs: list, chunk: bytes, message: str) -> None:  # type: ignore[type-arg]
    body, n = binary_body({"inputs": inputs}, chunk)
    with pytest.raises(InvalidArgument, match=message):
        v2_json.decode_request(body, REF, n)


def test_binary_header_length_outside_body() -> None:
    with pytest.raises(InvalidArgument, match="outside the body"):
        v2_json.decode_request(b"{}", REF, 10)


def test_binary_outputs_round_trip_through_raw_layout() -> None:
    y = Tensor("y", "FP16", np.array([0.5, 2.0], dtype=np.float16))
    s = Tensor("s", "BYTES", np.array([b"x", b"yz"], dtype=object))
    body, n = v2_json.encode_response(InferResponse(outputs=(y, s), model_name="m"), frozenset({"*"}))
    assert n is not None
    header = orjson.loads(body[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [4, 11] and "data" not in header["outputs"][0]
    assert np.array_equal(from_raw("y", "FP16", body[n:n + 4], (2,)), y.data)
    assert from_raw("s", "BYTES", body[n + 4:], (2,)).tolist() == [b"x", b"yz"]
    plain, none = v2_json.encode_response(InferResponse(outputs=(y,)))
    assert none is None and orjson.loads(plain)["outputs"][0]["data"] == [0.5, 2.0]


def test_tf_backend_empty_batch_keeps_inner_dimensions() -> None:
    outputs = tf_json.decode_backend_response(b'{"outputs": []}', (TensorSpec("y", "FP32", (-1, 3)),))
    assert outputs[0].shape == (0, 3)


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                                  b'{"inputs": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"])
def test_json_nested_deeper_than_the_stack_is_malformed_not_a_crash(body: bytes) -> None:
    """A regression: the NaN-tolerant fallback parser's RecursionError escaped as a 500."""
    with pytest.raises(MalformedRequest, match="not valid JSON"):
        jsonio.loads(body, allow_nan=True)


V2_BODY = '{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [NaN, 2, 3]}]}'


@pytest.mark.parametrize("body", [V2_BODY.encode("utf-16"), V2_BODY.encode("utf-16-le"), V2_BODY.encode("utf-16-be"),
                                  V2_BODY.encode("utf-32"), V2_BODY.encode("utf-32-le"), V2_BODY.encode("utf-32-be"),
                                  b"\xef\xbb\xbf" + V2_BODY.encode()])
def test_json_in_any_encoding_but_utf8_is_malformed(body: bytes) -> None:
    """A regression: the fallback parser read UTF-16 and UTF-32 (with or without a BOM) and skipped a UTF-8 BOM."""
    assert jsonio.loads(V2_BODY.encode(), allow_nan=True)["inputs"][0]["data"][1] == 2
    with pytest.raises(MalformedRequest, match="not valid JSON"):
        jsonio.loads(body, allow_nan=True)


@pytest.mark.parametrize("body", [
    b'{"inputs": [{"name": "\\ud800", "shape": [1], "datatype": "FP32", "data": [NaN]}]}',
    b'{"id": "a\\udfffb", "inputs": [], "n": NaN}', b'{"\\ud800": NaN}', b'[[["\\udbff"]], NaN]'])
def test_json_with_a_lone_surrogate_is_malformed(body: bytes) -> None:
    """A regression: the fallback parser read "\\ud800" into a str nothing could encode again, and the error
    message naming it (or the answer echoing the id) failed with a 500."""
    with pytest.raises(MalformedRequest, match="surrogate"):
        jsonio.loads(body, allow_nan=True)


def test_an_error_body_encodes_whatever_its_message_holds() -> None:
    body = jsonio.dumps_error({"error": "no input '\ud800'"})
    assert body == b'{"error": "no input \'\\ud800\'"}'  # escaped: valid JSON text that any client reads


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1" + b"0" * 400, b"-" + b"9" * 5000, b"1" * 5000 + b".5"])
def test_json_numbers_that_overflow_a_double_are_malformed(number: bytes) -> None:
    """A regression: the fallback parser read 1e400 as infinity (answered 200) and 10**400 as an int no tensor
    holds; orjson refuses both, and so does TF Serving ("Number too big to be stored in double")."""
    body = b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [NaN, ' + number + b"]}]}"
    with pytest.raises(MalformedRequest, match="not valid JSON"):
        jsonio.loads(body, allow_nan=True)
    assert jsonio.loads(body.replace(number, b"1e300"), allow_nan=True)["inputs"][0]["data"][1] == 1e300
    assert jsonio.loads(body.replace(number, b"1" + b"0" * 30), allow_nan=True)["inputs"][0]["data"][1] == 1e30
