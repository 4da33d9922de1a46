"""TF-Serving-compatible REST (/v1): predict/classify/regress, model status and metadata, TF's messages and codes."""

from __future__ import annotations

import re

from gateway.api import tf_compat
from gateway.api.asgi import Front, Request, Response, json_error, served_by
from gateway.backends.base import DescribesTFSignatures, PassesTFRest
from gateway.codecs import tf_json, tf_proto
from gateway.codecs.jsonio import dumps
from gateway.errors import GatewayError, InvalidArgument, Unimplemented
from gateway.types import ModelRef

# TF Serving's own path grammar (http_rest_api_handler.cc); versions are integers, names and labels URL-decoded.
_PREDICT = re.compile(
    r"(?i)^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]{1,18})|/labels/(?P<label>[^/:]+))?"
    r":(?P<verb>classify|regress|predict)$")
_STATUS = re.compile(
    r"(?i)^/v1/models(?:/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]{1,18})|/labels/(?P<label>[^/:]+))?"
    r"(?P<metadata>/metadata)?)?$")


def _ref(match: re.Match[str]) -> ModelRef:
    version = match["version"]
    return ModelRef(name=match["name"], version=None if version is None else str(int(version)), label=match["label"])




async def predict(request: Request, match: re.Match[str]) -> Response:
    ref = _ref(match)
    plane = request.plane
    route = tf_compat.resolve(plane.route, ref, request.hints())
    verb = match["verb"].lower()
    body = await request.body()
    native = plane.passthrough(route, PassesTFRest)
    if native is not None:
        # Same protocol on both sides: forward the body untouched, only the URL is rewritten.
        answer = await plane.forward(route, lambda: native.forward_tf_rest(route.target, verb, body))
        return Response(200, answer, headers=served_by(route))
    if verb != "predict":
        raise Unimplemented(f"{verb} is only available for models served by TF Serving over REST; model "
                            f"'{ref.name}' version {route.target.logical_version} is served by {route.backend.name}")
    # Unnamed inputs and JSON number types are read against the schema: declared, else the backend's signature
    # (the one the body names).
    doc = tf_json.parse_predict(body)
    schema = await request.plane.input_schema(route, tf_json.signature_of(doc))
    infer_request, row_format = tf_json.decode_predict(doc, ref, schema)
    tf_compat.check_signature(infer_request.signature_name, route)
    response = await request.plane.infer(infer_request, route)
    return Response(200, tf_json.encode_predict_response(response, row_format), headers=served_by(route))


async def status_or_metadata(request: Request, match: re.Match[str]) -> Response:
    if not match["name"]:
        raise InvalidArgument("Missing model name in request.")
    if match["metadata"]:
        return await _metadata(request, _ref(match))
    return await _status(request, match["name"], match["version"])


async def _status(request: Request, name: str, version: str | None) -> Response:
    found = await tf_compat.statuses(request.plane, name, str(int(version)) if version else None)
    return Response(200, dumps({"model_version_status": [{
        "version": s.version,
        "state": s.state,
        "status": {"error_code": tf_proto.status_error_code(s), "error_message": s.error_message},
    } for s in found]}))


async def _metadata(request: Request, ref: ModelRef) -> Response:
    route = tf_compat.resolve(request.plane.lookup, ref, request.hints())
    version = route.target.logical_version
    tf = request.plane.capability(route, DescribesTFSignatures)
    if tf is not None:
        # TF Serving's own answer (every signature), renamed to the logical model and version.
        doc = dict(await tf.metadata(route.target))
        doc["model_spec"] = {"name": route.model.name, "signature_name": "", "version": version}
        return Response(200, dumps(doc), headers=served_by(route))
    schema = await request.plane.schema(route)
    return Response(200, tf_json.encode_signature_metadata(route.model.name, version, schema),
                    headers=served_by(route))


def no_route(request: Request) -> GatewayError:
    return InvalidArgument(f"Malformed request: {request.method} {request.path}")


ROUTES = (
    ("POST", _PREDICT, predict),
    ("GET", _STATUS, status_or_metadata),
)

FRONT = Front(name="tf_rest", routes=ROUTES, encode_error=json_error, no_route=no_route)
