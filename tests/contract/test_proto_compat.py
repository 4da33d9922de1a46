"""gateway/protos is wire-compatible with the official protos: same descriptors, same bytes.

Official sides, all in this one process: tensorflow-serving-api + tensorflow (TF Serving and TF framework),
tritonclient.grpc (Triton's grpc_service.proto: the Open Inference Protocol, package ``inference``), and
TorchServe's protos from ts/frontend/model-server.jar, compiled here with grpc_tools into a FileDescriptorSet
and loaded into a separate descriptor pool (nothing written to sys.path or the default pool).

Two kinds of checks:
- descriptors: every gateway message and enum (nested ones and map entries included) has an official
  counterpart under its public name with the same fields (numbers, names, types, labels, type references,
  oneofs, json names, options) and enum values; every service method agrees; gateway.protos.services'
  method table names real methods with the right messages. Deliberate omissions are listed here, nowhere else.
- bytes: sample messages built with the official classes (every TensorProto dtype with typed values and with
  tensor_content, every InferTensorContents field and raw contents, parameter maps, oneofs, Any metadata)
  parse with the gateway's classes, re-serialize to identical bytes and carry equal values; and messages the
  gateway builds parse with the official classes.
"""

from __future__ import annotations

import importlib.util
import math
import os
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc.service_pb2 as triton_pb2
import tritonclient.grpc.service_pb2_grpc as triton_grpc
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, message_factory, unknown_fields, wrappers_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import resource_handle_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    model_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    status_pb2,
)
from tritonclient.utils import serialize_byte_tensor

from gateway import protos
from gateway.protos import (
    rpc_status_pb2,
    services,
    tf_error_codes_pb2,
    tf_framework_pb2,
    tf_model_server_config_pb2,
    tf_serving_pb2,
    torchserve_inference_pb2,
    torchserve_management_pb2,
    v2_pb2,
)
from gateway.protos.reflection import GATEWAY_FILES

# Kept referenced: importing them registers the official services in the default pool.
OFFICIAL_SERVICE_MODULES = (prediction_service_pb2, model_service_pb2, triton_pb2)

#: Official fields the gateway's protos leave out on purpose (they parse as unknown fields, kept on re-serialize).
OMITTED_FIELDS = frozenset(
    {
        "tensorflow.TensorInfo.composite_tensor",  # needs struct.proto's TypeSpecProto tree
        "tensorflow.serving.PredictRequest.predict_streamed_options",  # TF Serving's LLM streaming extensions
        "tensorflow.serving.PredictRequest.client_id",
        "tensorflow.serving.PredictRequest.request_options",
        "tensorflow.serving.ModelConfig.logging_config",  # request logging: the gateway never configures it
    }
)
#: Gateway fields absent from an official proto: Triton's InferParameter extensions vs KServe/TorchServe.
TRITON_ONLY_FIELDS = frozenset({"InferParameter.double_param", "InferParameter.uint64_param"})
TS_OIP_PACKAGE = "org.pytorch.serve.grpc.openinference"

DEFAULT_POOL = descriptor_pool.Default()


# ----------------------------------------------------------------------------- TorchServe's protos


@pytest.fixture(scope="module")
def ts_pool(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pool.DescriptorPool:
    """TorchServe 0.12's inference/management/open-inference protos (+ google/rpc/status.proto), from the jar."""
    spec = importlib.util.find_spec("ts")  # locates the package without importing it
    assert spec is not None and spec.submodule_search_locations, "torchserve is not installed"
    jar = Path(next(iter(spec.submodule_search_locations)), "frontend", "model-server.jar")
    root = tmp_path_factory.mktemp("torchserve_protos")
    wanted = ["proto/inference.proto", "proto/management.proto", "proto/open_inference_grpc.proto"]
    with zipfile.ZipFile(jar) as archive:
        archive.extractall(root, [*wanted, "google/rpc/status.proto"])
    descriptor_set = root / "torchserve.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{root}",
            "--include_imports",
            f"--descriptor_set_out={descriptor_set}",
            *wanted,
        ],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=60,
    )
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
        pool.AddSerializedFile(file.SerializeToString())
    return pool


def ts_class(pool: descriptor_pool.DescriptorPool, name: str) -> Any:
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


# ----------------------------------------------------------------------------- descriptor comparison


def _walk_messages(descriptors: Iterator[Descriptor] | Any) -> Iterator[Descriptor]:
    for descriptor in descriptors:
        yield descriptor
        yield from _walk_messages(descriptor.nested_types)


def gateway_messages(file: FileDescriptor) -> list[Descriptor]:
    return list(_walk_messages(file.message_types_by_name.values()))


def gateway_enums(file: FileDescriptor) -> list[EnumDescriptor]:
    enums = list(file.enum_types_by_name.values())
    for message in gateway_messages(file):
        enums.extend(message.enum_types)
    return enums


def official_pool(file: FileDescriptor, ts: descriptor_pool.DescriptorPool) -> descriptor_pool.DescriptorPool:
    return ts if "torchserve" in file.name or file.name.endswith("rpc_status.proto") else DEFAULT_POOL


def _field_summary(
    field: descriptor_pb2.FieldDescriptorProto, message: Descriptor, oneofs: list[str], rename: Any
) -> dict[str, Any]:
    return {
        "name": field.name,
        "number": field.number,
        "label": field.label,
        "type": field.type,
        "type_name": rename(field.type_name) if field.HasField("type_name") else None,
        "oneof": oneofs[field.oneof_index] if field.HasField("oneof_index") else None,
        # The effective name: protoc's descriptor sets spell out every json_name, generated code only custom ones.
        "json_name": message.fields_by_number[field.number].json_name,
        "proto3_optional": field.proto3_optional,
        "options": field.options.SerializeToString(deterministic=True),
        "default": field.default_value if field.HasField("default_value") else None,
    }


def _message_proto(descriptor: Descriptor) -> descriptor_pb2.DescriptorProto:
    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)
    return proto


def assert_same_message(
    gateway: Descriptor,
    official: Descriptor,
    official_rename: Any = lambda name: name,
    allowed_extra: frozenset[str] = frozenset(),
) -> None:
    """Field by field, by number: the gateway message matches the official one (omissions excepted)."""
    mine, theirs = _message_proto(gateway), _message_proto(official)
    my_oneofs = [oneof.name for oneof in mine.oneof_decl]
    their_oneofs = [oneof.name for oneof in theirs.oneof_decl]
    my_fields = {field.number: field for field in mine.field}
    for field in theirs.field:
        qualified = f"{official.full_name}.{field.name}"
        if qualified in OMITTED_FIELDS:
            assert field.number not in my_fields, f"{qualified} is listed as omitted but the gateway has it"
            continue
        assert field.number in my_fields, f"{gateway.full_name} lacks field {field.number} ({qualified})"
        expected = _field_summary(field, official, their_oneofs, official_rename)
        actual = _field_summary(my_fields.pop(field.number), gateway, my_oneofs, protos.public_name)
        assert actual == expected, f"{gateway.full_name}.{field.name} differs from {qualified}"
    extra = {f"{gateway.name}.{field.name}" for field in my_fields.values()}
    assert extra <= allowed_extra, f"{gateway.full_name} has fields the official message lacks: {sorted(extra)}"
    assert mine.options.SerializeToString() == theirs.options.SerializeToString()  # map_entry
    assert [(r.start, r.end) for r in mine.reserved_range] == [(r.start, r.end) for r in theirs.reserved_range]


def assert_same_enum(gateway: EnumDescriptor, official: EnumDescriptor) -> None:
    assert [(value.name, value.number) for value in gateway.values] == [
        (value.name, value.number) for value in official.values
    ], gateway.full_name


def test_every_gateway_file_is_compared() -> None:
    modules = (
        rpc_status_pb2,
        tf_error_codes_pb2,
        tf_framework_pb2,
        tf_model_server_config_pb2,
        tf_serving_pb2,
        torchserve_inference_pb2,
        torchserve_management_pb2,
        v2_pb2,
    )
    assert {module.DESCRIPTOR.name for module in modules} == {file.name for file in GATEWAY_FILES}
    protos_dir = Path(protos.__file__).parent
    # The etcd client's files are compared with etcd's own in test_etcd_proto_compat.py.
    etcd = {protos.etcd_rpc_pb2.DESCRIPTOR.name, protos.etcd_kv_pb2.DESCRIPTOR.name}
    assert {f"gateway/protos/{path.name}" for path in protos_dir.glob("*.proto")} == \
        {f.name for f in GATEWAY_FILES} | etcd


@pytest.mark.parametrize("file", GATEWAY_FILES, ids=lambda file: Path(file.name).stem)
def test_descriptors_match_official(file: FileDescriptor, ts_pool: descriptor_pool.DescriptorPool) -> None:
    pool = official_pool(file, ts_pool)
    assert file.package.startswith("gateway.")
    for message in gateway_messages(file):
        assert_same_message(message, pool.FindMessageTypeByName(protos.public_name(message.full_name)))
    for enum in gateway_enums(file):
        assert_same_enum(enum, pool.FindEnumTypeByName(protos.public_name(enum.full_name)))


def test_v2_messages_match_torchserve_open_inference(ts_pool: descriptor_pool.DescriptorPool) -> None:
    """TorchServe's (= KServe's) v2 messages: the same, minus Triton's two InferParameter extensions."""

    def rename(name: str) -> str:
        return name.replace(f".{TS_OIP_PACKAGE}.", ".inference.")

    for message in gateway_messages(v2_pb2.DESCRIPTOR):
        official = ts_pool.FindMessageTypeByName(message.full_name.replace("gateway.v2", TS_OIP_PACKAGE, 1))
        assert_same_message(message, official, rename, TRITON_ONLY_FIELDS)


def _official_service(name: str, ts: descriptor_pool.DescriptorPool) -> ServiceDescriptor:
    return (ts if name.startswith("org.pytorch.") else DEFAULT_POOL).FindServiceByName(name)


@pytest.mark.parametrize("file", GATEWAY_FILES, ids=lambda file: Path(file.name).stem)
def test_service_methods_match_official(file: FileDescriptor, ts_pool: descriptor_pool.DescriptorPool) -> None:
    for service in file.services_by_name.values():
        official = _official_service(protos.public_name(service.full_name), ts_pool)
        for method in service.methods:
            theirs = official.methods_by_name[method.name]
            assert protos.public_name(method.input_type.full_name) == theirs.input_type.full_name
            assert protos.public_name(method.output_type.full_name) == theirs.output_type.full_name
            assert (method.client_streaming, method.server_streaming) == (False, False)
            assert (theirs.client_streaming, theirs.server_streaming) == (False, False)


@pytest.mark.parametrize("method", list(services.METHODS.values()), ids=lambda method: method.path)
def test_method_table_names_official_methods(
    method: services.Method[Any, Any], ts_pool: descriptor_pool.DescriptorPool
) -> None:
    official = _official_service(method.service, ts_pool).methods_by_name[method.name]
    assert not official.client_streaming and not official.server_streaming

    def expected(cls: type[Message]) -> str:
        name = protos.public_name(cls.DESCRIPTOR.full_name)
        if method.service == services.TORCHSERVE_OPEN_INFERENCE_SERVICE:
            return name.replace("inference.", f"{TS_OIP_PACKAGE}.", 1)
        return name

    assert official.input_type.full_name == expected(method.request)
    assert official.output_type.full_name == expected(method.response)


# ----------------------------------------------------------------------------- byte comparison


def _same_scalar(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b) and type(a) is type(b)


def assert_same_values(official: Message, gateway: Message, path: str = "") -> None:
    """The gateway message holds the same values, field by field (by number), as the official one."""
    theirs = {
        field.number: (field, value)
        for field, value in official.ListFields()
        if f"{field.containing_type.full_name}.{field.name}" not in OMITTED_FIELDS
    }
    mine = {field.number: (field, value) for field, value in gateway.ListFields()}
    assert sorted(mine) == sorted(theirs), f"{path}: set fields differ"
    for number, (field, value) in theirs.items():
        my_value = mine[number][1]
        where = f"{path}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            assert sorted(value) == sorted(my_value), where
            value_field = field.message_type.fields_by_name["value"]
            for key in value:
                if value_field.message_type is not None:
                    assert_same_values(value[key], my_value[key], f"{where}[{key!r}]")
                else:
                    assert _same_scalar(value[key], my_value[key]), f"{where}[{key!r}]"
        elif field.message_type is not None:
            items = list(value) if field.is_repeated else [value]
            my_items = list(my_value) if field.is_repeated else [my_value]
            assert len(items) == len(my_items), where
            for index, (item, my_item) in enumerate(zip(items, my_items, strict=True)):
                assert_same_values(item, my_item, f"{where}[{index}]")
        else:
            items = list(value) if field.is_repeated else [value]
            my_items = list(my_value) if field.is_repeated else [my_value]
            assert len(items) == len(my_items), where
            assert all(_same_scalar(a, b) for a, b in zip(items, my_items, strict=True)), where


def round_trip(official: Message, gateway_cls: type[Message]) -> Message:
    """official -> bytes -> gateway -> identical bytes -> official again; returns the gateway message."""
    wire = official.SerializeToString(deterministic=True)
    mine = gateway_cls.FromString(wire)
    assert mine.SerializeToString(deterministic=True) == wire
    assert_same_values(official, mine)
    again = type(official).FromString(mine.SerializeToString())
    assert again.SerializeToString(deterministic=True) == wire
    return mine


def reverse_trip(gateway: Message, official_cls: Any) -> Message:
    """A message the gateway builds parses with the official class into the same bytes and values."""
    wire = gateway.SerializeToString(deterministic=True)
    theirs = official_cls.FromString(wire)
    assert theirs.SerializeToString(deterministic=True) == wire
    assert_same_values(theirs, gateway)
    return theirs


# --- TensorFlow framework ------------------------------------------------------------------------------

DT = types_pb2.DataType
ALL_DTYPES = [(value.name, value.number) for value in types_pb2.DataType.DESCRIPTOR.values]


def _typed_values(dtype: int) -> dict[str, Any]:
    """The typed field TF uses for ``dtype`` (the base type for *_REF), with edge values."""
    base = dtype - 100 if dtype > 100 else dtype
    ints = [-(2**31), -1, 0, 1, 2**31 - 1]
    if base == DT.Value("DT_FLOAT"):
        return {"float_val": [0.5, -0.0, float("inf"), float("-inf"), float("nan"), 3.4e38]}
    if base == DT.Value("DT_DOUBLE"):
        return {"double_val": [0.1, -0.0, float("inf"), float("nan"), 1.7e308, 5e-324]}
    if base in (DT.Value("DT_HALF"), DT.Value("DT_BFLOAT16")):
        return {"half_val": [0, 0x3C00, 0x7BFF, 0xFC00, 0x7E00]}
    if base == DT.Value("DT_STRING"):
        return {"string_val": [b"", b"abc", "é".encode(), bytes(range(256))]}
    if base == DT.Value("DT_COMPLEX64"):
        return {"scomplex_val": [1.0, -2.0, 0.5, float("nan")]}
    if base == DT.Value("DT_COMPLEX128"):
        return {"dcomplex_val": [1.0, -2.0, 0.25, float("inf")]}
    if base == DT.Value("DT_INT64"):
        return {"int64_val": [-(2**63), -1, 0, 2**63 - 1]}
    if base == DT.Value("DT_BOOL"):
        return {"bool_val": [True, False, True]}
    if base == DT.Value("DT_UINT32"):
        return {"uint32_val": [0, 1, 2**32 - 1]}
    if base == DT.Value("DT_UINT64"):
        return {"uint64_val": [0, 1, 2**64 - 1]}
    if base == DT.Value("DT_RESOURCE"):
        handle = resource_handle_pb2.ResourceHandleProto(
            device="/job:localhost/replica:0/task:0/device:CPU:0",
            container="c",
            name="v",
            hash_code=2**64 - 1,
            maybe_type_name="Var",
            dtypes_and_shapes=[
                resource_handle_pb2.ResourceHandleProto.DtypeAndShape(
                    dtype=types_pb2.DT_FLOAT,
                    shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": -1}, {"size": 3}]),
                )
            ],
        )
        return {"resource_handle_val": [handle]}
    if base == DT.Value("DT_VARIANT"):
        inner = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[1, -2])
        return {
            "variant_val": [tensor_pb2.VariantTensorDataProto(type_name="t", metadata=b"\x00\x01", tensors=[inner])]
        }
    if DT.Name(base).startswith(("DT_FLOAT8", "DT_FLOAT4")):
        return {"float8_val": bytes([0, 0x38, 0x7F, 0x80, 0xFF])}
    return {"int_val": ints}  # INT32/16/8, UINT8/16, INT4/UINT4/INT2/UINT2 and the quantized types


def _shape(*dims: int, names: tuple[str, ...] = ()) -> tensor_shape_pb2.TensorShapeProto:
    shape = tensor_shape_pb2.TensorShapeProto()
    for index, size in enumerate(dims):
        shape.dim.add(size=size, name=names[index] if index < len(names) else "")
    return shape


@pytest.mark.parametrize(("name", "dtype"), ALL_DTYPES, ids=[name for name, _ in ALL_DTYPES])
def test_tensor_proto_every_dtype(name: str, dtype: int) -> None:
    typed = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=_shape(5), version_number=1, **_typed_values(dtype))
    mine = round_trip(typed, tf_framework_pb2.TensorProto)
    assert tf_framework_pb2.DataType.Name(mine.dtype) == name
    content = tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=_shape(2, -1, names=("batch", "")), tensor_content=bytes(range(24))
    )
    assert round_trip(content, tf_framework_pb2.TensorProto).tensor_content == bytes(range(24))


def test_tensor_shape_unknown_rank_and_scalar() -> None:
    round_trip(tensor_shape_pb2.TensorShapeProto(unknown_rank=True), tf_framework_pb2.TensorShapeProto)
    round_trip(
        tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, tensor_shape=_shape(), int_val=[7]),
        tf_framework_pb2.TensorProto,
    )


def _tf_arrays() -> list[tuple[str, Any]]:
    arrays: list[tuple[str, Any]] = [
        (str(np.dtype(dtype)), (np.arange(-3, 3).reshape(2, 3)).astype(dtype))
        for dtype in (
            np.float16,
            np.float32,
            np.float64,
            np.int8,
            np.int16,
            np.int32,
            np.int64,
            np.uint8,
            np.uint16,
            np.uint32,
            np.uint64,
            np.complex64,
            np.complex128,
        )
    ]
    arrays += [
        ("bool", np.array([[True, False], [False, True]])),
        ("bytes", np.array([[b"a", b""], [b"\xff\x00", "é".encode()]], dtype=object)),
        ("float32-nan-inf", np.array([np.nan, np.inf, -np.inf, -0.0], dtype=np.float32)),
        ("scalar-float", np.float32(1.5)),
        ("scalar-int64", np.int64(-(2**40))),
        ("scalar-string", np.array(b"x", dtype=object)),
        ("empty", np.zeros((0, 3), dtype=np.float32)),
    ]
    return arrays


@pytest.mark.parametrize(("label", "array"), _tf_arrays(), ids=[label for label, _ in _tf_arrays()])
def test_tensor_protos_made_by_tensorflow(label: str, array: Any) -> None:
    """What TF's own clients send: tf.make_tensor_proto (tensor_content for most, typed values for scalars)."""
    official = tf.make_tensor_proto(array)
    mine = round_trip(official, tf_framework_pb2.TensorProto)
    # The gateway can rebuild the array from its own message exactly as TF does from the official one.
    rebuilt = tf.make_ndarray(tensor_pb2.TensorProto.FromString(mine.SerializeToString()))
    expected = tf.make_ndarray(official)
    assert rebuilt.dtype == expected.dtype and rebuilt.shape == expected.shape
    if expected.dtype == object:  # strings
        assert rebuilt.tolist() == expected.tolist()
    else:
        assert rebuilt.tobytes() == expected.tobytes()


@pytest.mark.parametrize("packed", [False, True], ids=["typed", "tensor_content"])
def test_bfloat16_and_half_tensors(packed: bool) -> None:
    for dtype in (tf.bfloat16, tf.float16):
        official = tf.make_tensor_proto(
            tf.constant([[0.5, -2.0], [65504.0 if dtype == tf.float16 else 1e30, 0.0]], dtype=dtype).numpy()
        )
        if not packed:
            values = official.tensor_content
            official.ClearField("tensor_content")
            official.half_val.extend(struct.unpack(f"<{len(values) // 2}H", values))
        round_trip(official, tf_framework_pb2.TensorProto)


# --- TF Serving: model spec, predict --------------------------------------------------------------------


def _model_specs() -> list[tuple[str, Any]]:
    return [
        ("bare", model_pb2.ModelSpec(name="m")),
        ("version", model_pb2.ModelSpec(name="m", version=wrappers_pb2.Int64Value(value=3), signature_name="s")),
        ("version-0", model_pb2.ModelSpec(name="m", version=wrappers_pb2.Int64Value(value=0))),
        ("version-max", model_pb2.ModelSpec(name="m", version=wrappers_pb2.Int64Value(value=2**63 - 1))),
        ("label", model_pb2.ModelSpec(name="m", version_label="stable", signature_name="serving_default")),
        ("empty-label", model_pb2.ModelSpec(name="m", version_label="")),
        ("empty", model_pb2.ModelSpec()),
    ]


@pytest.mark.parametrize(("label", "spec"), _model_specs(), ids=[label for label, _ in _model_specs()])
def test_model_spec_version_choice(label: str, spec: Any) -> None:
    mine = round_trip(spec, tf_serving_pb2.ModelSpec)
    assert mine.WhichOneof("version_choice") == spec.WhichOneof("version_choice")
    assert mine.HasField("version") == spec.HasField("version")
    if spec.HasField("version"):
        assert mine.version.value == spec.version.value
    if spec.HasField("version_label"):
        assert mine.version_label == spec.version_label


def _tensor_map() -> dict[str, Any]:
    return {
        "x": tf.make_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "ids": tf.make_tensor_proto(np.array([1, 2], dtype=np.int64)),
        "s": tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(2), string_val=[b"a", b"b"]),
        "f": tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(1, 2), float_val=[0.5, 1.5]),
        "": tensor_pb2.TensorProto(dtype=types_pb2.DT_BOOL, bool_val=[True]),
    }


def test_predict_request_and_response() -> None:
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="m", version_label="canary", signature_name="serving_default"),
        inputs=_tensor_map(),
        output_filter=["y", "z"],
    )
    round_trip(request, tf_serving_pb2.PredictRequest)
    response = predict_pb2.PredictResponse(
        model_spec=model_pb2.ModelSpec(name="m", version=wrappers_pb2.Int64Value(value=2), signature_name="s"),
        outputs=_tensor_map(),
    )
    round_trip(response, tf_serving_pb2.PredictResponse)


def test_predict_request_omitted_fields_pass_through_unchanged() -> None:
    """Fields 5-7 (LLM streaming extensions) are not mirrored: they survive as unknown fields."""
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="m"), inputs={"x": _tensor_map()["x"]})
    request.predict_streamed_options.request_state = predict_pb2.PredictStreamedOptions.SPLIT
    request.predict_streamed_options.split_dimensions["x"] = 0
    request.client_id = b"client"
    request.request_options.max_cache_length = 5
    mine = round_trip(request, tf_serving_pb2.PredictRequest)
    assert sorted(field.field_number for field in unknown_fields.UnknownFieldSet(mine)) == [5, 6, 7]


def test_gateway_built_predict_response_parses_officially() -> None:
    mine = tf_serving_pb2.PredictResponse(
        model_spec=tf_serving_pb2.ModelSpec(name="m", version=wrappers_pb2.Int64Value(value=7)),
        outputs={
            "y": tf_framework_pb2.TensorProto(
                dtype=tf_framework_pb2.DT_FLOAT,
                tensor_shape=tf_framework_pb2.TensorShapeProto(dim=[{"size": 2}]),
                tensor_content=np.array([1.5, -2.5], dtype="<f4").tobytes(),
            )
        },
    )
    theirs = reverse_trip(mine, predict_pb2.PredictResponse)
    assert tf.make_ndarray(theirs.outputs["y"]).tolist() == [1.5, -2.5]


# --- TF Serving: metadata with Any -------------------------------------------------------------------------


def _signature_def_map() -> Any:
    shape = _shape(-1, 3)
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    sig.inputs["x"].CopyFrom(
        meta_graph_pb2.TensorInfo(name="serving_default_x:0", dtype=types_pb2.DT_FLOAT, tensor_shape=shape)
    )
    sig.inputs["unknown"].CopyFrom(
        meta_graph_pb2.TensorInfo(
            name="u:0", dtype=types_pb2.DT_STRING, tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
        )
    )
    sig.inputs["sparse"].coo_sparse.CopyFrom(
        meta_graph_pb2.TensorInfo.CooSparse(
            values_tensor_name="v:0", indices_tensor_name="i:0", dense_shape_tensor_name="d:0"
        )
    )
    sig.outputs["y"].CopyFrom(
        meta_graph_pb2.TensorInfo(name="StatefulPartitionedCall:0", dtype=types_pb2.DT_FLOAT, tensor_shape=shape)
    )
    sig.defaults["k"].CopyFrom(tf.make_tensor_proto(np.int64(3)))
    classify = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/classify")
    classify.inputs["inputs"].CopyFrom(meta_graph_pb2.TensorInfo(name="tf_example:0", dtype=types_pb2.DT_STRING))
    return get_model_metadata_pb2.SignatureDefMap(signature_def={"serving_default": sig, "classify": classify})


def test_get_model_metadata_request_and_response_with_any() -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="m", version=wrappers_pb2.Int64Value(value=1)),
        metadata_field=["signature_def"],
    )
    round_trip(request, tf_serving_pb2.GetModelMetadataRequest)

    signature_defs = _signature_def_map()
    response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=model_pb2.ModelSpec(name="m"))
    response.metadata["signature_def"].Pack(signature_defs)
    assert response.metadata["signature_def"].type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    mine = round_trip(response, tf_serving_pb2.GetModelMetadataResponse)

    packed = mine.metadata["signature_def"]
    assert packed.type_url == protos.type_url(tf_serving_pb2.SignatureDefMap)
    assert not packed.Unpack(tf_serving_pb2.SignatureDefMap())  # the private name: why pack_any/unpack_any exist
    unpacked = protos.unpack_any(packed, tf_serving_pb2.SignatureDefMap)
    assert unpacked is not None
    assert unpacked.SerializeToString(deterministic=True) == signature_defs.SerializeToString(deterministic=True)
    assert_same_values(signature_defs, unpacked)
    assert protos.unpack_any(packed, tf_serving_pb2.PredictRequest) is None


def test_gateway_packed_metadata_unpacks_officially() -> None:
    signature_defs = round_trip(_signature_def_map(), tf_serving_pb2.SignatureDefMap)
    mine = tf_serving_pb2.GetModelMetadataResponse(model_spec=tf_serving_pb2.ModelSpec(name="m"))
    mine.metadata["signature_def"].CopyFrom(protos.pack_any(signature_defs))
    theirs = reverse_trip(mine, get_model_metadata_pb2.GetModelMetadataResponse)
    official = get_model_metadata_pb2.SignatureDefMap()
    assert theirs.metadata["signature_def"].Unpack(official)
    assert official == _signature_def_map()


def test_composite_tensor_info_passes_through_unchanged() -> None:
    info = meta_graph_pb2.TensorInfo(dtype=types_pb2.DT_VARIANT)
    info.composite_tensor.type_spec.type_spec_class_name = "RaggedTensorSpec"
    info.composite_tensor.components.add(name="c:0", dtype=types_pb2.DT_FLOAT)
    mine = round_trip(info, tf_framework_pb2.TensorInfo)
    assert mine.WhichOneof("encoding") is None
    assert [field.field_number for field in unknown_fields.UnknownFieldSet(mine)] == [5]


# --- TF Serving: model status -------------------------------------------------------------------------------


def test_get_model_status_every_state_and_error_code() -> None:
    round_trip(
        get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name="m", version_label="x")),
        tf_serving_pb2.GetModelStatusRequest,
    )
    states = [value.number for value in get_model_status_pb2.ModelVersionStatus.State.DESCRIPTOR.values]
    codes = [value.number for value in status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type.values]
    response = get_model_status_pb2.GetModelStatusResponse()
    for index, code in enumerate(codes):
        response.model_version_status.add(
            version=index + 1,
            state=states[index % len(states)],
            status=status_pb2.StatusProto(error_code=code, error_message=f"message {code}" if code else ""),
        )
    mine = round_trip(response, tf_serving_pb2.GetModelStatusResponse)
    assert [s.status.error_code for s in mine.model_version_status] == codes
    assert tf_error_codes_pb2.Code.Name(codes[-1]).startswith("DO_NOT_USE")
    assert tf_serving_pb2.ModelVersionStatus.State.Name(30) == "AVAILABLE"


# --- TF Serving: classify and regress ------------------------------------------------------------------------


def _examples() -> list[Any]:
    features = feature_pb2.Features(
        feature={
            "f": feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[0.5, float("nan")])),
            "i": feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[-(2**63), 2**63 - 1])),
            "b": feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[b"x", b""])),
            "empty": feature_pb2.Feature(),
        }
    )
    return [example_pb2.Example(features=features), example_pb2.Example()]


def test_classify_and_regress() -> None:
    spec = model_pb2.ModelSpec(name="m", signature_name="classify")
    by_list = input_pb2.Input(example_list=input_pb2.ExampleList(examples=_examples()))
    with_context = input_pb2.Input(
        example_list_with_context=input_pb2.ExampleListWithContext(examples=_examples(), context=_examples()[0])
    )
    for request_input in (by_list, with_context, input_pb2.Input()):
        round_trip(
            classification_pb2.ClassificationRequest(model_spec=spec, input=request_input),
            tf_serving_pb2.ClassificationRequest,
        )
        round_trip(
            regression_pb2.RegressionRequest(model_spec=spec, input=request_input), tf_serving_pb2.RegressionRequest
        )
    classes = [classification_pb2.Class(label="cat", score=0.75), classification_pb2.Class(label="", score=0.0)]
    round_trip(
        classification_pb2.ClassificationResponse(
            model_spec=spec,
            result=classification_pb2.ClassificationResult(
                classifications=[
                    classification_pb2.Classifications(classes=classes),
                    classification_pb2.Classifications(),
                ]
            ),
        ),
        tf_serving_pb2.ClassificationResponse,
    )
    round_trip(
        regression_pb2.RegressionResponse(
            model_spec=spec,
            result=regression_pb2.RegressionResult(
                regressions=[regression_pb2.Regression(value=1.5), regression_pb2.Regression(value=float("-inf"))]
            ),
        ),
        tf_serving_pb2.RegressionResponse,
    )


# --- Open Inference Protocol (v2) ----------------------------------------------------------------------------

V2_RAW = {
    "BOOL": np.array([True, False]),
    "UINT8": np.array([0, 255], np.uint8),
    "INT16": np.array([-3, 3], np.int16),
    "INT64": np.array([-(2**62), 2**62]),
    "FP16": np.array([0.5, -1.5], np.float16),
    "FP32": np.array([np.nan, np.inf], np.float32),
    "FP64": np.array([0.1, -0.0]),
}


def _parameters(triton: bool) -> dict[str, Any]:
    params: dict[str, Any] = {
        "flag": triton_pb2.InferParameter(bool_param=True),
        "count": triton_pb2.InferParameter(int64_param=-(2**63)),
        "text": triton_pb2.InferParameter(string_param="é"),
        "unset": triton_pb2.InferParameter(),
    }
    if triton:
        params["ratio"] = triton_pb2.InferParameter(double_param=0.25)
        params["big"] = triton_pb2.InferParameter(uint64_param=2**64 - 1)
    return params


def _every_contents() -> Any:
    return triton_pb2.InferTensorContents(
        bool_contents=[True, False],
        int_contents=[-(2**31), 2**31 - 1],
        int64_contents=[-(2**63), 2**63 - 1],
        uint_contents=[0, 2**32 - 1],
        uint64_contents=[0, 2**64 - 1],
        fp32_contents=[0.5, float("nan")],
        fp64_contents=[0.1, float("-inf")],
        bytes_contents=[b"", b"\x00\xff", "é".encode()],
    )


def _infer_request(raw: bool) -> Any:
    Request = triton_pb2.ModelInferRequest
    request = Request(model_name="m", model_version="2", id="req-1", parameters=_parameters(True))
    if raw:
        for name, array in V2_RAW.items():
            request.inputs.add(name=name.lower(), datatype=name, shape=[1, len(array)])
            request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
        strings = serialize_byte_tensor(np.array([b"a", b"", "é".encode()], dtype=object))
        request.inputs.add(name="s", datatype="BYTES", shape=[3], parameters={"p": _parameters(True)["big"]})
        request.raw_input_contents.append(strings.item() if strings.ndim == 0 else strings.tobytes())
    else:
        request.inputs.add(
            name="all", datatype="FP32", shape=[2, -1], contents=_every_contents(), parameters=_parameters(True)
        )
        request.inputs.add(name="empty", datatype="INT32", shape=[0])
    request.outputs.add(name="y", parameters={"binary_data": triton_pb2.InferParameter(bool_param=True)})
    request.outputs.add(name="z")
    return request


@pytest.mark.parametrize("raw", [False, True], ids=["contents", "raw_input_contents"])
def test_v2_model_infer_request(raw: bool) -> None:
    mine = round_trip(_infer_request(raw), v2_pb2.ModelInferRequest)
    if raw:
        first = mine.raw_input_contents[1]
        assert np.frombuffer(first, "<u1").tolist() == [0, 255]


@pytest.mark.parametrize("raw", [False, True], ids=["contents", "raw_output_contents"])
def test_v2_model_infer_response(raw: bool) -> None:
    response = triton_pb2.ModelInferResponse(model_name="m", model_version="1", id="", parameters=_parameters(True))
    if raw:
        for name, array in V2_RAW.items():
            response.outputs.add(name=name, datatype=name, shape=[len(array)])
            response.raw_output_contents.append(array.tobytes())
    else:
        response.outputs.add(
            name="y",
            datatype="FP64",
            shape=[2],
            contents=_every_contents(),
            parameters={"binary_data_size": triton_pb2.InferParameter(int64_param=16)},
        )
    round_trip(response, v2_pb2.ModelInferResponse)


def test_v2_health_and_metadata_messages() -> None:
    pairs = [
        (triton_pb2.ServerLiveRequest(), v2_pb2.ServerLiveRequest),
        (triton_pb2.ServerLiveResponse(live=True), v2_pb2.ServerLiveResponse),
        (triton_pb2.ServerReadyRequest(), v2_pb2.ServerReadyRequest),
        (triton_pb2.ServerReadyResponse(ready=True), v2_pb2.ServerReadyResponse),
        (triton_pb2.ModelReadyRequest(name="m", version="3"), v2_pb2.ModelReadyRequest),
        (triton_pb2.ModelReadyResponse(ready=True), v2_pb2.ModelReadyResponse),
        (triton_pb2.ServerMetadataRequest(), v2_pb2.ServerMetadataRequest),
        (
            triton_pb2.ServerMetadataResponse(name="gw", version="0.1.0", extensions=["a", "b"]),
            v2_pb2.ServerMetadataResponse,
        ),
        (triton_pb2.ModelMetadataRequest(name="m", version=""), v2_pb2.ModelMetadataRequest),
        (
            triton_pb2.ModelMetadataResponse(
                name="m",
                versions=["1", "2"],
                platform="tensorflow_savedmodel",
                inputs=[triton_pb2.ModelMetadataResponse.TensorMetadata(name="x", datatype="FP32", shape=[-1, 3])],
                outputs=[triton_pb2.ModelMetadataResponse.TensorMetadata(name="y", datatype="BYTES", shape=[])],
            ),
            v2_pb2.ModelMetadataResponse,
        ),
    ]
    for official, cls in pairs:
        round_trip(official, cls)


def test_v2_against_torchserve_open_inference(ts_pool: descriptor_pool.DescriptorPool) -> None:
    """TorchServe's v2 messages (KServe's): same bytes; Triton-only parameters are unknown fields there."""
    Request = ts_class(ts_pool, f"{TS_OIP_PACKAGE}.ModelInferRequest")
    Parameter = ts_class(ts_pool, f"{TS_OIP_PACKAGE}.InferParameter")
    request = Request.FromString(_infer_request(raw=False).SerializeToString(deterministic=True))
    for key in ("ratio", "big"):  # Triton extensions: unknown to TorchServe
        assert not request.parameters[key].ListFields()
        del request.parameters[key]
    request.inputs[0].parameters.clear()
    request.parameters["flag"].CopyFrom(Parameter(bool_param=True))
    round_trip(request, v2_pb2.ModelInferRequest)
    Response = ts_class(ts_pool, f"{TS_OIP_PACKAGE}.ModelInferResponse")
    response = Response(model_name="m", raw_output_contents=[np.arange(3, dtype="<f4").tobytes()])
    response.outputs.add(name="y", datatype="FP32", shape=[3])
    round_trip(response, v2_pb2.ModelInferResponse)


def test_gateway_built_v2_response_parses_officially() -> None:
    mine = v2_pb2.ModelInferResponse(
        model_name="m",
        model_version="1",
        id="r",
        parameters={"p": v2_pb2.InferParameter(double_param=0.5)},
        raw_output_contents=[np.array([1, 2], "<i8").tobytes()],
    )
    mine.outputs.add(name="y", datatype="INT64", shape=[2])
    reverse_trip(mine, triton_pb2.ModelInferResponse)


# --- TorchServe ------------------------------------------------------------------------------------------------

TS_INFERENCE = "org.pytorch.serve.grpc.inference"
TS_MANAGEMENT = "org.pytorch.serve.grpc.management"


def test_torchserve_inference_messages(ts_pool: descriptor_pool.DescriptorPool) -> None:
    PredictionsRequest = ts_class(ts_pool, f"{TS_INFERENCE}.PredictionsRequest")
    PredictionResponse = ts_class(ts_pool, f"{TS_INFERENCE}.PredictionResponse")
    Health = ts_class(ts_pool, f"{TS_INFERENCE}.TorchServeHealthResponse")
    Status = ts_class(ts_pool, "google.rpc.Status")
    AnyInPool = ts_class(ts_pool, "google.protobuf.Any")
    round_trip(
        PredictionsRequest(
            model_name="m", model_version="1.0", input={"data": b'{"x": [1, 2]}', "": b"", "bin": bytes(range(256))}
        ),
        torchserve_inference_pb2.PredictionsRequest,
    )
    with_sequence = round_trip(
        PredictionsRequest(model_name="m", sequence_id=""), torchserve_inference_pb2.PredictionsRequest
    )
    assert with_sequence.HasField("sequence_id")  # proto3 optional: presence survives, even when empty
    assert not round_trip(PredictionsRequest(model_name="m"), torchserve_inference_pb2.PredictionsRequest).HasField(
        "sequence_id"
    )
    detail = AnyInPool(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\x0a\x01x")
    status = Status(code=14, message="Worker died.", details=[detail])
    mine = round_trip(
        PredictionResponse(prediction=b"[0.5]", sequence_id="s", status=status),
        torchserve_inference_pb2.PredictionResponse,
    )
    assert mine.status.code == 14 and mine.status.details[0].type_url.endswith("ErrorInfo")
    assert not round_trip(PredictionResponse(prediction=b""), torchserve_inference_pb2.PredictionResponse).HasField(
        "status"
    )
    round_trip(Health(health='{\n  "status": "Healthy"\n}'), torchserve_inference_pb2.TorchServeHealthResponse)
    round_trip(Status(code=0), rpc_status_pb2.Status)
    assert services.TS_PING.request is empty_pb2.Empty


def test_torchserve_management_messages(ts_pool: descriptor_pool.DescriptorPool) -> None:
    def cls(name: str) -> Any:
        return ts_class(ts_pool, f"{TS_MANAGEMENT}.{name}")

    pairs = [
        (cls("ManagementResponse")(msg='[{"modelName": "m"}]'), torchserve_management_pb2.ManagementResponse),
        (
            cls("DescribeModelRequest")(model_name="m", model_version="all", customized=True),
            torchserve_management_pb2.DescribeModelRequest,
        ),
        (cls("SetDefaultRequest")(model_name="m", model_version="2.0"), torchserve_management_pb2.SetDefaultRequest),
        (
            cls("RegisterModelRequest")(
                batch_size=4,
                handler="h.py",
                initial_workers=1,
                max_batch_delay=100,
                model_name="m",
                response_timeout=120,
                runtime="python",
                synchronous=True,
                url="m-1.0.mar",
                s3_sse_kms=True,
                startup_timeout=-1,
            ),
            torchserve_management_pb2.RegisterModelRequest,
        ),
        (
            cls("UnregisterModelRequest")(model_name="m", model_version="1.0"),
            torchserve_management_pb2.UnregisterModelRequest,
        ),
        (
            cls("ScaleWorkerRequest")(
                model_name="m",
                model_version="1.0",
                max_worker=2,
                min_worker=1,
                number_gpu=0,
                synchronous=True,
                timeout=-1,
            ),
            torchserve_management_pb2.ScaleWorkerRequest,
        ),
    ]
    for official, gateway_cls in pairs:
        round_trip(official, gateway_cls)
        round_trip(type(official)(), gateway_cls)  # all defaults: empty bytes both ways


# --- over gRPC: the method table against official stubs and servicers -----------------------------------------


@pytest.fixture
def grpc_server() -> Iterator[tuple[grpc.Server, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    yield server, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_official_tf_stub_calls_a_gateway_style_handler(grpc_server: tuple[grpc.Server, str]) -> None:
    """The gateway serves public paths with its own classes: TF Serving's client stub cannot tell."""
    server, target = grpc_server
    method = services.TF_PREDICT

    def predict(request: tf_serving_pb2.PredictRequest, context: grpc.ServicerContext) -> Message:
        response = tf_serving_pb2.PredictResponse(model_spec=request.model_spec)
        response.model_spec.version.value = 5
        for name, tensor in request.inputs.items():
            response.outputs[name].CopyFrom(tensor)
        return response

    handler = grpc.unary_unary_rpc_method_handler(
        predict, request_deserializer=method.request.FromString, response_serializer=method.response.SerializeToString
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(method.service, {method.name: handler})])
    server.start()
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="m", version_label="stable"), inputs=_tensor_map()
    )
    with grpc.insecure_channel(target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert response.model_spec.name == "m" and response.model_spec.version.value == 5
    assert response.model_spec.WhichOneof("version_choice") == "version"
    assert dict(response.outputs) == dict(request.inputs)


def test_gateway_style_client_calls_an_official_v2_servicer(grpc_server: tuple[grpc.Server, str]) -> None:
    """The gateway calls public paths with its own classes: Triton's servicer answers as to any client."""
    server, target = grpc_server

    class Servicer(triton_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
            response = triton_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
            for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
                response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
                response.raw_output_contents.append(raw)
            response.parameters["seen"].double_param = request.parameters["ratio"].double_param
            return response

    triton_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.start()
    method = services.V2_MODEL_INFER
    request = v2_pb2.ModelInferRequest(
        model_name="m",
        id="r",
        parameters={"ratio": v2_pb2.InferParameter(double_param=0.5)},
        raw_input_contents=[np.arange(3, dtype="<f4").tobytes()],
    )
    request.inputs.add(name="x", datatype="FP32", shape=[3])
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            method.path,
            request_serializer=method.request.SerializeToString,
            response_deserializer=method.response.FromString,
        )
        response = call(request, timeout=10)
    assert isinstance(response, v2_pb2.ModelInferResponse)
    assert (response.model_name, response.id, response.parameters["seen"].double_param) == ("m", "r", 0.5)
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [0.0, 1.0, 2.0]
