"""gateway.protos: generation (a build step; import is read-only), the method table, public names, reflection.

Generation tests work on copies in tmp directories, each imported in a subprocess (the default descriptor
pool of this process already holds the checkout's files).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, empty_pb2
from google.protobuf.message import Message

from gateway import protos
from gateway.protos import _build, reflection, services, tf_framework_pb2, tf_serving_pb2, v2_pb2

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "gateway" / "protos"
TIMEOUT_S = 120

#: Exactly the services and methods the gateway serves or calls.
EXPECTED_METHODS = {
    "inference.GRPCInferenceService": [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ],
    "tensorflow.serving.PredictionService": ["Classify", "Regress", "Predict", "GetModelMetadata"],
    "tensorflow.serving.ModelService": ["GetModelStatus"],
    "org.pytorch.serve.grpc.inference.InferenceAPIsService": ["Ping", "Predictions"],
    "org.pytorch.serve.grpc.management.ManagementAPIsService": [
        "DescribeModel",
        "RegisterModel",
        "ScaleWorker",
        "SetDefault",
        "UnregisterModel",
    ],
    "org.pytorch.serve.grpc.openinference.GRPCInferenceService": [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ],
}


def _copy_sources(root: Path, with_python: bool) -> Path:
    """root/gateway/protos with the .proto files (and the package's hand-written modules): no generated files."""
    target = root / "gateway" / "protos"
    target.mkdir(parents=True)
    patterns = ["*.proto"] + (["*.py"] if with_python else [])
    for pattern in patterns:
        for path in PROTO_DIR.glob(pattern):
            if not path.name.endswith("_pb2.py"):
                shutil.copy2(path, target / path.name)
    if with_python:
        shutil.copy2(REPO / "gateway" / "__init__.py", root / "gateway" / "__init__.py")
    return target


def _run(args: list[str], cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def _outputs(directory: Path) -> dict[str, int]:
    return {
        path.name: path.stat().st_mtime_ns
        for path in sorted(directory.iterdir())
        if path.name.endswith(_build.OUTPUT_SUFFIXES)
    }


# ----------------------------------------------------------------------------- generation


def test_checkout_is_generated_and_current() -> None:
    assert _build.stale() == []
    names = _build.proto_names()
    assert names == sorted(path.stem for path in PROTO_DIR.glob("*.proto"))
    assert list(protos._GENERATED) == [name + "_pb2" for name in names]  # what import checks for
    assert set(_outputs(PROTO_DIR)) == {name + suffix for name in names for suffix in _build.OUTPUT_SUFFIXES}


def test_cli_regenerates_a_copy_identically(tmp_path: Path) -> None:
    target = _copy_sources(tmp_path, with_python=False)
    done = _run(["-m", "gateway.protos", "--root", str(tmp_path)], cwd=REPO)
    assert done.returncode == 0, done.stderr
    produced = _outputs(target)
    assert set(produced) == set(_outputs(PROTO_DIR))
    assert sorted(Path(line).name for line in done.stdout.split()) == sorted(produced)
    for name in produced:  # protoc is deterministic: the checkout's files are what the sources give
        assert (target / name).read_bytes() == (PROTO_DIR / name).read_bytes(), name
    assert _build.stale(tmp_path) == []
    assert not list(target.glob(".build-*"))


def test_cli_reports_protoc_errors(tmp_path: Path) -> None:
    target = _copy_sources(tmp_path, with_python=False)
    (target / "broken.proto").write_text('syntax = "proto3";\npackage gateway.broken;\nmessage M { nope x = 1; }\n')
    done = _run(["-m", "gateway.protos", "--root", str(tmp_path)], cwd=REPO)
    assert done.returncode == 1
    assert "protoc failed" in done.stderr and "nope" in done.stderr
    assert not list(target.glob(".build-*"))


IMPORT_PROBE = textwrap.dedent(
    """
    import sys
    import gateway.protos
    from gateway.protos import reflection, services
    assert gateway.protos.__file__.startswith(sys.argv[1]), gateway.protos.__file__
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "torch", "tritonclient", "ts"})
    assert not heavy, heavy
    assert "grpc_tools" not in sys.modules  # a build dependency only
    assert services.TF_PREDICT.request.DESCRIPTOR.full_name == "gateway.tf.serving.PredictRequest"
    print("ok")
    """
)


def _snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in sorted(directory.iterdir())}


def _import_copy(root: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", code, str(root)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)


def test_import_never_writes_into_the_package_even_when_modules_look_stale(tmp_path: Path) -> None:
    target = _copy_sources(tmp_path, with_python=True)
    assert _run(["-m", "gateway.protos", "--root", str(tmp_path)], cwd=REPO).returncode == 0
    newest = max([time.time_ns(), *(path.stat().st_mtime_ns for path in target.iterdir())])
    future = newest + 3600 * 10**9
    os.utime(target / "v2.proto", ns=(future, future))  # an edited .proto: the old import regenerated here
    assert _build.stale(tmp_path) == ["v2"]
    before = _snapshot(target)

    done = _import_copy(tmp_path, IMPORT_PROBE)

    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert _snapshot(target) == before  # nothing generated, nothing touched


def test_import_with_a_missing_module_names_the_build_step_and_writes_nothing(tmp_path: Path) -> None:
    target = _copy_sources(tmp_path, with_python=True)
    assert _run(["-m", "gateway.protos", "--root", str(tmp_path)], cwd=REPO).returncode == 0
    (target / "tf_serving_pb2.py").unlink()
    before = _snapshot(target)

    done = _import_copy(tmp_path, "from gateway.protos import services")

    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "ImportError: gateway.protos: the generated module gateway.protos.tf_serving_pb2 is missing; generate the "
        "modules with `python -m gateway.protos` (a build step: make, scripts/bootstrap and the Dockerfile run it)"
    ), done.stderr
    assert _snapshot(target) == before
    # The package itself still imports, so that the build step can run from it.
    assert _import_copy(tmp_path, "import gateway.protos").returncode == 0
    assert _run(["-m", "gateway.protos", "--root", str(tmp_path)], cwd=tmp_path, pythonpath=tmp_path).returncode == 0
    assert (target / "tf_serving_pb2.py").exists()
    assert _import_copy(tmp_path, IMPORT_PROBE).stdout.strip() == "ok"


# ----------------------------------------------------------------------------- method table


def test_method_table_covers_exactly_the_listed_services() -> None:
    assert {service: [method.name for method in methods] for service, methods in services.SERVICES.items()} == (
        EXPECTED_METHODS
    )
    assert len(services.METHODS) == sum(len(names) for names in EXPECTED_METHODS.values())
    for service, methods in services.SERVICES.items():
        for method in methods:
            assert method.service == service
            assert method.path == f"/{service}/{method.name}"
            assert services.METHODS[method.path] is method
            for cls in (method.request, method.response):
                assert issubclass(cls, Message)
                assert cls is empty_pb2.Empty or cls.DESCRIPTOR.full_name.startswith("gateway.")
    assert services.PREDICTION_SERVICE == "tensorflow.serving.PredictionService"
    assert services.TF_PREDICT.path == "/tensorflow.serving.PredictionService/Predict"
    assert (services.TF_PREDICT.request, services.TF_PREDICT.response) == (
        tf_serving_pb2.PredictRequest,
        tf_serving_pb2.PredictResponse,
    )
    assert services.V2_MODEL_INFER.path == "/inference.GRPCInferenceService/ModelInfer"
    assert services.TS_OIP_MODEL_INFER.request is v2_pb2.ModelInferRequest


def test_method_table_agrees_with_the_proto_services() -> None:
    """Every service defined in gateway/protos/*.proto is in the table with the same methods and messages."""
    for file in reflection.GATEWAY_FILES:
        for service in file.services_by_name.values():
            table = services.SERVICES[protos.public_name(service.full_name)]
            assert [m.name for m in service.methods] == [m.name for m in table]
            for method, entry in zip(service.methods, table, strict=True):
                assert method.input_type is entry.request.DESCRIPTOR
                assert method.output_type is entry.response.DESCRIPTOR


# ----------------------------------------------------------------------------- names and Any


def test_public_and_private_names() -> None:
    cases = {
        "gateway.tf.TensorProto": "tensorflow.TensorProto",
        "gateway.tf.serving.PredictRequest": "tensorflow.serving.PredictRequest",
        "gateway.tf.error.Code": "tensorflow.error.Code",
        "gateway.v2.ModelInferRequest.InferInputTensor": "inference.ModelInferRequest.InferInputTensor",
        "gateway.torchserve.inference.PredictionsRequest": "org.pytorch.serve.grpc.inference.PredictionsRequest",
        "gateway.torchserve.management.ManagementResponse": "org.pytorch.serve.grpc.management.ManagementResponse",
        "gateway.rpc.Status": "google.rpc.Status",
        ".gateway.tf.DataType": ".tensorflow.DataType",
        "google.protobuf.Any": "google.protobuf.Any",
        "gateway.tfx.Other": "gateway.tfx.Other",
    }
    for private, public in cases.items():
        assert protos.public_name(private) == public
        if private != public:
            assert protos.private_name(public) == private


def test_pack_and_unpack_any_use_public_type_urls() -> None:
    signature_defs = tf_serving_pb2.SignatureDefMap()
    signature_defs.signature_def["serving_default"].method_name = "tensorflow/serving/predict"
    packed = protos.pack_any(signature_defs)
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    assert protos.type_url(tf_serving_pb2.SignatureDefMap) == packed.type_url
    assert protos.unpack_any(packed, tf_serving_pb2.SignatureDefMap) == signature_defs
    assert protos.unpack_any(packed, tf_framework_pb2.TensorProto) is None


# ----------------------------------------------------------------------------- reflection pool


def _pool_file_protos() -> list[descriptor_pb2.FileDescriptorProto]:
    pool = reflection.public_pool()
    out = []
    for file in reflection.GATEWAY_FILES:
        proto = descriptor_pb2.FileDescriptorProto()
        pool.FindFileByName(file.name).CopyToProto(proto)
        out.append(proto)
    return out


def test_reflection_pool_resolves_public_names() -> None:
    pool = reflection.public_pool()
    predict = pool.FindServiceByName("tensorflow.serving.PredictionService").methods_by_name["Predict"]
    assert predict.input_type.full_name == "tensorflow.serving.PredictRequest"
    assert predict.output_type.full_name == "tensorflow.serving.PredictResponse"
    inputs = predict.input_type.fields_by_name["inputs"].message_type.fields_by_name["value"]
    assert inputs.message_type.full_name == "tensorflow.TensorProto"
    assert inputs.message_type.fields_by_name["dtype"].enum_type.full_name == "tensorflow.DataType"
    infer = pool.FindServiceByName("inference.GRPCInferenceService").methods_by_name["ModelInfer"]
    assert infer.input_type.full_name == "inference.ModelInferRequest"
    contents = infer.input_type.fields_by_name["inputs"].message_type.fields_by_name["contents"]
    assert contents.message_type.full_name == "inference.InferTensorContents"
    status = pool.FindMessageTypeByName("tensorflow.serving.StatusProto").fields_by_name["error_code"]
    assert status.enum_type.full_name == "tensorflow.error.Code"
    metadata = pool.FindMessageTypeByName("tensorflow.serving.GetModelMetadataResponse")
    assert metadata.fields_by_name["metadata"].message_type.fields_by_name["value"].message_type.full_name == (
        "google.protobuf.Any"
    )
    ping = pool.FindServiceByName("org.pytorch.serve.grpc.inference.InferenceAPIsService").methods_by_name["Ping"]
    assert ping.input_type.full_name == "google.protobuf.Empty"
    assert pool.FindMessageTypeByName("google.rpc.Status").fields_by_name["details"].message_type.full_name == (
        "google.protobuf.Any"
    )
    with pytest.raises(KeyError):
        pool.FindMessageTypeByName("gateway.tf.TensorProto")


def test_reflection_pool_holds_no_private_name() -> None:
    for proto in _pool_file_protos():
        assert not proto.package.startswith("gateway")
        text = str(proto)
        assert ".gateway." not in text, proto.name


def test_reflection_pool_services_match_the_method_table() -> None:
    pool = reflection.public_pool()
    assert set(reflection.PUBLIC_SERVICES) == set(EXPECTED_METHODS) - {services.TORCHSERVE_OPEN_INFERENCE_SERVICE}
    for name in reflection.PUBLIC_SERVICES:
        service = pool.FindServiceByName(name)
        table = services.SERVICES[name]
        assert [m.name for m in service.methods] == [m.name for m in table]
        for method, entry in zip(service.methods, table, strict=True):
            assert method.input_type.full_name == protos.public_name(entry.request.DESCRIPTOR.full_name)
            assert method.output_type.full_name == protos.public_name(entry.response.DESCRIPTOR.full_name)


def test_reflection_pool_takes_extra_files_and_is_fresh_each_time() -> None:
    pool = reflection.public_pool(empty_pb2.DESCRIPTOR)
    assert pool.FindMessageTypeByName("google.protobuf.Empty").full_name == "google.protobuf.Empty"
    assert reflection.public_pool() is not reflection.public_pool()


def test_grpc_server_reflection_serves_public_names() -> None:
    grpc = pytest.importorskip("grpc")
    grpc_reflection = pytest.importorskip("grpc_reflection.v1alpha.reflection")
    from concurrent import futures

    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha import reflection_pb2
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    names = [services.PREDICTION_SERVICE, services.V2_INFERENCE_SERVICE, grpc_reflection.SERVICE_NAME]
    grpc_reflection.enable_server_reflection(names, server, pool=reflection.public_pool(reflection_pb2.DESCRIPTOR))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            assert set(database.get_services()) == set(names)
            client_pool = descriptor_pool.DescriptorPool(database)
            predict = client_pool.FindServiceByName(services.PREDICTION_SERVICE).methods_by_name["Predict"]
            assert predict.input_type.full_name == "tensorflow.serving.PredictRequest"
            tensor = client_pool.FindMessageTypeByName("tensorflow.TensorProto")
            assert tensor.fields_by_name["tensor_content"].number == 4
            infer = client_pool.FindServiceByName(services.V2_INFERENCE_SERVICE).methods_by_name["ModelInfer"]
            assert infer.output_type.full_name == "inference.ModelInferResponse"
            reflection_service = client_pool.FindServiceByName(grpc_reflection.SERVICE_NAME)
            assert "ServerReflectionInfo" in reflection_service.methods_by_name
    finally:
        server.stop(grace=None)
