"""Open Inference Protocol v2 over REST: health, server and model metadata, readiness, infer."""

from __future__ import annotations

import re

from gateway import __version__
from gateway.api.asgi import Front, Request, Response, json_error, served_by, wrong_method
from gateway.codecs import v2_json
from gateway.codecs.jsonio import dumps
from gateway.errors import GatewayError, InvalidArgument, NotFound
from gateway.routes.table import Route
from gateway.types import InferRequest, ModelRef

_MODEL = r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
PLATFORMS = {"tfserving": "tensorflow_savedmodel", "torchserve": "pytorch_torchserve"}


def _ref(match: re.Match[str]) -> ModelRef:
    return ModelRef(name=match["name"], version=match["version"])


async def live(request: Request, match: re.Match[str]) -> Response:
    return Response(200, dumps({"live": True}))


async def ready(request: Request, match: re.Match[str]) -> Response:
    # Ready means this process can route: a valid table is loaded. A single backend being down must not take
    # the whole gateway out of a load balancer; per-model readiness is the model ready endpoint. A draining
    # process (SIGTERM) is not ready; the protocol answers false with a 4xx.
    if request.plane.draining:
        return Response(400, dumps({"ready": False, "error": "the gateway is shutting down (draining)"}))
    return Response(200, dumps({"ready": True}))


async def server_metadata(request: Request, match: re.Match[str]) -> Response:
    return Response(200, dumps({"name": "model-gateway", "version": __version__, "extensions": []}))


async def model_metadata(request: Request, match: re.Match[str]) -> Response:
    route = request.plane.lookup(_ref(match), request.hints())
    schema = await request.plane.schema(route)
    versions = [match["version"]] if match["version"] else sorted(route.model.versions, key=int)
    body = v2_json.encode_metadata(route.model.name, versions, PLATFORMS[route.backend.kind], schema)
    return Response(200, body, headers=served_by(route))


async def model_ready(request: Request, match: re.Match[str]) -> Response:
    route = request.plane.lookup(_ref(match), request.hints())
    status = await request.plane.status(route)
    ok = status.state == "AVAILABLE"
    doc = {"name": route.model.name, "version": route.target.logical_version, "ready": ok}
    if not ok:
        doc["error"] = f"model '{route.model.name}' version {route.target.logical_version} is {status.state}: " \
                       f"{status.error_message}"
    # The protocol answers readiness with the status code: 200 ready, 4xx not.
    return Response(200 if ok else 400, dumps(doc), headers=served_by(route))


async def infer(request: Request, match: re.Match[str]) -> Response:
    ref = _ref(match)
    infer_request = await decode(request, ref)
    hints = request.hints(infer_request.parameters, infer_request.id)
    route = request.plane.route(ref, hints)
    return await answer(request, infer_request, route)


async def decode(request: Request, ref: ModelRef) -> InferRequest:
    """A v2 JSON body, with the binary data extension (Inference-Header-Content-Length)."""
    return v2_json.decode_request(await request.body(), ref, _header_length(request))


async def answer(request: Request, infer_request: InferRequest, route: Route) -> Response:
    """Infer and answer in v2 JSON, binary outputs where the client asked for them."""
    response = await request.plane.infer(infer_request, route)
    body, header_length = v2_json.encode_response(response, infer_request.binary_outputs)
    headers = served_by(route)
    if header_length is None:
        return Response(200, body, headers=headers)
    headers.append((BINARY_HEADER, str(header_length).encode()))
    return Response(200, body, content_type=b"application/octet-stream", headers=headers)


BINARY_HEADER = b"inference-header-content-length"


def _header_length(request: Request) -> int | None:
    raw = request.header(BINARY_HEADER)
    if raw is None:
        return None
    if not raw.isdigit():
        shown = raw.decode(errors="replace")
        raise InvalidArgument(f"Inference-Header-Content-Length must be an integer, got {shown!r}")
    return int(raw)


def no_route(request: Request) -> GatewayError:
    return wrong_method(ROUTES, request) or NotFound(f"no v2 endpoint at {request.method} {request.path}")


ROUTES = (
    ("GET", re.compile(r"^/v2/health/live$"), live),
    ("GET", re.compile(r"^/v2/health/ready$"), ready),
    ("GET", re.compile(r"^/v2/?$"), server_metadata),
    ("GET", re.compile(_MODEL + r"/ready$"), model_ready),
    ("POST", re.compile(_MODEL + r"/infer$"), infer),
    ("GET", re.compile(_MODEL + r"/?$"), model_metadata),
)

FRONT = Front(name="v2_rest", routes=ROUTES, encode_error=json_error, no_route=no_route)
