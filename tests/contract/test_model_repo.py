"""Contract tests for the committed model artifacts in model_repo/ (no servers started).

(a) every TF SavedModel has the agreed serving_default signature and gives the agreed numbers;
(b) the TorchScript inside each mlp .mar agrees with the TF SavedModel of the same version;
(c) the .mar archives carry signature.json, the shared v2 handler and the right version strings;
(d) the v2 handler shipped in the archives answers and validates v2 requests (fake TorchServe context);
(e) the digits classifier: the held-out images are scikit-learn's, every model scores on them what
    digits/accuracy.json (and the README) say, the ONNX export matches its PyTorch source, and the handler reads
    the example PNGs (and other images) right.

The artifacts are rebuilt by `python model_repo/build.py` (`--check` verifies a rebuild is byte-identical;
tests/contract/test_digits_rebuild.py retrains the digits models and compares accuracies).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
import torch
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

with warnings.catch_warnings():
    # torchserve 0.12.0's ts/version.py leaks an open file at import (ResourceWarning -> error under pytest)
    warnings.simplefilter("ignore", ResourceWarning)
    from ts.utils.util import PredictionException

# torch 2.13 deprecates TorchScript (torch.jit.*) in favour of torch.export; TorchServe still needs it.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

REPO = Path(__file__).resolve().parents[2] / "model_repo"
TF_ROOT = REPO / "tfserving"
TS_ROOT = REPO / "torchserve"
HANDLER_SRC = REPO / "handlers" / "v2_handler.py"

SAMPLE4 = [[1.0, 2.0, 3.0, 4.0]]
SAMPLE3 = [[1.0, 2.0, 3.0]]
# mlp outputs for SAMPLE4 (TF float32); the gateway's tests may rely on the argmax (v1: 2, v2: 1).
MLP_EXPECTED = {
    1: [0.023942600935697556, 0.23793166875839233, 0.738125741481781],
    2: [0.03787184879183769, 0.9606519937515259, 0.0014761509373784065],
}

# name -> version list, {input: (dtype, shape)}, {output: (dtype, shape)}
TF_SIGNATURES: dict[str, tuple[list[int], dict[str, Any], dict[str, Any]]] = {
    "mlp": ([1, 2], {"x": (tf.float32, [None, 4])}, {"probabilities": (tf.float32, [None, 3])}),
    "affine": ([1, 2], {"x": (tf.float32, [None, 3])}, {"y": (tf.float32, [None, 3])}),
    "multi": (
        [1],
        {"a": (tf.float32, [None, 2]), "b": (tf.int64, [None, 2]), "s": (tf.string, [None])},
        {
            "total": (tf.float32, [None]),
            "b_doubled": (tf.int64, [None, 2]),
            "text": (tf.string, [None]),
            "positive": (tf.bool, [None]),
        },
    ),
    "digits": ([1, 2], {"x": (tf.float32, [None, 64])}, {"probabilities": (tf.float32, [None, 10])}),
}
DIGITS_SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    "image": {"input": "x", "size": [8, 8], "max_value": 16, "output": "probabilities",
              "labels": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]},
}
TORCH_SIGNATURES = {
    "mlp": {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
    },
    "scale": {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    },
    "digits": DIGITS_SIGNATURE,
    "digits_onnx": DIGITS_SIGNATURE,
}
MARS = [("mlp", 1), ("mlp", 2), ("scale", 1), ("scale", 2), ("digits", 1), ("digits", 2), ("digits_onnx", 1)]


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------

_loaded: dict[Path, Any] = {}


def serving_fn(name: str, version: int) -> Any:
    path = TF_ROOT / name / str(version)
    if path not in _loaded:
        _loaded[path] = tf.saved_model.load(str(path))
    return _loaded[path].signatures["serving_default"]


def tf_predict(name: str, version: int, **inputs: Any) -> dict[str, np.ndarray]:
    out = serving_fn(name, version)(**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def mar_read(name: str, version: int, member: str) -> bytes:
    with zipfile.ZipFile(TS_ROOT / f"{name}-{version}.mar") as z:
        return z.read(member)


def mar_manifest(name: str, version: int) -> dict[str, Any]:
    return json.loads(mar_read(name, version, "MAR-INF/MANIFEST.json"))


def torchscript(name: str, version: int) -> torch.jit.ScriptModule:
    data = mar_read(name, version, mar_manifest(name, version)["model"]["serializedFile"])
    return torch.jit.load(io.BytesIO(data), map_location="cpu")


# ----------------------------------------------------------------------------------------------------
# (a) TF SavedModels
# ----------------------------------------------------------------------------------------------------


def test_tfserving_tree_has_exactly_the_agreed_versions() -> None:
    for name, (versions, _, _) in TF_SIGNATURES.items():
        found = sorted(int(p.name) for p in (TF_ROOT / name).iterdir() if p.is_dir())
        assert found == versions, name
        for v in versions:
            assert (TF_ROOT / name / str(v) / "saved_model.pb").is_file()


@pytest.mark.parametrize(("name", "version"), [(n, v) for n, (vs, _, _) in TF_SIGNATURES.items() for v in vs])
def test_savedmodel_signature(name: str, version: int) -> None:
    _, inputs, outputs = TF_SIGNATURES[name]
    fn = serving_fn(name, version)
    args, kwargs = fn.structured_input_signature
    assert args == ()
    assert {k: (s.dtype, s.shape.as_list()) for k, s in kwargs.items()} == inputs
    assert {k: (s.dtype, s.shape.as_list()) for k, s in fn.structured_outputs.items()} == outputs


@pytest.mark.parametrize(("version", "bias"), [(1, 2.0), (2, 3.0)])
def test_affine_outputs(version: int, bias: float) -> None:
    y = tf_predict("affine", version, x=np.asarray(SAMPLE3, np.float32))["y"]
    assert y.dtype == np.float32
    assert y.tolist() == [[0.5 + bias, 1.0 + bias, 1.5 + bias]]
    if version == 1:
        assert y.tolist() == [[2.5, 3.0, 3.5]]


def test_multi_outputs() -> None:
    got = tf_predict(
        "multi",
        1,
        a=np.asarray([[1.5, 2.0], [-10.0, 0.5]], np.float32),
        b=np.asarray([[1, 2], [3, -4]], np.int64),
        s=np.asarray([b"hello", b"Mixed Case"]),
    )
    assert got["total"].dtype == np.float32 and got["total"].tolist() == [6.5, -10.5]
    assert got["b_doubled"].dtype == np.int64 and got["b_doubled"].tolist() == [[2, 4], [6, -8]]
    assert got["text"].tolist() == [b"HELLO", b"MIXED CASE"]
    assert got["positive"].dtype == np.bool_ and got["positive"].tolist() == [True, False]


@pytest.mark.parametrize("version", [1, 2])
def test_mlp_tf_outputs(version: int) -> None:
    p = tf_predict("mlp", version, x=np.asarray(SAMPLE4, np.float32))["probabilities"]
    assert p.shape == (1, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p[0], MLP_EXPECTED[version], rtol=0, atol=1e-6)
    assert abs(float(p.sum()) - 1.0) < 1e-5


def test_mlp_versions_disagree_on_sample() -> None:
    x = np.asarray(SAMPLE4, np.float32)
    v1 = tf_predict("mlp", 1, x=x)["probabilities"]
    v2 = tf_predict("mlp", 2, x=x)["probabilities"]
    assert int(np.argmax(v1)) == 2
    assert int(np.argmax(v2)) == 1


def test_models_config() -> None:
    config = text_format.Parse((TF_ROOT / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c for c in config.model_config_list.config}
    assert list(entries) == ["mlp", "affine", "multi", "digits"]
    for name, c in entries.items():
        assert c.base_path == f"/models/{name}"
        assert c.model_platform == "tensorflow"
    for name in ("mlp", "affine", "digits"):
        assert entries[name].model_version_policy.WhichOneof("policy_choice") == "all"
        # No TF Serving labels: the gateway's routes file owns labels, and TF Serving refuses labels on
        # versions that are not yet AVAILABLE at start-up (tensorflow/serving#1608).
        assert dict(entries[name].version_labels) == {}
    assert not entries["multi"].HasField("model_version_policy")
    assert dict(entries["multi"].version_labels) == {}


# ----------------------------------------------------------------------------------------------------
# (b) TorchScript vs TF
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_mlp_torch_matches_tf(version: int) -> None:
    rng = np.random.default_rng(7)
    x = np.concatenate([np.asarray(SAMPLE4, np.float32), rng.normal(0, 3, (15, 4)).astype(np.float32)])
    tf_p = tf_predict("mlp", version, x=x)["probabilities"]
    with torch.no_grad():
        torch_p = torchscript("mlp", version)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(torch_p, tf_p, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("version", "factor"), [(1, 2.0), (2, 3.0)])
def test_scale_torchscript(version: int, factor: float) -> None:
    with torch.no_grad():
        y = torchscript("scale", version)(torch.tensor(SAMPLE3)).tolist()
    assert y == [[factor * 1.0, factor * 2.0, factor * 3.0]]


# ----------------------------------------------------------------------------------------------------
# (c) archive contents
# ----------------------------------------------------------------------------------------------------


def test_torchserve_store_has_exactly_the_agreed_archives() -> None:
    assert sorted(p.name for p in TS_ROOT.glob("*.mar")) == sorted(f"{n}-{v}.mar" for n, v in MARS)


@pytest.mark.parametrize(("name", "version"), MARS)
def test_mar_contents(name: str, version: int) -> None:
    manifest = mar_manifest(name, version)
    model = manifest["model"]
    assert model["modelName"] == name
    assert model["modelVersion"] == str(version)
    assert model["handler"] == "v2_handler.py"
    with zipfile.ZipFile(TS_ROOT / f"{name}-{version}.mar") as z:
        names = set(z.namelist())
    assert {"MAR-INF/MANIFEST.json", "signature.json", "v2_handler.py", model["serializedFile"]} <= names
    assert json.loads(mar_read(name, version, "signature.json")) == TORCH_SIGNATURES[name]
    # the archive ships the current shared handler (rebuild with model_repo/build.py after editing it)
    assert mar_read(name, version, "v2_handler.py") == HANDLER_SRC.read_bytes()


# ----------------------------------------------------------------------------------------------------
# (d) the shipped v2 handler, driven like TorchServe drives it
# ----------------------------------------------------------------------------------------------------


class FakeContext:
    def __init__(self, model_dir: Path, model_name: str, manifest: dict[str, Any]) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 1}
        self.model_name = model_name
        self.manifest = manifest
        self.content_types: dict[int, str] = {}
        self.statuses: dict[int, tuple[int, str]] = {}

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)


_services: dict[tuple[str, int], tuple[Any, Path, dict[str, Any]]] = {}


def service(tmp_path_factory: pytest.TempPathFactory, name: str, version: int) -> tuple[Any, FakeContext]:
    """A V2Service built from the handler and files inside the .mar (as a TorchServe worker would),
    plus a fresh per-batch context."""
    key = (name, version)
    if key not in _services:
        model_dir = tmp_path_factory.mktemp(f"{name}-{version}")
        with zipfile.ZipFile(TS_ROOT / f"{name}-{version}.mar") as z:
            z.extractall(model_dir)
        spec = importlib.util.spec_from_file_location(f"v2_handler_{name}_{version}", model_dir / "v2_handler.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        manifest = mar_manifest(name, version)
        _services[key] = (module.V2Service(FakeContext(model_dir, name, manifest)), model_dir, manifest)
    svc, model_dir, manifest = _services[key]
    return svc, FakeContext(model_dir, name, manifest)


def v2_body(data: Any, shape: list[int], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}], **extra}


@pytest.mark.parametrize("version", [1, 2])
def test_handler_mlp_answers_v2(tmp_path_factory: pytest.TempPathFactory, version: int) -> None:
    svc, ctx = service(tmp_path_factory, "mlp", version)
    [raw] = svc.handle([{"body": v2_body(SAMPLE4, [1, 4], id="req-7")}], ctx)
    answer = json.loads(raw)
    assert ctx.content_types == {0: "application/json"}
    assert answer["model_name"] == "mlp"
    assert answer["model_version"] == str(version)
    assert answer["id"] == "req-7"
    [out] = answer["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "FP32", [1, 3])
    np.testing.assert_allclose(out["data"], MLP_EXPECTED[version], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("version", "factor"), [(1, 2.0), (2, 3.0)])
def test_handler_scale_body_encodings(tmp_path_factory: pytest.TempPathFactory, version: int, factor: float) -> None:
    svc, ctx = service(tmp_path_factory, "scale", version)
    body = v2_body([1, 2, 3, 4, 5, 6], [2, 3])
    text = json.dumps(body)
    rows = [{"body": body}, {"body": text.encode()}, {"data": bytearray(text.encode())}, {"body": text}]
    answers = [json.loads(raw) for raw in svc.handle(rows, ctx)]
    assert ctx.statuses == {}
    for answer in answers:
        assert answer["model_version"] == str(version)
        assert "id" not in answer
        assert answer["outputs"] == [
            {"name": "y", "datatype": "FP32", "shape": [2, 3], "data": [factor * i for i in range(1, 7)]}
        ]


def test_handler_nested_data_and_output_filter(tmp_path_factory: pytest.TempPathFactory) -> None:
    svc, ctx = service(tmp_path_factory, "mlp", 1)
    body = v2_body([SAMPLE4[0], [0, 0, 0, 0]], [2, 4], outputs=[{"name": "probabilities"}], parameters={})
    [raw] = svc.handle([{"body": body}], ctx)
    [out] = json.loads(raw)["outputs"]
    assert out["shape"] == [2, 3] and len(out["data"]) == 6


INVALID = [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    ({"id": "x"}, "no 'inputs'"),
    ({"inputs": {"x": 1}}, "'inputs' must be a list"),
    ({"inputs": []}, "missing input(s) ['x']"),
    ({"inputs": [{"name": "z", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, "unknown input 'z'"),
    ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, "datatype 'FP64'"),
    (v2_body([1, 2, 3], [1, 4]), "needs 4 elements but data has 3"),
    (v2_body([1, 2, 3, 4], [4]), "not compatible with the model's shape [-1, 4]"),
    (v2_body([1, 2, 3, 4, 5, 6], [1, 6]), "not compatible"),
    (v2_body([1, 2, 3, 4], [1, -4]), "non-negative integers"),
    (v2_body([1, "a", 3, 4], [1, 4]), "not valid for datatype FP32"),
    (v2_body([1, True, 3, 4], [1, 4]), "not valid for datatype FP32"),
    (v2_body([1, 2, 3, 4], [1, 4], outputs=[{"name": "logits"}]), "unknown output(s) ['logits']"),
    (v2_body([1, 2, 3, 4], [1, 4], id=5), "'id' must be a string"),
    ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]}, "missing 'data'"),
]


@pytest.mark.parametrize(("body", "message"), INVALID, ids=[m for _, m in INVALID])
def test_handler_rejects_with_400(tmp_path_factory: pytest.TempPathFactory, body: Any, message: str) -> None:
    svc, ctx = service(tmp_path_factory, "mlp", 1)
    with pytest.raises(PredictionException) as info:
        svc.handle([{"body": body}], ctx)
    assert info.value.error_code == 400
    assert message in info.value.message


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"inputs": "x", "n": ' + b"9" * 5000 + b"}"])
def test_handler_refuses_json_python_cannot_read_with_400(tmp_path_factory: pytest.TempPathFactory,
                                                          raw: bytes) -> None:
    """A regression: nesting deeper than the stack raised RecursionError, which TorchServe answers 5xx."""
    svc, ctx = service(tmp_path_factory, "mlp", 1)
    with pytest.raises(PredictionException) as info:
        svc.handle([{"body": raw}], ctx)
    assert info.value.error_code == 400 and "not valid JSON" in info.value.message


def test_handler_messages_are_utf8_whatever_the_request_holds(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A regression: an input named "\\ud800" put a lone surrogate in the message, TorchServe's worker could not
    encode it and died (every request after it failed until the worker was back)."""
    svc, ctx = service(tmp_path_factory, "mlp", 1)
    with pytest.raises(PredictionException) as info:
        svc.handle([{"body": b'{"inputs": [{"name": "\\ud800", "shape": [1], "datatype": "FP32", "data": [1]}]}'}],
                   ctx)
    assert info.value.error_code == 400
    assert "unknown input '\\ud800'" in info.value.message
    info.value.message.encode("utf-8")  # what TorchServe does with it
    [raw] = svc.handle([{"body": v2_body(SAMPLE4, [1, 4], id="ok")}, {"body": b'{"inputs": 1, "id": "\\udfff"}'}],
                       ctx)[1:]
    assert ctx.statuses == {1: (400, "Bad Request")}
    raw.decode("utf-8")


def test_handler_messages_quoting_a_long_name_are_short(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A regression: a 900 KB input name came back in a 900 KB error that TorchServe cut short (the gateway saw
    an incomplete answer: 502)."""
    svc, ctx = service(tmp_path_factory, "mlp", 1)
    with pytest.raises(PredictionException) as info:
        svc.handle([{"body": v2_body([1, 2, 3, 4], [1, 4]) | {"inputs": [
            {"name": "n" * 900_000, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}}], ctx)
    assert info.value.error_code == 400 and "unknown input 'nnn" in info.value.message
    assert len(info.value.message) < 1100


def test_handler_rejects_missing_body(tmp_path_factory: pytest.TempPathFactory) -> None:
    svc, ctx = service(tmp_path_factory, "mlp", 1)
    with pytest.raises(PredictionException, match="no body"):
        svc.handle([{"some_form_field": b"1"}], ctx)


def test_handler_batch_isolates_bad_requests(tmp_path_factory: pytest.TempPathFactory) -> None:
    svc, ctx = service(tmp_path_factory, "mlp", 2)
    good = {"body": v2_body(SAMPLE4, [1, 4], id="good")}
    bad = {"body": v2_body([1, 2, 3], [1, 4], id="bad")}
    answers = [json.loads(raw) for raw in svc.handle([good, bad, good], ctx)]
    assert ctx.statuses == {1: (400, "Bad Request")}
    assert ctx.content_types == {0: "application/json", 1: "application/json", 2: "application/json"}
    assert answers[1]["code"] == 400 and "needs 4 elements" in answers[1]["message"]
    for answer in (answers[0], answers[2]):
        assert answer["id"] == "good"
        np.testing.assert_allclose(answer["outputs"][0]["data"], MLP_EXPECTED[2], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# (e) the digits classifier
# ----------------------------------------------------------------------------------------------------

DIGITS_DIR = REPO / "digits"
EXAMPLES = REPO.parent / "examples" / "digits"
ACCURACY = json.loads((DIGITS_DIR / "accuracy.json").read_text())
HELDOUT = json.loads((DIGITS_DIR / "heldout.json").read_text())
HELDOUT_X = np.asarray(HELDOUT["images"], np.float32)
HELDOUT_Y = np.asarray(HELDOUT["labels"], np.int64)


def digits_probabilities(model: str, version: int, x: np.ndarray) -> np.ndarray:
    """Each artifact loaded the way its server loads it."""
    if model == "tfserving/digits":
        return tf_predict("digits", version, x=x)["probabilities"]
    name = model.split("/")[1]
    serialized = mar_manifest(name, version)["model"]["serializedFile"]
    if serialized.endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(mar_read(name, version, serialized), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]
    with torch.no_grad():
        return torchscript(name, version)(torch.from_numpy(x)).numpy()


def test_digits_heldout_images_are_scikit_learns_split() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = np.asarray(HELDOUT["indices"])
    assert index.tolist() == sorted(np.random.default_rng(2024).permutation(len(digits.data))[:360].tolist())
    np.testing.assert_array_equal(HELDOUT_X, digits.data[index])
    np.testing.assert_array_equal(HELDOUT_Y, digits.target[index])
    assert ACCURACY["heldout_images"] == len(HELDOUT_Y) == 360
    assert set(HELDOUT_Y.tolist()) == set(range(10))


@pytest.mark.parametrize("row", ACCURACY["models"], ids=[f"{r['model']}/{r['version']}" for r in ACCURACY["models"]])
def test_digits_accuracy_is_what_accuracy_json_says(row: dict[str, Any]) -> None:
    p = digits_probabilities(row["model"], row["version"], HELDOUT_X)
    assert p.shape == (360, 10) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    correct = int(np.sum(p.argmax(axis=1) == HELDOUT_Y))
    assert correct == row["correct"] and row["accuracy"] == round(correct / 360, 4)
    if row["version"] == 2 or "onnx" in row["model"]:
        assert row["accuracy"] >= 0.93


def test_digits_accuracy_json_lists_every_model_and_the_short_training_is_worse() -> None:
    rows = {(r["model"], r["version"]): r["accuracy"] for r in ACCURACY["models"]}
    assert set(rows) == {("tfserving/digits", 1), ("tfserving/digits", 2), ("torchserve/digits", 1),
                         ("torchserve/digits", 2), ("torchserve/digits_onnx", 1)}
    assert rows[("tfserving/digits", 1)] < rows[("tfserving/digits", 2)]
    assert rows[("torchserve/digits", 1)] < rows[("torchserve/digits", 2)]


def test_digits_onnx_export_matches_its_pytorch_source() -> None:
    torch_p = digits_probabilities("torchserve/digits", 2, HELDOUT_X)
    onnx_p = digits_probabilities("torchserve/digits_onnx", 1, HELDOUT_X)
    np.testing.assert_allclose(onnx_p, torch_p, rtol=0, atol=1e-5)
    assert np.array_equal(onnx_p.argmax(axis=1), torch_p.argmax(axis=1))
    # ... while TensorFlow and PyTorch, trained apart, disagree on a few images
    tf_p = digits_probabilities("tfserving/digits", 2, HELDOUT_X)
    agreement = float(np.mean(tf_p.argmax(axis=1) == torch_p.argmax(axis=1)))
    assert 0.9 <= agreement < 1.0
    assert ACCURACY["argmax_agreement"]["tfserving/digits/2 vs torchserve/digits/2"] == round(agreement, 4)


@pytest.mark.parametrize("readme", [REPO / "README.md", REPO.parent / "README.md"], ids=["model_repo", "root"])
def test_digits_readme_shows_the_accuracy_table(readme: Path) -> None:
    lines = readme.read_text().splitlines()
    for row in ACCURACY["models"]:
        figure = f"{row['correct']}/360 = {row['accuracy']:.4f}"
        assert any(f"`{row['model']}` v{row['version']}" in line and figure in line for line in lines), (
            f"{readme}: no table row for `{row['model']}` v{row['version']} with {figure}")


def png(pixels: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def image_answer(svc: Any, ctx: FakeContext, payload: bytes) -> dict[str, Any]:
    [raw] = svc.handle([{"body": bytearray(payload)}], ctx)
    assert ctx.content_types == {0: "application/json"}
    return json.loads(raw)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("name", "version"), [("digits", 2), ("digits_onnx", 1)])
def test_handler_reads_the_example_pngs(tmp_path_factory: pytest.TempPathFactory, name: str, version: int) -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.png")) == [f"{d}.png" for d in range(10)]
    for digit in range(10):
        svc, ctx = service(tmp_path_factory, name, version)
        answer = image_answer(svc, ctx, (EXAMPLES / f"{digit}.png").read_bytes())
        assert answer["model_name"] == name and answer["model_version"] == str(version)
        assert answer["label"] == str(digit), answer
        scores = list(answer["probabilities"].values())
        assert next(iter(answer["probabilities"])) == str(digit) and len(scores) == 3
        assert scores == sorted(scores, reverse=True) and 0.5 < scores[0] <= 1.0


def test_handler_image_matches_the_v2_answer_and_takes_other_images(tmp_path_factory: pytest.TempPathFactory) -> None:
    from PIL import Image

    def fresh() -> tuple[Any, FakeContext]:
        return service(tmp_path_factory, "digits", 2)

    small = np.asarray(Image.open(EXAMPLES / "7.png").resize((8, 8), Image.Resampling.BOX))
    # The 8x8 pixels as a v2 tensor (0..255 -> 0..16) give the image answer's probabilities.
    body = v2_body((small.astype(np.float32) * 16 / 255).reshape(1, 64).tolist(), [1, 64])
    [raw] = fresh()[0].handle([{"body": body}], fresh()[1])
    v2_scores = json.loads(raw)["outputs"][0]["data"]
    answer = image_answer(*fresh(), png(small))
    assert answer["label"] == "7" and int(np.argmax(v2_scores)) == 7
    assert answer["probabilities"]["7"] == pytest.approx(v2_scores[7], abs=1e-5)
    big = np.kron(small, np.ones((6, 6), np.uint8))
    for payload in (png(255 - big),             # dark ink on white paper, 48x48
                    png(big, mode="RGB"),       # colour
                    png(big, fmt="JPEG")):      # lossy
        assert image_answer(*fresh(), payload)["label"] == "7"


IMAGE_ERRORS = [
    ("digits", 2, b"\x89PNG\r\n\x1a\n" + b"not really a png", "not a readable one"),
    ("digits", 2, b"", "send an image file with Content-Type: image/png"),  # form-encoded: no body
    ("digits", 2, None, "at most 16777216 are accepted"),  # 5000 x 4000
    ("mlp", 1, None, "takes v2 JSON tensors, not images"),
]


@pytest.mark.parametrize(("name", "version", "payload", "message"), IMAGE_ERRORS, ids=[m for *_, m in IMAGE_ERRORS])
def test_handler_refuses_bad_images_with_400(tmp_path_factory: pytest.TempPathFactory, name: str, version: int,
                                             payload: bytes | None, message: str) -> None:
    svc, ctx = service(tmp_path_factory, name, version)
    if payload is None:
        size = (5000, 4000) if name == "digits" else (8, 8)
        payload = png(np.zeros(size[::-1], np.uint8))
    row = {"body": bytearray(payload)} if payload else {"some_form_field": b"1"}
    with pytest.raises(PredictionException) as info:
        svc.handle([row], ctx)
    assert info.value.error_code == 400
    assert message in info.value.message
