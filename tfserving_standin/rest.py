"""The HTTP/REST API (model_servers/http_server.cc, http_rest_api_handler.cc, http_rest_api_util.cc).

Only paths matching ``(?i)/v1/.*`` reach the handler (others get the web server's 404), plus the
Prometheus path when monitoring is enabled. Errors are ``{"error": "<message>"}`` with the status
code TF Serving derives from the error code. Request bodies are parsed, and models run, in worker
threads so that the event loop keeps serving while a request or a model load is busy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import re
import time
import urllib.parse

from aiohttp import web
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    regression_pb2,
)

from tfserving_standin import json_tensor, metrics
from tfserving_standin import servable as servable_lib
from tfserving_standin.core import ServerCore, Spec
from tfserving_standin.jsonwriter import error_body
from tfserving_standin.status import Code, ServingError, http_status, invalid_argument

log = logging.getLogger("tfserving_standin")

_HANDLER_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE | re.ASCII,
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE | re.ASCII,
)
_NOT_FOUND_PAGE = (
    b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
    b"The requested URL was not found on this server.\n</BODY></HTML>\n"
)
INT64_MAX = 2**63 - 1


@dataclasses.dataclass
class ModelInfo:
    parsed: bool = False
    model_name: str = ""
    version: int | None = None
    label: str | None = None
    method: str = ""
    subresource: str = ""


def _decode(text: str) -> str:
    """curl_easy_unescape: %XX only ('+' stays '+')."""
    return urllib.parse.unquote_to_bytes(text).decode("utf-8", "replace")


def parse_model_info(http_method: str, path: str) -> ModelInfo:
    """http_rest_api_util.cc ParseModelInfo."""
    info = ModelInfo()
    match = None
    if http_method == "POST":
        match = _PREDICTION_PATH.fullmatch(path)
    elif http_method == "GET":
        match = _STATUS_PATH.fullmatch(path)
    if match is None:
        return info
    info.parsed = True
    name, version, label, last = match.groups()
    if http_method == "POST":
        info.method = last or ""
    else:
        info.subresource = last or ""
    if name:
        info.model_name = _decode(name)
    if version:
        if int(version) > INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
        info.version = int(version)
    if label:
        info.label = _decode(label)
    return info


def model_spec_from(info: ModelInfo) -> Spec:
    """http_rest_api_util.cc FillModelSpecWithNameVersionAndLabel."""
    if info.version is not None and info.label is not None:
        raise invalid_argument(
            f"Both model version ({info.version}) and model version label ({info.label}) cannot be supplied."
        )
    return Spec(info.model_name, info.version, info.label)


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> bytes:
    return json_format.MessageToJson(
        response, always_print_fields_with_no_presence=True, indent=1, ensure_ascii=False
    ).encode("utf-8")


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> bytes:
    """http_rest_api_util.cc ToJsonString(GetModelMetadataResponse): the Any is unpacked."""
    spec_text = json_format.MessageToJson(
        response.model_spec,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        indent=1,
        ensure_ascii=False,
    )
    if "signature_def" not in response.metadata:
        raise ServingError(
            Code.INTERNAL,
            "Failed to find 'signature_def' key in the GetModelMetadataResponse metadata map.",
        )
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata["signature_def"].Unpack(signature_map):
        raise ServingError(Code.INTERNAL, "Failed to unpack 'Any' object to 'SignatureDefMap'.")
    signature_text = json_format.MessageToJson(
        signature_map,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        indent=1,
        ensure_ascii=False,
    )
    text = "{\n" + f'"model_spec":{spec_text},\n' + '"metadata": {' + f'"signature_def": {signature_text}' + "}\n}\n"
    return text.encode("utf-8")


def status_response(core: ServerCore, name: str, version: int | None) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for number, status in core.model_status(name, version):
        entry = response.model_version_status.add()
        entry.version = number
        entry.state = int(status.state)
        if status.error is not None:
            entry.status.error_code = int(status.error.code)
            entry.status.error_message = status.error.message
        else:
            entry.status.error_code = 0
            entry.status.error_message = ""
    return response


def metadata_response(
    servable: servable_lib.Servable,
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """get_model_metadata_impl.cc SavedModelGetSignatureDef."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signatures.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata["signature_def"].Pack(signature_map)
    return response


class RestApi:
    def __init__(
        self,
        core: ServerCore,
        executor: concurrent.futures.Executor,
        timeout_in_ms: int,
        prometheus_path: str | None,
        enable_cors: bool,
    ) -> None:
        self.core = core
        self.executor = executor
        self.timeout = timeout_in_ms / 1000.0 if timeout_in_ms > 0 else None
        self.prometheus_path = prometheus_path
        self.enable_cors = enable_cors

    def app(self) -> web.Application:
        application = web.Application(client_max_size=2**31 - 1)
        application.router.add_route("*", "/{tail:.*}", self.handle)
        return application

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if self.prometheus_path is not None and path == self.prometheus_path:
            return web.Response(
                body=metrics.prometheus_page().encode(), status=200, headers={"Content-Type": "text/plain"}
            )
        if not _HANDLER_PATH.fullmatch(path):
            return web.Response(body=_NOT_FOUND_PAGE, status=404, headers={"Content-Type": "text/html"})
        start = time.perf_counter()
        body = await request.read()
        headers: dict[str, str] = {}
        model_name = ""
        method = ""
        if request.method == "OPTIONS":
            origin = request.headers.get("Origin", "")
            code = Code.OK if re.search(r"https?://", origin) else Code.FAILED_PRECONDITION
            output = b""
        else:
            headers["Content-Type"] = "application/json"
            try:
                info = parse_model_info(request.method, path)
                model_name = info.model_name
                method = info.method
                output = await self._dispatch(request.method, path, info, body)
                code = Code.OK
            except ServingError as exc:
                code = exc.code
                output = error_body(exc.message)
            except Exception as exc:
                log.exception("Unexpected error processing %s %s", request.method, path)
                code = Code.INTERNAL
                output = error_body(f"{type(exc).__name__}: {exc}")
        if self.enable_cors:
            headers["Access-Control-Allow-Origin"] = "*"
            headers["Access-Control-Allow-Methods"] = "POST, GET"
            headers["Access-Control-Allow-Headers"] = "Content-Type"
        if code == Code.OK:
            metrics.record_request_latency(model_name, method, "REST", (time.perf_counter() - start) * 1e6)
        metrics.record_request_count(model_name, code)
        return web.Response(body=output, status=http_status(code), headers=headers)

    async def _dispatch(self, http_method: str, path: str, info: ModelInfo, body: bytes) -> bytes:
        if http_method == "POST" and info.parsed:
            if info.method in ("predict", "classify", "regress"):
                return await self._run_inference(info, body)
        elif http_method == "GET" and info.parsed:
            if info.subresource == "metadata":
                return await self._metadata(info)
            return self._status(info)
        raise invalid_argument(f"Malformed request: {http_method} {path}")

    def _status(self, info: ModelInfo) -> bytes:
        if not info.model_name:
            raise invalid_argument("Missing model name in request.")
        spec = model_spec_from(info)
        return status_json(status_response(self.core, spec.name, spec.version))

    async def _metadata(self, info: ModelInfo) -> bytes:
        if not info.model_name:
            raise invalid_argument("Missing model name in request.")
        spec = model_spec_from(info)
        servable = self.core.get_servable(spec)
        try:
            return metadata_json(metadata_response(servable))
        finally:
            servable.release()

    async def _run_inference(self, info: ModelInfo, body: bytes) -> bytes:
        spec = model_spec_from(info)
        # TF Serving parses the body before it looks the model up: keep JSON errors first.
        servable: servable_lib.Servable | None = None
        lookup_error: ServingError | None = None
        try:
            servable = self.core.get_servable(spec)
        except ServingError as exc:
            lookup_error = exc
        work = {"predict": _predict, "classify": _classify, "regress": _regress}[info.method]
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, work, spec, body, servable, lookup_error)
        try:
            if self.timeout is None:
                return await future
            return await asyncio.wait_for(asyncio.shield(future), timeout=self.timeout)
        except TimeoutError:
            raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            if servable is not None:
                future.add_done_callback(lambda _f: servable.release())


def _predict(
    spec: Spec, body: bytes, servable: servable_lib.Servable | None, lookup_error: ServingError | None
) -> bytes:
    doc = json_tensor.parse_json(body)
    signature_name = json_tensor.signature_name_from(doc)
    if lookup_error is not None:
        raise lookup_error
    assert servable is not None
    resolved = signature_name or servable_lib.DEFAULT_SIGNATURE
    signature = servable.signatures.get(resolved)
    if signature is None:
        raise invalid_argument(f'Serving signature name: "{resolved}" not found in signature def')
    input_dtypes = {alias: info.dtype for alias, info in signature.inputs.items()}
    inputs, request_format = json_tensor.predict_inputs_from_json(doc, signature_name, input_dtypes)
    _, outputs = servable_lib.predict(servable, signature_name, inputs)
    return json_tensor.predict_response_json(outputs, request_format)


def _fill_request(spec: Spec, body: bytes, request: object) -> None:
    doc = json_tensor.parse_json(body)
    request.model_spec.name = spec.name  # type: ignore[attr-defined]
    if spec.version is not None:
        request.model_spec.version.value = spec.version  # type: ignore[attr-defined]
    if spec.label is not None:
        request.model_spec.version_label = spec.label  # type: ignore[attr-defined]
    request.model_spec.signature_name = json_tensor.signature_name_from(doc)  # type: ignore[attr-defined]
    json_tensor.fill_input_from_json(doc, request.input)  # type: ignore[attr-defined]


def _classify(
    spec: Spec, body: bytes, servable: servable_lib.Servable | None, lookup_error: ServingError | None
) -> bytes:
    request = classification_pb2.ClassificationRequest()
    _fill_request(spec, body, request)
    if lookup_error is not None:
        raise lookup_error
    assert servable is not None
    response = servable_lib.classify(servable, request)
    return json_tensor.classification_result_json(response.result)


def _regress(
    spec: Spec, body: bytes, servable: servable_lib.Servable | None, lookup_error: ServingError | None
) -> bytes:
    request = regression_pb2.RegressionRequest()
    _fill_request(spec, body, request)
    if lookup_error is not None:
        raise lookup_error
    assert servable is not None
    response = servable_lib.regress(servable, request)
    return json_tensor.regression_result_json(response.result)


__all__ = ["RestApi", "metadata_json", "parse_model_info", "status_json"]
