"""One loaded model version: a TF1 session over the SavedModel, as TF Serving's SavedModelBundle.

TF Serving loads a SavedModel into a ``tensorflow::Session`` and runs the signature's tensor names
through ``Session::Run``. Doing the same here (rather than calling the restored tf.function) keeps
its semantics: feeds are not shape-checked against the signature, dtype mismatches and op errors
come from the TensorFlow runtime with its own messages and error codes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from tfserving_standin import dtypes, metrics, tensors
from tfserving_standin.status import Code, ServingError, from_exception, invalid_argument, unimplemented

log = logging.getLogger("tfserving_standin")

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


class RuntimeSettings:
    """Process-wide switches that mirror server flags."""

    method_name_check = False
    tensor_content = False


class Servable:
    def __init__(
        self,
        name: str,
        version: int,
        path: str,
        graph: object,
        session: object,
        meta_graph_def: meta_graph_pb2.MetaGraphDef,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self._graph = graph
        self._session = session
        self.meta_graph_def = meta_graph_def
        self.signatures: dict[str, meta_graph_pb2.SignatureDef] = dict(meta_graph_def.signature_def)
        self._callables: dict[tuple, object] = {}
        self._lock = threading.Lock()
        self._refs = 0
        self._closed = False
        self._idle = threading.Condition(self._lock)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def load(
        cls,
        name: str,
        version: int,
        path: str,
        tags: Sequence[str],
        session_config: config_pb2.ConfigProto | None = None,
    ) -> Servable:
        import tensorflow as tf

        if not os.path.exists(os.path.join(path, "saved_model.pb")) and not os.path.exists(
            os.path.join(path, "saved_model.pbtxt")
        ):
            raise ServingError(
                Code.NOT_FOUND,
                f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}. "
                "Check that the directory exists and that you have the right permissions for accessing it.",
            )
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph, config=session_config)
        try:
            with graph.as_default():
                # The undecorated loader behind tf.compat.v1.saved_model.loader.load (no deprecation log).
                from tensorflow.python.saved_model import loader_impl

                meta_graph_def = loader_impl.SavedModelLoader(path).load(session, list(tags))
        except RuntimeError as exc:
            session.close()
            if "could not be found in SavedModel" in str(exc):
                raise ServingError(
                    Code.NOT_FOUND,
                    f"Could not find meta graph def matching supplied tags: {{ {' '.join(tags)} }}. "
                    "To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: "
                    "`saved_model_cli`",
                ) from None
            raise from_exception(exc) from None
        except Exception as exc:
            session.close()
            raise from_exception(exc) from None
        return cls(name, version, path, graph, session, meta_graph_def)

    @contextlib.contextmanager
    def use(self) -> Iterator[Servable]:
        with self._lock:
            self._refs += 1
        try:
            yield self
        finally:
            with self._lock:
                self._refs -= 1
                if self._refs == 0:
                    self._idle.notify_all()

    def acquire(self) -> None:
        with self._lock:
            self._refs += 1

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            if self._refs == 0:
                self._idle.notify_all()

    def close(self) -> None:
        """Waits for in-flight requests (they hold handles, as in TF Serving) and frees the session."""
        with self._lock:
            while self._refs > 0:
                self._idle.wait()
            self._closed = True
            self._callables.clear()
        self._session.close()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ execution

    def run(self, feeds: Sequence[tuple[str, np.ndarray]], fetches: Sequence[str]) -> list[np.ndarray]:
        key = (tuple(name for name, _ in feeds), tuple(fetches))
        with self._lock:
            if self._closed:
                raise ServingError(Code.UNAVAILABLE, "Session has been closed.")
            runner = self._callables.get(key)
        if runner is None:
            options = config_pb2.CallableOptions(feed=list(key[0]), fetch=list(key[1]))
            try:
                runner = self._session._make_callable_from_options(options)  # type: ignore[attr-defined]
            except Exception as exc:
                raise from_exception(exc) from None
            with self._lock:
                if len(self._callables) > 128:
                    self._callables.clear()
                self._callables[key] = runner
        try:
            return list(runner(*[value for _, value in feeds]))  # type: ignore[operator]
        except Exception as exc:
            raise from_exception(exc) from None


# ---------------------------------------------------------------------- predict


def _sorted_keys(mapping: Mapping[str, object]) -> list[str]:
    return sorted(mapping)


def _verify_predict_signature(signature: meta_graph_pb2.SignatureDef) -> None:
    if RuntimeSettings.method_name_check and signature.method_name not in (
        PREDICT_METHOD,
        CLASSIFY_METHOD,
        REGRESS_METHOD,
    ):
        raise ServingError(
            Code.INTERNAL,
            f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, {CLASSIFY_METHOD}, "
            f"{REGRESS_METHOD}}}. Was: {signature.method_name}",
        )


def predict(
    servable: Servable,
    signature_name: str,
    inputs: Mapping[str, object],
    output_filter: Sequence[str] = (),
) -> tuple[str, dict[str, tuple[np.ndarray, int]]]:
    """predict_util.cc RunPredict. ``inputs`` values are TensorProtos or ndarrays.

    Returns the signature name used and alias -> (array, DataType).
    """
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None:
        raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
    _verify_predict_signature(signature)

    request_names = set(inputs)
    signature_names = set(signature.inputs)
    if len(inputs) > len(signature.inputs) or (len(inputs) < len(signature.inputs) and not signature.defaults):
        extra = sorted(request_names - signature_names)
        missing = sorted(signature_names - request_names)
        raise invalid_argument(
            f"input size does not match signature: {len(inputs)}!={len(signature.inputs)} "
            f"len({{{','.join(sorted(request_names))}}}) != len({{{','.join(sorted(signature_names))}}}). "
            f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}."
        )

    feeds: list[tuple[str, np.ndarray]] = []
    seen: set[str] = set()
    for alias in _sorted_keys(signature.inputs):
        info = signature.inputs[alias]
        if alias in inputs:
            value = inputs[alias]
            seen.add(alias)
        elif alias in signature.defaults:
            value = signature.defaults[alias]
        else:
            raise invalid_argument(
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request and no default "
                f"value provided. Inputs expected to be in the request {{{','.join(sorted(request_names))}}}, "
                f"or default input alias set: {','.join(sorted(signature.defaults))}"
            )
        array = value if isinstance(value, np.ndarray) else tensors.to_ndarray(value, alias)  # type: ignore[arg-type]
        feeds.append((info.name, array))
    if inputs and len(seen) != len(inputs):
        raise invalid_argument(
            f"Inputs contains invalid name. Used request inputs: {','.join(sorted(seen))}, "
            f"request input: {','.join(sorted(request_names))}"
        )

    aliases: list[str] = []
    fetches: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(signature.outputs))}}}."
            )
        if alias in aliases:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
        fetches.append(signature.outputs[alias].name)
    if not fetches:
        for alias in _sorted_keys(signature.outputs):
            aliases.append(alias)
            fetches.append(signature.outputs[alias].name)

    start = time.perf_counter()
    results = servable.run(feeds, fetches)
    metrics.record_runtime_latency(servable.name, "Predict", "TF1", (time.perf_counter() - start) * 1e6)
    if len(results) != len(aliases):
        raise ServingError(Code.UNKNOWN, "Predict internal error")
    outputs: dict[str, tuple[np.ndarray, int]] = {}
    for alias, result in zip(aliases, results, strict=True):
        array = np.asarray(result)
        outputs[alias] = (array, _dtype_of(array, signature.outputs[alias].dtype))
    return name, outputs


def _dtype_of(array: np.ndarray, fallback: int) -> int:
    if array.dtype == object or array.dtype.kind in "SU":
        return types_pb2.DT_STRING
    try:
        return dtypes.from_numpy(array)
    except TypeError:
        return fallback


def model_spec(name: str, signature_name: str | None, version: int | None) -> model_pb2.ModelSpec:
    """util.cc MakeModelSpec."""
    spec = model_pb2.ModelSpec(name=name)
    if signature_name is not None:
        spec.signature_name = signature_name or DEFAULT_SIGNATURE
    if version is not None:
        spec.version.value = version
    return spec


def predict_response(
    request_name: str, servable: Servable, signature_name: str, outputs: Mapping[str, tuple[np.ndarray, int]]
) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(model_spec(request_name, signature_name, servable.version))
    for alias, (array, dtype) in outputs.items():
        response.outputs[alias].CopyFrom(tensors.to_proto(array, dtype, RuntimeSettings.tensor_content))
    return response


# ---------------------------------------------------------------------- classify / regress


def _signature_for(servable: Servable, model_spec_: model_pb2.ModelSpec) -> meta_graph_pb2.SignatureDef:
    name = model_spec_.signature_name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    return signature


def _signature_text(signature: meta_graph_pb2.SignatureDef) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(signature)


def preprocess_classification(signature: meta_graph_pb2.SignatureDef) -> tuple[str, list[str]]:
    """classifier.cc PreProcessClassification."""
    if RuntimeSettings.method_name_check and signature.method_name != CLASSIFY_METHOD:
        raise invalid_argument(
            f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "inputs" not in signature.inputs:
        raise invalid_argument(f"No classification inputs found in SignatureDef: {_signature_text(signature)}")
    if "classes" not in signature.outputs and "scores" not in signature.outputs:
        raise invalid_argument(
            'Expected classification signature outputs to contain at least one of "classes" or "scores". '
            f"Signature was: {_signature_text(signature)}"
        )
    outputs = [signature.outputs[key].name for key in ("classes", "scores") if key in signature.outputs]
    return signature.inputs["inputs"].name, outputs


def preprocess_regression(signature: meta_graph_pb2.SignatureDef) -> tuple[str, list[str]]:
    """regressor.cc PreProcessRegression."""
    if RuntimeSettings.method_name_check and signature.method_name != REGRESS_METHOD:
        raise invalid_argument(
            f"Expected regression signature method_name to be {REGRESS_METHOD}. Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {_signature_text(signature)}")
    if "outputs" not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {_signature_text(signature)}")
    return signature.inputs["inputs"].name, [signature.outputs["outputs"].name]


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """util.cc InputToSerializedExampleTensor."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        values = [example.SerializeToString() for example in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        context = request_input.example_list_with_context.context.SerializeToString()
        values = [context + ex.SerializeToString() for ex in request_input.example_list_with_context.examples]
    else:
        values = []
    if not values:
        raise invalid_argument("Input is empty.")
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _shape_debug(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def _classification_result(
    signature: meta_graph_pb2.SignatureDef, num_examples: int, names: list[str], arrays: list[np.ndarray]
) -> classification_pb2.ClassificationResult:
    """classifier.cc PostProcessClassificationResult."""
    if len(arrays) != len(names):
        raise invalid_argument(f"Expected {len(names)} output tensor(s).  Got: {len(arrays)}")
    classes_name = signature.outputs["classes"].name if "classes" in signature.outputs else None
    scores_name = signature.outputs["scores"].name if "scores" in signature.outputs else None
    classes = scores = None
    for name, array in zip(names, arrays, strict=True):
        if name == classes_name:
            classes = np.asarray(array)
        elif name == scores_name:
            scores = np.asarray(array)
    for label, tensor, expected in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {_shape_debug(tensor)}")
        actual = types_pb2.DataType.Name(_dtype_of(tensor, types_pb2.DT_INVALID))
        if actual != expected:
            raise invalid_argument(f"Expected {label} Tensor of {expected}. Got: {actual}")
        if tensor.shape[0] != num_examples:
            raise invalid_argument(f"Expected {label} output batch size of {num_examples}. Got: {tensor.shape[0]}")
    num_classes = 0
    if classes is not None and scores is not None:
        if classes.shape[1] != scores.shape[1]:
            raise invalid_argument(
                f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
            )
        num_classes = classes.shape[1]
    elif classes is not None:
        num_classes = classes.shape[1]
    elif scores is not None:
        num_classes = scores.shape[1]
    result = classification_pb2.ClassificationResult()
    for i in range(num_examples):
        entry = result.classifications.add()
        for c in range(num_classes):
            cls = entry.classes.add()
            if classes is not None:
                label = classes[i, c]
                cls.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                cls.score = float(scores[i, c])
    return result


def _regression_result(
    signature: meta_graph_pb2.SignatureDef, num_examples: int, names: list[str], arrays: list[np.ndarray]
) -> regression_pb2.RegressionResult:
    """regressor.cc PostProcessRegressionResult."""
    if len(arrays) != len(names):
        raise invalid_argument("Expected output_tensors and output_tensor_names to have the same size.")
    if "outputs" not in signature.outputs:
        raise ServingError(
            Code.FAILED_PRECONDITION, f"No regression outputs found in SignatureDef: {_signature_text(signature)}"
        )
    output_name = signature.outputs["outputs"].name
    output = None
    for name, array in zip(names, arrays, strict=True):
        if name == output_name:
            output = np.asarray(array)
            break
    if output is None:
        raise invalid_argument(f"Could not find output tensor '{output_name}'")
    if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        raise invalid_argument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape_debug(output)}"
        )
    if num_examples != output.shape[0]:
        raise invalid_argument(
            f"Input batch size did not match output batch size: {num_examples} vs. {output.shape[0]}"
        )
    actual = types_pb2.DataType.Name(_dtype_of(output, types_pb2.DT_INVALID))
    if actual != "DT_FLOAT":
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {actual}")
    result = regression_pb2.RegressionResult()
    for value in output.reshape(-1):
        result.regressions.add(value=float(value))
    return result


def _classify_signature(servable: Servable, spec: model_pb2.ModelSpec) -> meta_graph_pb2.SignatureDef:
    """classifier.cc GetClassificationSignatureDef."""
    signature = _signature_for(servable, spec)
    if RuntimeSettings.method_name_check:
        if signature.method_name != CLASSIFY_METHOD:
            raise invalid_argument(
                f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: {signature.method_name}"
            )
    else:
        preprocess_classification(signature)
    return signature


def _regress_signature(servable: Servable, spec: model_pb2.ModelSpec) -> meta_graph_pb2.SignatureDef:
    """regressor.cc GetRegressionSignatureDef."""
    signature = _signature_for(servable, spec)
    if RuntimeSettings.method_name_check:
        if signature.method_name != REGRESS_METHOD:
            raise invalid_argument(
                f"Expected regression signature method_name to be {REGRESS_METHOD}. Was: {signature.method_name}"
            )
    else:
        preprocess_regression(signature)
    return signature


def classify(
    servable: Servable, request: classification_pb2.ClassificationRequest
) -> classification_pb2.ClassificationResponse:
    signature = _classify_signature(servable, request.model_spec)
    input_name, output_names = preprocess_classification(signature)
    examples = serialized_examples(request.input)
    start = time.perf_counter()
    arrays = servable.run([(input_name, examples)], output_names)
    metrics.record_runtime_latency(servable.name, "Classify", "TF1", (time.perf_counter() - start) * 1e6)
    response = classification_pb2.ClassificationResponse()
    response.model_spec.CopyFrom(
        model_spec(request.model_spec.name, request.model_spec.signature_name, servable.version)
    )
    response.result.CopyFrom(_classification_result(signature, len(examples), output_names, arrays))
    return response


def regress(servable: Servable, request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
    signature = _regress_signature(servable, request.model_spec)
    input_name, output_names = preprocess_regression(signature)
    examples = serialized_examples(request.input)
    start = time.perf_counter()
    arrays = servable.run([(input_name, examples)], output_names)
    metrics.record_runtime_latency(servable.name, "Regress", "TF1", (time.perf_counter() - start) * 1e6)
    response = regression_pb2.RegressionResponse()
    response.model_spec.CopyFrom(
        model_spec(request.model_spec.name, request.model_spec.signature_name, servable.version)
    )
    response.result.CopyFrom(_regression_result(signature, len(examples), output_names, arrays))
    return response


def multi_inference(
    servable: Servable, request: inference_pb2.MultiInferenceRequest
) -> inference_pb2.MultiInferenceResponse:
    """multi_inference.cc TensorFlowMultiInferenceRunner::Infer."""
    model_name = ""
    seen_signatures: set[str] = set()
    input_names: set[str] = set()
    output_names: set[str] = set()
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = task.model_spec.name
        elif model_name != task.model_spec.name:
            raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature_name in seen_signatures:
            raise invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
        seen_signatures.add(signature_name)
        signature = servable.signatures.get(signature_name)
        if signature is None:
            raise invalid_argument(f"Requested signature not found in model graph: {signature_name}")
        if task.method_name == CLASSIFY_METHOD:
            input_name, names = preprocess_classification(signature)
        elif task.method_name == REGRESS_METHOD:
            input_name, names = preprocess_regression(signature)
        else:
            raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
        input_names.add(input_name)
        output_names.update(names)
    fetches = sorted(output_names)
    examples = serialized_examples(request.input)
    arrays = servable.run([(name, examples) for name in sorted(input_names)], fetches)
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures[signature_name]
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(_classification_result(signature, len(examples), fetches, arrays))
        else:
            result.regression_result.CopyFrom(_regression_result(signature, len(examples), fetches, arrays))
        result.model_spec.CopyFrom(model_spec(task.model_spec.name, task.model_spec.signature_name, servable.version))
    return response


# ---------------------------------------------------------------------- warm-up


def _read_tfrecords(path: str) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while True:
            header = handle.read(12)
            if not header:
                return
            if len(header) < 12:
                raise ServingError(Code.DATA_LOSS, f"truncated record at {path}")
            (length,) = struct.unpack("<Q", header[:8])
            data = handle.read(length)
            footer = handle.read(4)
            if len(data) < length or len(footer) < 4:
                raise ServingError(Code.DATA_LOSS, f"truncated record at {path}")
            yield data


def run_warmup(servable: Servable, iterations: int) -> None:
    """saved_model_warmup_util: replays assets.extra/tf_serving_warmup_requests (PredictionLog)."""
    path = os.path.join(servable.path, WARMUP_FILE)
    if not os.path.exists(path):
        return
    records = list(_read_tfrecords(path))
    if len(records) > MAX_WARMUP_RECORDS:
        raise invalid_argument(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
    for record in records:
        entry = prediction_log_pb2.PredictionLog.FromString(record)
        kind = entry.WhichOneof("log_type")
        for _ in range(max(iterations, 1)):
            if kind == "predict_log":
                request = entry.predict_log.request
                predict(servable, request.model_spec.signature_name, dict(request.inputs), list(request.output_filter))
            elif kind == "classify_log":
                classify(servable, entry.classify_log.request)
            elif kind == "regress_log":
                regress(servable, entry.regress_log.request)
            elif kind == "multi_inference_log":
                multi_inference(servable, entry.multi_inference_log.request)
            else:
                raise unimplemented(f"Unsupported log_type for warmup: {kind}")
    log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.", path, len(records))
