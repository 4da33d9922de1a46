"""TF-Serving-compatible REST (/v1): predict/classify/regress, model status and metadata, TF's messages and codes."""

from __future__ import annotations

import asyncio
import re

from gateway.api.asgi import Front, Request, Response, served_by
from gateway.backends.tfserving import TFServingBackend
from gateway.codecs import tf_json
from gateway.codecs.jsonio import dumps
from gateway.errors import GatewayError, InvalidArgument, ModelNotFound, NotFound, Unimplemented, VersionNotFound
from gateway.routing import Route
from gateway.types import ModelRef

# TF Serving's own path grammar (http_rest_api_handler.cc); versions are integers, names and labels URL-decoded.
_PREDICT = re.compile(
    r"(?i)^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r":(?P<verb>classify|regress|predict)$")
_STATUS = re.compile(
    r"(?i)^/v1/models(?:/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<metadata>/metadata)?)?$")
_STATE_ERROR_CODE = {"AVAILABLE": "OK", "UNKNOWN": "UNAVAILABLE"}


def _ref(match: re.Match[str]) -> ModelRef:
    version = match["version"]
    return ModelRef(name=match["name"], version=None if version is None else str(int(version)), label=match["label"])


def _resolve(request: Request, ref: ModelRef) -> Route:
    """Route the request, with TF Serving's wording for servables it cannot find."""
    try:
        route = request.plane.route(ref)
    except ModelNotFound:
        spec = f"Specific({ref.name}, {ref.version})" if ref.version else f"Latest({ref.name})"
        raise NotFound(f"Servable not found for request: {spec}") from None
    except VersionNotFound:
        raise NotFound(f"Servable not found for request: Specific({ref.name}, {ref.version})") from None
    request.route = route
    return route


async def predict(request: Request, match: re.Match[str]) -> Response:
    ref = _ref(match)
    route = _resolve(request, ref)
    verb = match["verb"].lower()
    body = await request.body()
    if route.backend.kind == "tfserving":
        # Same protocol on both sides: forward the body untouched, only the URL is rewritten.
        answer, _ = await request.plane.forward(route, f":{verb}", body, "application/json")
        return Response(200, answer, headers=served_by(route))
    if verb != "predict":
        raise Unimplemented(f"{verb} is only available for models served by TF Serving; model '{ref.name}' "
                            f"version {route.target.logical_version} is served by {route.backend.kind}")
    infer_request, row_format = tf_json.decode_predict(body, ref, route.model.schema)
    if infer_request.signature_name != tf_json.DEFAULT_SIGNATURE:
        raise InvalidArgument(f"Serving signature name: \"{infer_request.signature_name}\" not found in signature def")
    response = await request.plane.infer(infer_request, route)
    return Response(200, tf_json.encode_predict_response(response, row_format), headers=served_by(route))


async def status_or_metadata(request: Request, match: re.Match[str]) -> Response:
    if not match["name"]:
        raise InvalidArgument("Missing model name in request.")
    if match["metadata"]:
        return await _metadata(request, _ref(match))
    return await _status(request, match["name"], match["version"])


async def _status(request: Request, name: str, version: str | None) -> Response:
    table = request.plane.store.current
    try:
        model = table.model(name)
    except ModelNotFound:
        raise NotFound(f"Could not find any versions of model {name}") from None
    # A label in a status request is ignored, as TF Serving does.
    versions = [str(int(version))] if version else sorted(model.versions, key=int, reverse=True)
    if version and versions[0] not in model.versions:
        raise NotFound(f"Could not find version {versions[0]} of model {name}")
    routes = [table.resolve(ModelRef(name=name, version=v)) for v in versions]
    statuses = await asyncio.gather(*(request.plane.status(r) for r in routes))
    return Response(200, dumps({"model_version_status": [{
        "version": s.version,
        "state": s.state,
        "status": {"error_code": _STATE_ERROR_CODE.get(s.state, "OK" if not s.error_message else "UNKNOWN"),
                   "error_message": s.error_message},
    } for s in statuses]}))


async def _metadata(request: Request, ref: ModelRef) -> Response:
    route = _resolve(request, ref)
    version = route.target.logical_version
    if route.backend.kind == "tfserving":
        backend = request.plane.backend(route)
        assert isinstance(backend, TFServingBackend)
        doc = dict(await backend.metadata(route.target))
        doc["model_spec"] = {"name": route.model.name, "signature_name": "", "version": version}
        return Response(200, dumps(doc), headers=served_by(route))
    schema = await request.plane.schema(route)
    return Response(200, tf_json.encode_signature_metadata(route.model.name, version, schema),
                    headers=served_by(route))


def encode_error(error: GatewayError) -> Response:
    return Response(error.http_status, dumps({"error": error.message}))


def no_route(request: Request) -> GatewayError:
    return InvalidArgument(f"Malformed request: {request.method} {request.path}")


ROUTES = (
    ("POST", _PREDICT, predict),
    ("GET", _STATUS, status_or_metadata),
)

FRONT = Front(name="tfserving", routes=ROUTES, encode_error=encode_error, no_route=no_route)
