"""TensorFlow/absl status codes and the way TF Serving maps them onto gRPC and HTTP."""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """tensorflow.error.Code (same numbers as grpc.StatusCode and absl::StatusCode)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# http_server.cc ToHTTPStatusCode
_HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

GRPC_ERROR_MESSAGE_LIMIT = 1024


class ServingError(Exception):
    """A non-OK absl::Status carried as an exception."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = Code(code)
        self.message = message

    def __str__(self) -> str:
        # absl::Status::ToString()
        return f"{self.code.name}: {self.message}"

    @property
    def http_status(self) -> int:
        return http_status(self.code)

    def grpc_message(self) -> str:
        return truncate_for_grpc(self.message)


def http_status(code: Code) -> int:
    return _HTTP_STATUS.get(Code(code), 500)


def truncate_for_grpc(message: str) -> str:
    """grpc_status_util.cc: messages longer than 1024 characters are cut and marked."""
    if len(message) > GRPC_ERROR_MESSAGE_LIMIT:
        return message[:GRPC_ERROR_MESSAGE_LIMIT] + "...TRUNCATED"
    return message


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(Code.UNIMPLEMENTED, message)


def internal(message: str) -> ServingError:
    return ServingError(Code.INTERNAL, message)


def unknown(message: str) -> ServingError:
    return ServingError(Code.UNKNOWN, message)


def from_exception(exc: BaseException) -> ServingError:
    """Maps a TensorFlow OpError (or anything else) onto a status."""
    if isinstance(exc, ServingError):
        return exc
    error_code = getattr(exc, "error_code", None)
    message = getattr(exc, "message", None)
    if isinstance(error_code, int) and isinstance(message, str):
        try:
            return ServingError(Code(error_code), message)
        except ValueError:
            return ServingError(Code.UNKNOWN, message)
    return ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
