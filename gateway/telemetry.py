"""Measure: what each request cost and where it went, recorded once when it is answered: its metrics, its access
log line (sampled), a rate-limited warning when it is a server error, its trace spans. The data plane opens and
closes each request's Exchange for its front (``DataPlane.begin`` / ``measure``), routes it and times its backend
calls (gateway/dataplane.py); this module keeps the record and writes it out."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.codecs.jsonio import dumps
from gateway.events import Storm
from gateway.metrics import Metrics
from gateway.routes.table import Route
from gateway.tracing import Span, Tracing

if TYPE_CHECKING:
    from gateway.auth.tenants import Tenant

access_log = logging.getLogger("gateway.access")
error_log = logging.getLogger("gateway.errors")

# Server errors: HTTP 5xx and these gRPC codes (the same set the canary guards and the SLO alerts count).
GRPC_SERVER_ERRORS = frozenset({"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS",
                                "UNIMPLEMENTED"})


def is_server_error(code: str) -> bool:
    return code.startswith("5") or code in GRPC_SERVER_ERRORS


@dataclass(slots=True, eq=False)
class Exchange:
    """One client request as the data plane saw it: what served it, whether it is measured as an inference, and
    what it cost."""

    started: float  # time.perf_counter() when the front took it
    route: Route | None = None
    inference: bool = False
    backend_s: float = 0.0  # time in backend calls made for the answer
    span: Span | None = None  # its trace span, when tracing is on
    start_ns: int = 0  # wall clock at the start, for the decode span
    caller: Tenant | None = None  # who the front authenticated (client authentication on: gateway/auth/)
    cause: str = ""  # the class of the error its backend call ended with (the error log counts by it)


# The request being handled (each request runs in its own task, so each has its own).
current: ContextVar[Exchange | None] = ContextVar("gateway_exchange", default=None)
Header = Callable[[str], str | None]


def _no_header(name: str) -> str | None:
    return None


class Telemetry:
    def __init__(self, metrics: Metrics, *, access_log_sample: float = 0.0, tracing: Tracing | None = None,
                 errors_per_window: int = 5, window_s: float = 10.0) -> None:
        self.metrics = metrics
        self.access_log_sample = access_log_sample
        self.tracing = tracing
        self.errors = ErrorStorms(errors_per_window, window_s)

    def begin(self, operation: str = "", header: Header | None = None) -> Exchange:
        """A front took a request. ``operation`` names its span ("POST v2_rest", a gRPC method path);
        ``header`` reads the request's headers or metadata (only for the trace context)."""
        exchange = Exchange(started=time.perf_counter())
        if self.tracing is not None:
            exchange.start_ns = self.tracing.now_ns()
            exchange.span = self.tracing.request_span(operation or "request", header or _no_header, {})
        current.set(exchange)
        return exchange

    def end(self, call: Exchange, protocol: str, code: str, *, received: int | None = None,
            sent: int | None = None, request_id: str | None = None, detail: str = "") -> None:
        """The answer is sent: ``code`` is its HTTP status or gRPC code name. Only a request routed as an inference
        is counted in the metrics (model names a client invents stay out of the labels)."""
        seconds = time.perf_counter() - call.started
        route = call.route
        trace_id = self.tracing.trace_id(call.span) if self.tracing is not None and call.span is not None else ""
        if route is not None and call.inference:
            t = route.target
            self.metrics.request(model=t.logical_model, version=t.logical_version, variant=route.variant,
                                 backend=t.backend, protocol=protocol, code=code, seconds=seconds,
                                 received=received, sent=sent, trace_id=trace_id)
        server_error = is_server_error(code)
        if server_error:
            self.errors.record(route, protocol, code, detail, call.cause)
        logged = call.inference or code not in ("200", "OK")  # inference calls and every failure, no probes
        if logged and self.access_log_sample and (self.access_log_sample >= 1
                                                  or random.random() < self.access_log_sample):
            access_log.info(access_line(call, protocol, code, seconds, received, sent, request_id, trace_id))
        if call.span is not None and self.tracing is not None:
            if route is not None:
                t = route.target
                call.span.set_attributes({"gateway.model": t.logical_model, "gateway.version": t.logical_version,
                                          "gateway.variant": route.variant, "gateway.backend": t.backend})
            call.span.set_attributes({"gateway.status": code, "gateway.protocol": protocol})
            if server_error:
                self.tracing.failed(call.span, detail or code)
            call.span.end()

    # --- spans inside a request (the data plane) ------------------------------------------------------------------

    @contextmanager
    def routing(self) -> Iterator[None]:
        """Around resolve() while tracing: closes the request's decode span (from its start until now) and opens
        a route span."""
        call = current.get()
        if self.tracing is None or call is None or call.span is None:
            yield
            return
        now = self.tracing.now_ns()
        self.tracing.child(call.span, "decode", start_ns=call.start_ns).end(end_time=now)
        span = self.tracing.child(call.span, "route", start_ns=now)
        try:
            yield
        finally:
            span.end()

    def backend_span(self, call: Exchange, route: Route) -> tuple[Span, tuple[tuple[str, str], ...]] | None:
        """A child span for a backend call and the trace context that goes out with the call (tracing.outgoing);
        None when the request is not traced."""
        if self.tracing is None or call.span is None:
            return None
        t = route.target
        span = self.tracing.child(call.span, "backend call", client=True, attributes={
            "gateway.backend": t.backend, "gateway.backend.model": t.model, "gateway.backend.version": t.version,
            "gateway.transport": route.backend.transport})
        return span, self.tracing.headers(span)

    @contextmanager
    def shadow(self, parent: Exchange | None, route: Route) -> Iterator[None]:
        """A shadow call, in its own task: a span under the request's (which may have ended), so that its backend
        call is traced too."""
        if self.tracing is None or parent is None or parent.span is None:
            yield
            return
        span = self.tracing.child(parent.span, "shadow", attributes={
            "gateway.shadow_version": route.target.logical_version})
        current.set(Exchange(started=time.perf_counter(), span=span))
        try:
            yield
        except BaseException as exc:
            self.tracing.failed(span, type(exc).__name__)
            raise
        finally:
            span.end()

    def tick(self) -> None:
        """Every few seconds: the warning for errors a storm suppressed."""
        self.errors.flush()

    def close(self) -> None:
        self.errors.flush(force=True)
        if self.tracing is not None:
            self.tracing.shutdown()


def access_line(call: Exchange, protocol: str, code: str, seconds: float, received: int | None, sent: int | None,
                request_id: str | None, trace_id: str) -> str:
    route = call.route
    t = route.target if route is not None else None
    line: dict[str, Any] = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "request_id": request_id,
        "trace_id": trace_id or None, "model": t.logical_model if t else None,
        "version": t.logical_version if t else None, "variant": (route.variant or None) if route else None,
        "backend": t.backend if t else None, "protocol": protocol, "status": code,
        "duration_s": round(seconds, 6), "backend_s": round(call.backend_s, 6), "request_bytes": received,
        "response_bytes": sent, "error": call.cause or None}
    if call.caller is not None:  # client authentication on: the tenant's name (never its credential)
        line["tenant"] = call.caller.name
    return dumps(line).decode()


class ErrorStorms(Storm):
    """Server errors go to the log as warnings, at most ``per_window`` lines per window; the rest are counted by
    code, model, backend and cause (the error's class) and summed up in one line when the window ends
    (gateway/events.py): a storm of 503s is visible, and cannot flood the log."""

    def __init__(self, per_window: int, window_s: float) -> None:
        super().__init__(error_log, "server errors", window_s, per_window)

    def record(self, route: Route | None, protocol: str, code: str, detail: str, cause: str = "") -> None:
        t = route.target if route is not None else None
        where = (f"model {t.logical_model} version {t.logical_version} on backend {t.backend}" if t is not None
                 else "no model")
        counted = f"{code} model {t.logical_model if t else '-'} backend {t.backend if t else '-'}"
        self.note(f"{counted} {cause}".rstrip(), f"{protocol} {code} ({where}): {detail or 'server error'}")
