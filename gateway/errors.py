"""The gateway's error tree: each class carries its HTTP status and gRPC code; this is the only mapping table.

    GatewayError                      500 INTERNAL
    ├── InvalidArgument               400 INVALID_ARGUMENT
    │   ├── UnknownLabel                  (TF Serving answers an unknown label with 400, not 404)
    │   └── MalformedRequest              (unparseable JSON, bad path)
    ├── PayloadTooLarge               413 RESOURCE_EXHAUSTED
    ├── NotFound                      404 NOT_FOUND
    │   ├── ModelNotFound
    │   └── VersionNotFound
    ├── Unauthenticated               401 UNAUTHENTICATED     no or wrong credentials (WWW-Authenticate)
    ├── PermissionDenied              403 PERMISSION_DENIED
    ├── MethodNotAllowed              405 UNIMPLEMENTED
    ├── Unimplemented                 501 UNIMPLEMENTED
    ├── ResourceExhausted             429 RESOURCE_EXHAUSTED
    │   └── RateLimited                   a tenant's or a model's rate (Retry-After, RateLimit-*)
    ├── BackendError                  502 INTERNAL            the backend failed (5xx, unreadable answer)
    ├── BackendUnavailable            503 UNAVAILABLE         down, refusing, or the target is not loaded
    │   ├── BackendBusy                   (the backend said it cannot take more now: its queue is full)
    │   └── Overloaded                    (the gateway's own admission control refused it: Retry-After)
    ├── BackendTimeout                504 DEADLINE_EXCEEDED
    └── ControlError                  500                     the control plane: admin API, routes writes, rollouts
        ├── InvalidChange             400                     a change or spec that cannot be applied
        │   └── ConfigError               (the routes document: file, field path and reason in the message)
        ├── NotDefined                404                     no such model (in the routes) or rollout
        │   └── UnknownModel
        ├── Conflict                  409                     the state moved on (another write, a running rollout)
        │   └── RevisionConflict          (carries the current revision)
        │       └── ContentConflict       (same revision number, other content: a hand edit since the read)
        ├── DeployFailed              502                     a backend refused a control operation
        └── ControlUnavailable        503                     the store or the workers cannot take it now
            ├── LockTimeout
            └── StoreUnavailable          (etcd unreachable: every replica keeps serving its last routes)

The fronts encode any GatewayError in their client's protocol (gateway/api/), the admin API through one
exception handler (gateway/admin/app.py); library errors are mapped to these classes at one place per adapter.
An error's ``headers`` go out as response headers over REST, its ``trailers`` as trailing metadata over gRPC.
"""

from __future__ import annotations

import math
from typing import Self

import grpc


class GatewayError(Exception):
    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    #: How a backend call failed, when this error is one: ("connect" | "timeout", "") from the transport, or
    #: ("status", the backend's HTTP status or gRPC code name) from its answer. The data plane counts them.
    backend_failure: tuple[str, str] | None = None
    headers: tuple[tuple[str, str], ...] = ()  # REST response headers the refusal carries (lower-case names)
    trailers: tuple[tuple[str, str], ...] = ()  # gRPC trailing metadata it carries

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def from_backend(self, kind: str, code: str = "") -> Self:
        self.backend_failure = (kind, code)
        return self


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


class Unauthenticated(GatewayError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self, message: str, challenge: str = "Bearer") -> None:
        super().__init__(message)
        self.challenge = challenge  # the WWW-Authenticate header's value over HTTP
        self.headers = (("www-authenticate", challenge),)


class PermissionDenied(GatewayError):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class MethodNotAllowed(GatewayError):
    http_status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED

    def __init__(self, message: str, allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allow = allow  # the methods the path takes: the Allow header over HTTP


class Unimplemented(GatewayError):
    http_status = 501
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class ResourceExhausted(GatewayError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RateLimited(ResourceExhausted):
    """Over a token bucket's rate (gateway/auth/ratelimit.py): when to retry, and the bucket that refused as the
    RateLimit-* headers (REST) / the retry pushback (gRPC)."""

    def __init__(self, message: str, *, retry_after_s: float, limit: int, remaining: int, reset_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        after = str(max(1, math.ceil(retry_after_s)))  # Retry-After is whole seconds
        self.headers = (("retry-after", after), ("ratelimit-limit", str(limit)),
                        ("ratelimit-remaining", str(remaining)), ("ratelimit-reset", str(max(1, math.ceil(reset_s)))))
        pushback_ms = str(max(1, math.ceil(retry_after_s * 1000)))  # grpc's retry policy honours it
        self.trailers = (("retry-after", after), ("grpc-retry-pushback-ms", pushback_ms))


class BackendError(GatewayError):
    """The backend failed in a way that is not the client's fault (5xx, garbage answer)."""

    http_status = 502
    grpc_code = grpc.StatusCode.INTERNAL


class BackendUnavailable(GatewayError):
    """The backend is down, refuses connections, or the target is not loaded there."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class BackendBusy(BackendUnavailable):
    """The backend answered that it cannot take more now (TorchServe's full job queue)."""


class Overloaded(BackendUnavailable):
    """The gateway refused the call itself to protect a backend (admission control: its calls in flight and its
    queue are full, or the call waited in the queue too long). REST answers carry Retry-After."""

    def __init__(self, message: str, retry_after_s: int = 1, reason: str = "") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason  # queue_full | wait_timeout
        self.headers = (("retry-after", str(retry_after_s)),)
        self.trailers = (("grpc-retry-pushback-ms", str(retry_after_s * 1000)),)  # grpc's retry policy honours it


class BackendTimeout(GatewayError):
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


# --- the control plane -------------------------------------------------------------------------------------------

class ControlError(GatewayError):
    """A refused or failed control operation (admin API, routes write, rollout); the message is the answer."""


class InvalidChange(ControlError):
    http_status = 400


class ConfigError(InvalidChange):
    """The routes document is invalid; the message names the file, the field path and what is wrong."""


class NotDefined(ControlError):
    http_status = 404


class UnknownModel(NotDefined):
    """A write named a model the routes do not define."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is not defined in the routes file")
        self.model = model


class Conflict(ControlError):
    http_status = 409


class RevisionConflict(Conflict):
    """The routes are not at the revision the caller read: someone else wrote them meanwhile. Nothing was written."""

    def __init__(self, where: object, expected: int, current: int) -> None:
        super().__init__(f"{where}: revision conflict: expected revision {expected}, the routes are at revision "
                         f"{current}; re-read them and apply the change again")
        self.expected = expected
        self.current = current


class ContentConflict(RevisionConflict):
    """The routes still carry the revision the caller read, but not the content: someone edited them (by hand,
    keeping ``revision:``) since. Nothing was written; writing would lose that edit."""

    def __init__(self, where: object, revision: int) -> None:
        ControlError.__init__(self, f"{where}: the routes changed since they were read (still revision {revision}, "
                                    "other content: edited by hand?); re-read them and apply the change again")
        self.expected = self.current = revision


class DeployFailed(ControlError):
    """The backend refused or failed a control operation (registration, load, reload, unregister); the message
    carries the backend's own."""

    http_status = 502


class ControlUnavailable(ControlError):
    http_status = 503


class LockTimeout(ControlUnavailable):
    """Another writer held the routes' lock for longer than the timeout."""


class StoreUnavailable(ControlUnavailable):
    """The route store (etcd) cannot be reached: nothing was written; the replicas keep serving their last routes."""


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
    return _BY_HTTP_STATUS.get(status, BackendError)(message).from_backend("status", str(status))
