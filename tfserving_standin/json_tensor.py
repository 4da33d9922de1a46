"""REST JSON <-> tensors, following tensorflow_serving/util/json_tensor.cc.

Requests are validated against the signature's input dtypes exactly as TF Serving does (same checks,
same order, same messages); responses use the row ("predictions") or columnar ("outputs") layout.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from collections.abc import Mapping

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2

from tfserving_standin import dtypes
from tfserving_standin.jsonwriter import PrettyWriter, debug_string, escape_string, float_tokens, format_float
from tfserving_standin.status import ServingError, invalid_argument, unimplemented

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class RequestFormat(enum.Enum):
    INVALID = 0
    ROW = 1
    COLUMNAR = 2


# --------------------------------------------------------------------------- parsing

_RAPIDJSON_MESSAGES = (
    ("Expecting value", "Invalid value."),
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid control character", "Invalid encoding in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
)


def _json_error_message(exc: json.JSONDecodeError, text: str) -> str:
    if exc.msg == "Expecting ',' delimiter":
        # Inside an object or an array? Look back for the innermost opener.
        depth_stack = []
        in_string = False
        escaped = False
        for char in text[: exc.pos]:
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "[{":
                depth_stack.append(char)
            elif char in "]}" and depth_stack:
                depth_stack.pop()
        if depth_stack and depth_stack[-1] == "[":
            return "Missing a comma or ']' after an array element."
        return "Missing a comma or '}' after an object member."
    for prefix, message in _RAPIDJSON_MESSAGES:
        if exc.msg.startswith(prefix):
            return message
    return exc.msg + "."


class _NumberTooBig(Exception):
    pass


def _double(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # rapidjson: kParseErrorNumberTooBig, where Python would read infinity
        raise _NumberTooBig
    return value


def _integer(text: str) -> int | float:
    # rapidjson reads an integer beyond 64 bits as a double (Python refuses over 4,300 digits).
    try:
        value = int(text)
    except ValueError:
        raise _NumberTooBig from None
    return value if -(2**63) <= value < 2**64 else _double(text)


_DECODER = json.JSONDecoder(parse_float=_double, parse_int=_integer)


def _valid_strings(doc: object) -> bool:
    """rapidjson refuses a lone surrogate escape ("\\ud800"); Python reads it into a str nothing can encode."""
    pending = [doc]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return True


def parse_json(body: bytes) -> dict:
    """json_tensor.cc ParseJson: NaN/Infinity allowed, parsing stops after the first value."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from None
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise invalid_argument(f"JSON Parse error: The document is empty at offset: {start}")
    try:
        doc, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        offset = len(text[: exc.pos].encode("utf-8"))
        raise invalid_argument(f"JSON Parse error: {_json_error_message(exc, text)} at offset: {offset}") from None
    except _NumberTooBig:
        raise invalid_argument("JSON Parse error: Number too big to be stored in double.") from None
    except RecursionError:  # rapidjson has no depth limit of its own; Python's stack has one
        raise invalid_argument("JSON Parse error: The document is nested too deeply.") from None
    if not _valid_strings(doc):
        raise invalid_argument("JSON Parse error: The surrogate pair in string is invalid.")
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Is not object")
    return doc


def signature_name_from(doc: dict) -> str:
    """json_tensor.cc FillSignature."""
    if "signature_name" not in doc:
        return ""
    value = doc["signature_name"]
    if not isinstance(value, str):
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _type_error(value: object, dtype: int) -> ServingError:
    return invalid_argument(
        f"JSON Value: {debug_string(value)} Type: {_json_type(value)} is not of expected type: {dtypes.name(dtype)}"
    )


def _is_b64_object(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _b64decode(value: object) -> bytes:
    if not _is_b64_object(value):
        raise invalid_argument(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    text = value["b64"]  # type: ignore[index]
    try:
        data = text.encode("ascii")
        # absl::Base64Unescape accepts standard and web-safe alphabets and missing padding.
        data = data.replace(b"-", b"+").replace(b"_", b"/").rstrip(b"=")
        data += b"=" * (-len(data) % 4)
        return base64.b64decode(data, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _add_value(value: object, dtype: int, values: list) -> None:
    """json_tensor.cc AddValueToTensor."""
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        if not _is_number(value):
            raise _type_error(value, dtype)
        values.append(float(value))  # type: ignore[arg-type]
    elif dtype in (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8):
        if not _is_int_in(value, INT32_MIN, INT32_MAX):
            raise _type_error(value, dtype)
        values.append(value)
    elif dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        values.append(value.encode("utf-8", "surrogatepass"))
    elif dtype == types_pb2.DT_INT64:
        if not _is_int_in(value, INT64_MIN, INT64_MAX):
            raise _type_error(value, dtype)
        values.append(value)
    elif dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        values.append(value)
    elif dtype == types_pb2.DT_UINT32:
        if not _is_int_in(value, 0, 2**32 - 1):
            raise _type_error(value, dtype)
        values.append(value)
    elif dtype == types_pb2.DT_UINT64:
        if not _is_int_in(value, 0, 2**64 - 1):
            raise _type_error(value, dtype)
        values.append(value)
    else:
        raise unimplemented(f"Conversion of JSON Value: {debug_string(value)} to type: {dtypes.name(dtype)}")


def _dense_shape(value: object) -> list[int]:
    """json_tensor.cc GetDenseTensorShape: follows the first element of every list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: object, level: int, dtype: int, shape: list[int], values: list) -> int:
    """json_tensor.cc FillTensorProto; returns the number of values added."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            values.append(_b64decode(value))
        else:
            _add_value(value, dtype, values)
        return 1
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    count = 0
    for item in value:
        count += _fill(item, level + 1, dtype, shape, values)
    return count


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


class _Accumulator:
    def __init__(self, dtype: int) -> None:
        self.dtype = dtype
        self.values: list = []
        self.size: int | None = None
        self.shape: list[int] = []


def _add_instance_item(item: object, name: str, input_dtypes: Mapping[str, int], acc: dict) -> None:
    """json_tensor.cc AddInstanceItem."""
    if name not in input_dtypes:
        raise invalid_argument(f"JSON object: does not have named input: {name}")
    dtype = input_dtypes[name]
    accumulator = acc.setdefault(name, _Accumulator(dtype))
    shape = _dense_shape(item)
    added: list = []
    size = _fill(item, 0, dtype, shape, added)
    accumulator.values.extend(added)
    if accumulator.size is None:
        accumulator.size = size
        accumulator.shape = shape
    elif accumulator.size != size:
        raise invalid_argument(f"Expecting tensor size: {accumulator.size} but got: {size}")
    elif accumulator.shape != shape:
        raise invalid_argument(f"Expecting shape {_shape_text(accumulator.shape)} but got: {_shape_text(shape)}")


def _to_array(values: list, dtype: int, shape: list[int]) -> np.ndarray:
    np_type = dtypes.NUMPY[dtype]
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
    else:
        array = np.array(values, dtype=np_type)
    return array.reshape(shape)


def _is_element_object(value: object) -> bool:
    return isinstance(value, dict) and not _is_b64_object(value)


def _from_instances(instances: list, input_dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """json_tensor.cc FillTensorMapFromInstancesList."""
    if not isinstance(instances[0], dict) and len(input_dtypes) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    elements_are_objects = _is_element_object(instances[0])
    input_names = sorted(input_dtypes)
    acc: dict[str, _Accumulator] = {}
    for index, element in enumerate(instances):
        if elements_are_objects:
            if not _is_element_object(element):
                raise invalid_argument(f"Expecting object but got list at item {index} of input list")
            for name, value in element.items():
                try:
                    _add_instance_item(value, name, input_dtypes, acc)
                except ServingError as exc:
                    raise invalid_argument(
                        f"Failed to process element: {index} key: {name} of 'instances' list. Error: {exc}"
                    ) from None
            if sorted(set(element)) != input_names:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{debug_string(element)} keys must be equal to: {','.join(input_names)}"
                )
        else:
            if _is_element_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            name = input_names[0]
            try:
                _add_instance_item(element, name, input_dtypes, acc)
            except ServingError as exc:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. Error: {exc}"
                ) from None
    batch = len(instances)
    return {
        name: _to_array(accumulator.values, accumulator.dtype, [batch, *accumulator.shape])
        for name, accumulator in acc.items()
    }


def _from_inputs(value: object, input_dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """json_tensor.cc FillTensorMapFromInputsMap."""
    tensors: dict[str, np.ndarray] = {}
    if not isinstance(value, dict) or _is_b64_object(value):
        if len(input_dtypes) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        name = sorted(input_dtypes)[0]
        dtype = input_dtypes[name]
        shape = _dense_shape(value)
        values: list = []
        _fill(value, 0, dtype, shape, values)
        tensors[name] = _to_array(values, dtype, shape)
        return tensors
    for name in sorted(input_dtypes):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        dtype = input_dtypes[name]
        shape = _dense_shape(value[name])
        values = []
        _fill(value[name], 0, dtype, shape, values)
        tensors[name] = _to_array(values, dtype, shape)
    return tensors


def predict_inputs_from_json(
    doc: dict, signature_name: str, input_dtypes: Mapping[str, int]
) -> tuple[dict[str, np.ndarray], RequestFormat]:
    """json_tensor.cc FillPredictRequestFromJson, after the signature's inputs are known."""
    if not input_dtypes:
        raise invalid_argument(
            f"Failed to get input map for signature: {signature_name if signature_name else 'DEFAULT'}"
        )
    has_instances = "instances" in doc
    has_inputs = "inputs" in doc
    if has_instances:
        if has_inputs:
            raise invalid_argument(
                f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only one of "
                "'inputs' or 'instances' keys to exist "
            )
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {debug_string(doc)} No values in 'instances' array")
        return _from_instances(instances, input_dtypes), RequestFormat.ROW
    if has_inputs:
        return _from_inputs(doc["inputs"], input_dtypes), RequestFormat.COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


# --------------------------------------------------------------------------- responses


def _is_bytes_output(name: str, dtype: int) -> bool:
    return dtype == types_pb2.DT_STRING and name.endswith("_bytes")


_INTEGERS = {
    types_pb2.DT_INT32,
    types_pb2.DT_INT16,
    types_pb2.DT_INT8,
    types_pb2.DT_UINT8,
    types_pb2.DT_INT64,
    types_pb2.DT_UINT32,
    types_pb2.DT_UINT64,
}


def _tokens(array: np.ndarray, dtype: int, as_bytes: bool) -> list[bytes]:
    """json_tensor.cc AddSingleValueAndAdvance for every value of a tensor, in row-major order."""
    flat = array.reshape(-1)
    if dtype == types_pb2.DT_FLOAT:
        return float_tokens(flat.astype(np.float32, copy=False), single_precision=True)
    if dtype == types_pb2.DT_DOUBLE:
        return float_tokens(flat.astype(np.float64, copy=False), single_precision=False)
    if dtype in _INTEGERS:
        return [str(v).encode() for v in flat.tolist()]
    if dtype == types_pb2.DT_BOOL:
        return [b"true" if v else b"false" for v in flat.tolist()]
    if dtype == types_pb2.DT_STRING:
        raws = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in flat.tolist()]
        if as_bytes:
            return [b'{"b64": ' + escape_string(base64.b64encode(raw)) + b"}" for raw in raws]
        return [escape_string(raw) for raw in raws]
    raise invalid_argument(f"Failed to write JSON value for tensor type: {dtypes.name(dtype)}")


def _emit(writer: PrettyWriter, tokens: list[bytes], shape: tuple[int, ...], as_b64_objects: bool) -> None:
    """json_tensor.cc AddTensorValues: nested arrays following the tensor's shape."""
    if not shape:
        if as_b64_objects:
            _emit_b64_object(writer, tokens[0])
        else:
            writer.raw(tokens[0])
        return
    if len(shape) == 1 and not as_b64_objects:
        writer.raw_array(tokens)
        return
    writer.start_array()
    step = math.prod(shape[1:])
    for index in range(shape[0]):
        _emit(writer, tokens[index * step : (index + 1) * step], shape[1:], as_b64_objects)
    writer.end_array()


def _emit_b64_object(writer: PrettyWriter, token: bytes) -> None:
    # token is b'{"b64": "<base64>"}'; write it as an object so that the layout matches RapidJSON's.
    writer.start_object()
    writer.key("b64")
    writer.raw(token[len(b'{"b64": ') : -1])
    writer.end_object()


def _write_values(writer: PrettyWriter, array: np.ndarray, dtype: int, as_bytes: bool) -> None:
    array = np.asarray(array, dtype=object) if not isinstance(array, np.ndarray) else array
    _emit(writer, _tokens(array, dtype, as_bytes), tuple(array.shape), as_bytes)


def predict_response_json(outputs: Mapping[str, tuple[np.ndarray, int]], request_format: RequestFormat) -> bytes:
    """json_tensor.cc MakeJsonFromTensors. ``outputs`` maps alias -> (array, DataType)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    writer = PrettyWriter()
    if request_format == RequestFormat.ROW:
        batch = -1
        for name in names:
            array, _ = outputs[name]
            if array.ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            current = array.shape[0]
            if batch >= 0 and batch != current:
                raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {current} expecting: {batch}")
            batch = current
        writer.start_object()
        writer.key("predictions")
        writer.start_array()
        as_objects = len(names) > 1
        prepared = {}
        for name in names:
            array, dtype = outputs[name]
            as_bytes = _is_bytes_output(name, dtype)
            prepared[name] = (_tokens(array, dtype, as_bytes), tuple(array.shape[1:]), as_bytes)
        for item in range(batch):
            if as_objects:
                writer.start_object()
            writer.single_line_arrays = True
            for name in names:
                tokens, inner, as_bytes = prepared[name]
                step = math.prod(inner)
                if as_objects:
                    writer.key(name)
                _emit(writer, tokens[item * step : (item + 1) * step], inner, as_bytes)
            writer.single_line_arrays = False
            if as_objects:
                writer.end_object()
        writer.end_array()
        writer.end_object()
        return writer.getvalue()
    if request_format == RequestFormat.COLUMNAR:
        writer.start_object()
        writer.key("outputs")
        as_objects = len(names) > 1
        if as_objects:
            writer.start_object()
        for name in names:
            array, dtype = outputs[name]
            if as_objects:
                writer.key(name)
            _write_values(writer, array, dtype, _is_bytes_output(name, dtype))
        if as_objects:
            writer.end_object()
        writer.end_object()
        return writer.getvalue()
    raise invalid_argument("Invalid request format")


# --------------------------------------------------------------------------- classify / regress


def _feature_kind_error(name: str, feature: feature_pb2.Feature) -> ServingError:
    kind = feature.WhichOneof("kind")
    text = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}.get(kind or "", "UNKNOWN")
    return invalid_argument(f"Unexpected element type in feature: {name} expecting type: {text}")


def _of_kind(feature: feature_pb2.Feature, kind: str) -> bool:
    current = feature.WhichOneof("kind")
    return current is None or current == kind


def _add_feature_value(value: object, name: str, feature: feature_pb2.Feature) -> None:
    """json_tensor.cc AddValueToFeature."""
    if value is None or isinstance(value, list):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    if isinstance(value, bool):
        if not _of_kind(feature, "int64_list"):
            raise _feature_kind_error(name, feature)
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, dict):
        if not _is_b64_object(value):
            raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
        if not _of_kind(feature, "bytes_list"):
            raise _feature_kind_error(name, feature)
        feature.bytes_list.value.append(_b64decode(value))
    elif isinstance(value, str):
        if not _of_kind(feature, "bytes_list"):
            raise _feature_kind_error(name, feature)
        feature.bytes_list.value.append(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, float):
        if not _of_kind(feature, "float_list"):
            raise _feature_kind_error(name, feature)
        feature.float_list.value.append(value)
    else:
        if not _of_kind(feature, "int64_list"):
            raise _feature_kind_error(name, feature)
        if value > INT64_MAX:  # type: ignore[operator]
            raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)  # type: ignore[arg-type]


def _example_from_json(value: object, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        if isinstance(content, list):
            for item in content:
                _add_feature_value(item, name, feature)
        else:
            _add_feature_value(content, name, feature)
        example.features.feature[name].CopyFrom(feature)


def fill_input_from_json(doc: dict, request_input: object) -> None:
    """json_tensor.cc FillClassifyRegressRequestFromJson (the Input part)."""
    has_context = "context" in doc
    if has_context:
        _example_from_json(doc["context"], request_input.example_list_with_context.context)  # type: ignore[attr-defined]
    if "examples" not in doc:
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} When method is classify, key 'examples' is expected and was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {debug_string(doc)} 'examples' value is an empty array")
    for value in examples:
        if has_context:
            target = request_input.example_list_with_context.examples.add()  # type: ignore[attr-defined]
        else:
            target = request_input.example_list.examples.add()  # type: ignore[attr-defined]
        _example_from_json(value, target)


def classification_result_json(result: object) -> bytes:
    if not result.classifications:  # type: ignore[attr-defined]
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    writer = PrettyWriter()
    writer.start_object()
    writer.key("results")
    writer.start_array()
    for classifications in result.classifications:  # type: ignore[attr-defined]
        writer.single_line_arrays = True
        writer.start_array()
        for entry in classifications.classes:
            writer.start_array()
            writer.string(entry.label.encode("utf-8", "surrogatepass"))
            writer.raw(format_float(entry.score, single_precision=True))
            writer.end_array()
        writer.end_array()
        writer.single_line_arrays = False
    writer.end_array()
    writer.end_object()
    return writer.getvalue()


def regression_result_json(result: object) -> bytes:
    if not result.regressions:  # type: ignore[attr-defined]
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    writer = PrettyWriter()
    writer.start_object()
    writer.key("results")
    writer.single_line_arrays = True
    writer.start_array()
    for regression in result.regressions:  # type: ignore[attr-defined]
        writer.raw(format_float(regression.value, single_precision=True))
    writer.end_array()
    writer.end_object()
    return writer.getvalue()


__all__ = [
    "RequestFormat",
    "classification_result_json",
    "fill_input_from_json",
    "parse_json",
    "predict_inputs_from_json",
    "predict_response_json",
    "regression_result_json",
    "signature_name_from",
]
