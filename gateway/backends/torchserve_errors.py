"""TorchServe's error answers read one way whatever the transport: one gateway error per kind of answer.

Over REST TorchServe answers ``{"code", "type", "message"}`` with an HTTP status; over gRPC a status code whose
details end with a line naming its Java exception ("...\\norg.pytorch.serve...ModelNotFoundException" or
"...\\nInternalServerException.()"). The codes do not match across the two: a full job queue (or no worker) is 503
ServiceUnavailableException over REST but INTERNAL over gRPC, a handler that failed is 503 InternalServerException
over REST but UNAVAILABLE over gRPC. So the answer is read by its exception type and message first, and by the
status only where those say nothing, and both adapters call :func:`answer_error` with the HTTP status (gRPC codes
translated by :data:`GRPC_AS_HTTP`).
"""

from __future__ import annotations

import grpc

from gateway.backends.grpc_channel import CredentialsRefused, TargetNotLoaded
from gateway.errors import BackendBusy, BackendError, GatewayError, InvalidArgument, PayloadTooLarge, error_for_status

NOT_REGISTERED = frozenset({"ModelNotFoundException", "ModelVersionNotFoundException"})
#: TorchServe could not queue the job: its job queue is full, or the version has no worker (both transports).
NO_WORKER = "has no worker to serve inference request"

GRPC_AS_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.UNAUTHENTICATED: 401,
}


def answer_error(where: str, status: int, kind: str, message: str) -> GatewayError:
    """TorchServe's error answer as a gateway error. ``where`` names backend, model and version; ``status`` the
    HTTP status (or what the gRPC code stands for); ``kind`` its exception type ("" when unknown)."""
    if kind in NOT_REGISTERED or status == 404:
        return TargetNotLoaded(f"{where} is not registered: {message}")
    if kind == "InvalidKeyException" or status in (401, 403):
        return CredentialsRefused(f"{where}: TorchServe refused the gateway's token: {message}")
    if NO_WORKER in message or kind == "ServiceUnavailableException":
        return BackendBusy(f"{where}: {message}")
    if status == 400:
        return InvalidArgument(message)
    if status == 413:
        return PayloadTooLarge(f"{where}: {message}")
    if status >= 500:
        return BackendError(f"{where} failed: {message}")
    return error_for_status(status, f"{where}: {message}")


def grpc_details(details: str) -> tuple[str, str]:
    """(message, exception type) from a TorchServe gRPC error's details; ("details", "") when none is named."""
    message, _, last = details.rpartition("\n")
    name = last.split("(", 1)[0].rstrip(".").rpartition(".")[2]
    if message and (name.endswith("Exception") or last.startswith(("org.pytorch.", "java."))):
        return message, name
    return details, ""
