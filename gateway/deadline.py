"""Request deadlines: a front sets the client's deadline once; every backend call below reads what is left."""

from __future__ import annotations

import time
from contextvars import ContextVar

from gateway.errors import BackendTimeout

# Absolute time.monotonic() by which the client needs its answer; None when the client set no deadline.
_DEADLINE: ContextVar[float | None] = ContextVar("gateway_deadline", default=None)


def set_deadline(seconds_from_now: float | None) -> None:
    """Called by a front for the current request (each request runs in its own task and context)."""
    _DEADLINE.set(None if seconds_from_now is None else time.monotonic() + seconds_from_now)


def timeout_for(backend_timeout_s: float) -> float:
    """The timeout for one backend call: the backend's own limit, shortened to the client's remaining deadline."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return backend_timeout_s
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BackendTimeout("the client's deadline passed before the backend was called")
    return min(backend_timeout_s, remaining)


def remaining_s() -> float | None:
    """What is left of the client's deadline (None: no deadline)."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()
