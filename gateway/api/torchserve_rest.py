"""TorchServe-compatible REST: POST /predictions/{model}[/{version}] and GET /ping, TorchServe's error bodies."""

from __future__ import annotations

import re

from gateway.api import v2_rest
from gateway.api.asgi import Front, Request, Response, error_headers, served_by, wrong_method
from gateway.backends.base import PassesPredictions
from gateway.codecs.jsonio import dumps, dumps_error
from gateway.errors import (
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidArgument,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    VersionNotFound,
)
from gateway.types import ModelRef

_PREDICTIONS = re.compile(r"^/predictions/(?P<name>[^/]+)(?:/(?P<version>[^/]+))?/?$")


async def ping(request: Request, match: re.Match[str]) -> Response:
    if request.plane.draining:  # shutting down: out of the load balancer (TorchServe answers 5xx when unhealthy)
        return Response(503, dumps({"status": "Unhealthy", "reason": "the gateway is shutting down (draining)"}))
    return Response(200, dumps({"status": "Healthy"}))


async def predictions(request: Request, match: re.Match[str]) -> Response:
    ref = ModelRef(name=match["name"], version=match["version"])
    plane = request.plane
    route = plane.route(ref, request.hints())
    native = plane.passthrough(route, PassesPredictions)
    if native is not None:
        body = await request.body()
        # The handler's own format, whatever it is: pass it through untouched.
        content_type = (request.header(b"content-type") or b"application/octet-stream").decode("latin-1")
        answer, answer_type = await plane.forward(
            route, lambda: native.forward_predictions(route.target, body, content_type))
        return Response(200, answer, content_type=answer_type.encode() or b"application/json",
                        headers=served_by(route))
    # Other backends (and shadowed requests, which need the tensors): the body is read as the v2 JSON request
    # this project's TorchServe handlers accept.
    try:
        infer_request = await v2_rest.decode(request, ref)
    except InvalidArgument as exc:
        # Say why a body the handler would take (an image, say) is refused here.
        why = ("is mirrored to a shadow" if route.shadow is not None
               else f"goes to backend '{route.target.backend}', which takes no TorchServe handler bodies")
        raise InvalidArgument(f"{exc.message} (model '{route.model.name}' version {route.target.logical_version} "
                              f"{why}, so the body must be a v2 JSON request; other bodies pass through only to "
                              "TorchServe on routes without a shadow)") from exc
    return await v2_rest.answer(request, infer_request, route)


# TorchServe's exception type names, so existing clients that switch on `type` keep working.
_TYPES: tuple[tuple[type[GatewayError], str], ...] = (
    (VersionNotFound, "ModelVersionNotFoundException"),
    (ModelNotFound, "ModelNotFoundException"),
    (NotFound, "ResourceNotFoundException"),
    (PayloadTooLarge, "RequestEntityTooLargeException"),
    (InvalidArgument, "BadRequestException"),
    (MethodNotAllowed, "MethodNotAllowedException"),
    (BackendUnavailable, "ServiceUnavailableException"),
    (BackendTimeout, "RequestTimeoutException"),
    (Unauthenticated, "InvalidKeyException"),  # TorchServe's own name for a refused key
    (PermissionDenied, "ForbiddenException"),
    (ResourceExhausted, "TooManyRequestsException"),
)


def encode_error(error: GatewayError) -> Response:
    kind = next((name for cls, name in _TYPES if isinstance(error, cls)), "InternalServerException")
    body = dumps_error({"code": error.http_status, "type": kind, "message": error.message})
    return Response(error.http_status, body, headers=error_headers(error))


def no_route(request: Request) -> GatewayError:
    return wrong_method(ROUTES, request) or NotFound(
        f"Requested resource is not found, please refer to API document: {request.path}")


ROUTES = (
    ("GET", re.compile(r"^/ping$"), ping),
    ("POST", _PREDICTIONS, predictions),
    ("PUT", _PREDICTIONS, predictions),
)

FRONT = Front(name="torchserve_rest", routes=ROUTES, encode_error=encode_error, no_route=no_route)
