"""The gateway's error tree: each class carries its HTTP status and gRPC code; this is the only mapping table."""

from __future__ import annotations

import grpc


class GatewayError(Exception):
    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(GatewayError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownLabel(InvalidArgument):
    """TF Serving answers an unknown label with INVALID_ARGUMENT, not NOT_FOUND; so do we."""


class MalformedRequest(InvalidArgument):
    """The request could not be parsed at all (bad JSON, bad path)."""


class PayloadTooLarge(GatewayError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotFound(GatewayError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class ModelNotFound(NotFound):
    pass


class VersionNotFound(NotFound):
    pass


class PermissionDenied(GatewayError):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class MethodNotAllowed(GatewayError):
    http_status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Unimplemented(GatewayError):
    http_status = 501
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class ResourceExhausted(GatewayError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BackendError(GatewayError):
    """The backend failed in a way that is not the client's fault (5xx, garbage answer)."""

    http_status = 502
    grpc_code = grpc.StatusCode.INTERNAL


class BackendUnavailable(GatewayError):
    """The backend is down, refuses connections, or the target is not loaded there."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class BackendTimeout(GatewayError):
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class ConfigError(Exception):
    """The routes file is invalid; the message names the file, the field path and what is wrong."""


# TF Serving's REST status per error code (http_rest_api_util.cc), used to map a TF error body back to a class.
_BY_HTTP_STATUS: dict[int, type[GatewayError]] = {
    400: InvalidArgument,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    429: ResourceExhausted,
    501: Unimplemented,
    503: BackendUnavailable,
    504: BackendTimeout,
}


def error_for_status(status: int, message: str) -> GatewayError:
    """The gateway error for a backend's HTTP status; unknown 5xx become BackendError."""
    return _BY_HTTP_STATUS.get(status, BackendError)(message)
