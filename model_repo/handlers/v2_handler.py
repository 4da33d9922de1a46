"""TorchServe handler speaking the Open Inference Protocol v2 (KServe v2) JSON format, and images for image models.

One handler is shared by every TorchServe model in model_repo. Each archive carries

* the model (the archive's ``serializedFile``): a TorchScript file whose ``forward`` takes the inputs
  positionally, in the order of ``signature.json``'s ``inputs``, and returns a tensor (single output), a
  tuple/list (outputs in ``signature.json`` order) or a dict keyed by output name; or an ONNX file
  (``*.onnx``) with inputs and outputs named as in ``signature.json``, run by ONNX Runtime (CPU);
* ``signature.json``: ``{"inputs": [{"name", "datatype", "shape"}], "outputs": [...], "image"?: {...}}``
  where a ``-1`` dimension is free.

Request body::

    {"id"?: str, "parameters"?: {...},
     "inputs": [{"name": str, "shape": [int], "datatype": "FP32", "data": flat or nested list}],
     "outputs"?: [{"name": str}]}

Response body (``application/json``)::

    {"model_name": str, "model_version": str, "id"?: str,
     "outputs": [{"name": str, "datatype": str, "shape": [int], "data": flat row-major list}]}

Image models: when ``signature.json`` has ``"image": {"input", "size": [height, width], "max_value", "output",
"labels"}``, a body that is an image file (PNG, JPEG, GIF, BMP or WebP, recognised by its first bytes; send it
with ``Content-Type: image/png`` or another non-form type) is decoded with Pillow: grayscale, resized to
``size`` (box filter) when it is not that size, inverted when mostly light (the training images are light
strokes on a dark background), scaled from 0..255 to 0..``max_value``, and fed to ``input`` as one row. The
answer names the most likely label and the top three::

    {"model_name": str, "model_version": str, "label": "7", "probabilities": {"7": 0.98, "9": 0.01, "3": 0.004}}

A bad request raises ``PredictionException(message, 400)``; TorchServe then answers HTTP 400 with
``{"code": 400, "type": "InternalServerException", "message": message}`` (pretty-printed, with
``connection: close``). TorchServe fails a whole batch on an exception, so when
it hands over more than one request, an invalid one gets its own 400 status and a body of the same shape
while the valid ones in the batch still get their 200 answers.

It runs on TorchServe's Python, which is 3.9 in the official 0.12.0 images that docker compose and the Helm chart
build on (deploy/torchserve/Dockerfile): nothing newer than Python 3.9 here (ruff's target for this file;
tests/deploy/test_torchserve_image.py checks with vermin).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from ts.utils.util import PredictionException

logger = logging.getLogger(__name__)

SIGNATURE_FILE = "signature.json"

# v2 datatype -> numpy dtype. BYTES is accepted in signatures but cannot reach a torch model.
_NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_FLOAT_TYPES = {"FP16", "FP32", "FP64"}
# First bytes of the image files an image model accepts (JSON bodies never start like this).
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
_MAX_IMAGE_PIXELS = 4096 * 4096  # larger images are refused before they are decoded
_TOP_K = 3
_INT_TYPES = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}


class BadRequest(Exception):
    """A client error in one request of a batch (becomes HTTP 400)."""


def _flatten(value: Any, out: list[Any]) -> None:
    if isinstance(value, list):
        for item in value:
            _flatten(item, out)
    else:
        out.append(value)


def _check_elements(name: str, datatype: str, flat: list[Any]) -> None:
    """Reject elements whose JSON type does not fit the datatype (numpy would coerce silently)."""
    for item in flat:
        if datatype in _FLOAT_TYPES:
            ok = isinstance(item, (int, float)) and not isinstance(item, bool)
        elif datatype in _INT_TYPES:
            ok = isinstance(item, int) and not isinstance(item, bool)
        elif datatype == "BOOL":
            ok = isinstance(item, bool)
        else:
            ok = False
        if not ok:
            raise BadRequest(
                f"input '{name}': element {item!r} ({type(item).__name__}) is not valid for datatype {datatype}"
            )


def _is_image(payload: bytes) -> bool:
    return payload.startswith(_IMAGE_MAGIC) or (payload[:4] == b"RIFF" and payload[8:12] == b"WEBP")


Runner = Callable[[list[np.ndarray]], list[np.ndarray]]  # inputs in signature order -> outputs in signature order


def _torchscript_runner(path: str, output_names: list[str]) -> Runner:
    model = torch.jit.load(path, map_location="cpu")
    model.eval()

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            result = model(*[torch.from_numpy(a) for a in arrays])
        if isinstance(result, torch.Tensor):
            result = [result]
        if isinstance(result, dict):
            result = [result[name] for name in output_names]
        return [t.detach().cpu().numpy() for t in result]

    return run


def _onnx_runner(path: str, input_names: list[str], output_names: list[str]) -> Runner:
    import onnxruntime  # only ONNX archives need it

    options = onnxruntime.SessionOptions()
    # Tiny models on a shared CPU: one thread, and no pool spinning on every core between requests.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return list(session.run(output_names, dict(zip(input_names, arrays))))  # one array per input name

    return run


class V2Service:
    """Loads the model (TorchScript or ONNX) + signature.json and serves v2 requests (and images)."""

    def __init__(self, context: Any) -> None:
        props = context.system_properties
        model_dir = props.get("model_dir")
        manifest = context.manifest or {}
        model_info = manifest.get("model", {})
        serialized = model_info.get("serializedFile")
        if not serialized:
            raise RuntimeError("the model archive has no serializedFile (a TorchScript file is required)")
        with open(os.path.join(model_dir, SIGNATURE_FILE), encoding="utf-8") as f:
            self.signature: dict[str, Any] = json.load(f)
        self.model_name: str = context.model_name
        self.model_version: str = str(model_info.get("modelVersion", ""))
        self.inputs: list[dict[str, Any]] = self.signature["inputs"]
        self.outputs: list[dict[str, Any]] = self.signature["outputs"]
        self.input_names = [spec["name"] for spec in self.inputs]
        self.output_names = [spec["name"] for spec in self.outputs]
        self.image: dict[str, Any] | None = self.signature.get("image")
        path = os.path.join(model_dir, serialized)
        if serialized.endswith(".onnx"):
            self.run_model = _onnx_runner(path, self.input_names, self.output_names)
        else:
            self.run_model = _torchscript_runner(path, self.output_names)
        logger.info(
            "v2_handler loaded model %s version %s (%s): inputs %s outputs %s",
            self.model_name,
            self.model_version,
            serialized,
            self.input_names,
            self.output_names,
        )

    # -- request parsing -------------------------------------------------------------------------------

    @staticmethod
    def _payload(row: Any) -> Any:
        body = row.get("body") if isinstance(row, dict) else None
        if body is None and isinstance(row, dict):
            body = row.get("data")
        return bytes(body) if isinstance(body, bytearray) else body

    @staticmethod
    def _body(body: Any) -> dict[str, Any]:
        if isinstance(body, bytes):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadRequest("request body is not valid UTF-8") from exc
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python's stack
                raise BadRequest(f"request body is not valid JSON: {exc}") from exc
        if body is None:
            raise BadRequest(
                "request has no body; send the v2 JSON object as the request body with"
                " Content-Type: application/json (form-encoded bodies are not accepted)"
            )
        if not isinstance(body, dict):
            raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
        return body

    def _parse_input(self, spec: dict[str, Any], tensor: dict[str, Any]) -> np.ndarray:
        name = spec["name"]
        datatype = tensor.get("datatype")
        if datatype != spec["datatype"]:
            raise BadRequest(f"input '{name}': datatype {datatype!r} does not match the model's {spec['datatype']!r}")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise BadRequest(f"input '{name}': shape must be a list of non-negative integers, got {shape!r}")
        want = spec["shape"]
        if len(shape) != len(want) or any(w != -1 and w != d for d, w in zip(shape, want)):
            raise BadRequest(f"input '{name}': shape {shape} is not compatible with the model's shape {want}")
        if "data" not in tensor:
            raise BadRequest(f"input '{name}': missing 'data'")
        flat: list[Any] = []
        _flatten(tensor["data"], flat)
        count = math.prod(shape)
        if len(flat) != count:
            raise BadRequest(f"input '{name}': shape {shape} needs {count} elements but data has {len(flat)}")
        _check_elements(name, datatype, flat)
        try:
            return np.asarray(flat, dtype=_NUMPY_DTYPES[datatype]).reshape(shape)
        except (OverflowError, ValueError, TypeError) as exc:
            raise BadRequest(f"input '{name}': data does not fit datatype {datatype}: {exc}") from exc

    def _parse(self, body: dict[str, Any]) -> tuple[list[np.ndarray], list[str]]:
        if "id" in body and not isinstance(body["id"], str):
            raise BadRequest("'id' must be a string")
        if "parameters" in body and not isinstance(body["parameters"], dict):
            raise BadRequest("'parameters' must be an object")
        inputs = body.get("inputs")
        if inputs is None:
            raise BadRequest("request has no 'inputs'")
        if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
            raise BadRequest("'inputs' must be a list of tensor objects")
        by_name: dict[str, dict[str, Any]] = {}
        for tensor in inputs:
            name = tensor.get("name")
            if not isinstance(name, str):
                raise BadRequest("every input needs a string 'name'")
            if name not in self.input_names:
                raise BadRequest(f"unknown input '{name}'; the model's inputs are {self.input_names}")
            if name in by_name:
                raise BadRequest(f"input '{name}' is given more than once")
            by_name[name] = tensor
        missing = [n for n in self.input_names if n not in by_name]
        if missing:
            raise BadRequest(f"missing input(s) {missing}; the model's inputs are {self.input_names}")
        arrays = [self._parse_input(spec, by_name[spec["name"]]) for spec in self.inputs]

        wanted = self.output_names
        requested = body.get("outputs")
        if requested is not None:
            if not isinstance(requested, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
            ):
                raise BadRequest("'outputs' must be a list of objects with a string 'name'")
            names = [o["name"] for o in requested]
            unknown = [n for n in names if n not in self.output_names]
            if unknown:
                raise BadRequest(f"unknown output(s) {unknown}; the model's outputs are {self.output_names}")
            if names:
                wanted = [n for n in self.output_names if n in names]
        return arrays, wanted

    # -- inference -------------------------------------------------------------------------------------

    def _run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        results = self.run_model(arrays)
        if len(results) != len(self.output_names):
            raise ValueError(f"the model returned {len(results)} outputs, its signature names {self.output_names}")
        return dict(zip(self.output_names, results))

    # -- images ----------------------------------------------------------------------------------------

    def _decode_image(self, payload: bytes, image: dict[str, Any]) -> np.ndarray:
        from PIL import Image  # only image models need Pillow

        height, width = image["size"]
        try:
            with Image.open(io.BytesIO(payload)) as img:  # reads the header only, not the pixels
                pixels_in = img.width * img.height
                gray = img.convert("L") if pixels_in <= _MAX_IMAGE_PIXELS else None
        except Exception as exc:  # Pillow raises many types for a corrupt file (OSError, SyntaxError, ...)
            kind = type(exc).__name__
            raise BadRequest(f"the body starts like an image file but is not a readable one ({kind})") from exc
        if gray is None:
            raise BadRequest(f"the image has {pixels_in} pixels; at most {_MAX_IMAGE_PIXELS} are accepted")
        if gray.size != (width, height):
            gray = gray.resize((width, height), Image.Resampling.BOX)
        pixels = np.asarray(gray, dtype=np.float32)
        if pixels.mean() > 127.5:  # dark strokes on light paper: the model was trained on the opposite
            pixels = 255.0 - pixels
        spec = next(s for s in self.inputs if s["name"] == image["input"])
        return (pixels * (float(image["max_value"]) / 255.0)).reshape([1, *spec["shape"][1:]])

    def _image_answer(self, payload: bytes) -> bytes:
        image = self.image
        if image is None:
            raise BadRequest("this model takes v2 JSON tensors, not images")
        results = self._run([self._decode_image(payload, image)])
        scores = results[image["output"]].reshape(-1)
        labels: list[str] = image["labels"]
        top = np.argsort(-scores, kind="stable")[:_TOP_K]
        response = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "label": labels[int(top[0])],
            "probabilities": {labels[int(i)]: round(float(scores[i]), 6) for i in top},
        }
        return json.dumps(response).encode("utf-8")

    def _response(self, body: dict[str, Any], wanted: list[str], results: dict[str, np.ndarray]) -> bytes:
        specs = {spec["name"]: spec for spec in self.outputs}
        response: dict[str, Any] = {"model_name": self.model_name, "model_version": self.model_version}
        if "id" in body:
            response["id"] = body["id"]
        response["outputs"] = [
            {
                "name": name,
                "datatype": specs[name]["datatype"],
                "shape": list(results[name].shape),
                "data": results[name].reshape(-1).tolist(),
            }
            for name in wanted
        ]
        return json.dumps(response, separators=(",", ":")).encode("utf-8")

    def handle(self, data: list[Any], context: Any) -> list[bytes]:
        answers: list[bytes] = []
        for idx, row in enumerate(data):
            context.set_response_content_type(idx, "application/json")
            try:
                payload = self._payload(row)
                if payload is None and self.image is not None:
                    raise BadRequest(
                        "request has no body; send an image file with Content-Type: image/png (or image/jpeg...),"
                        " or the v2 JSON object with Content-Type: application/json (form-encoded bodies, curl's"
                        " default for --data-binary, are not accepted)")
                if isinstance(payload, bytes) and _is_image(payload):
                    answers.append(self._image_answer(payload))
                    continue
                body = self._body(payload)
                arrays, wanted = self._parse(body)
            except BadRequest as exc:
                message = _printable(str(exc))
                if len(data) == 1:
                    raise PredictionException(message, 400) from exc
                # Only this request of the batch is bad: answer it alone with 400.
                context.set_response_status(400, "Bad Request", idx)
                # Same body as TorchServe's own answer to PredictionException(message, 400).
                error = {"code": 400, "type": "InternalServerException", "message": message}
                answers.append(json.dumps(error, indent=2).encode("utf-8"))
                continue
            answers.append(self._response(body, wanted, self._run(arrays)))
        return answers


MAX_MESSAGE_CHARS = 1024


def _printable(message: str) -> str:
    """An error message TorchServe can send whole. It encodes the message as UTF-8: a lone surrogate the client
    sent (JSON "\\ud800") would kill the worker, so such characters go out escaped. And it cuts an error body
    of some 100 KB short (it closes the connection before the body is out), so a message quoting a long name
    the client sent is shortened."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + f"... ({len(message)} characters)"
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


_service: V2Service | None = None


def handle(data: list[Any] | None, context: Any) -> list[bytes] | None:
    """TorchServe entry point: called with data=None once to initialize, then with each batch."""
    global _service
    if _service is None:
        _service = V2Service(context)
    if data is None:
        return None
    return _service.handle(data, context)
