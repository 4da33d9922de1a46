"""Tracing: OpenTelemetry spans for each request (children: decode, route, backend call, shadow) and the W3C trace
context in (traceparent from clients) and out (to backends, as HTTP headers and gRPC metadata).

Off unless OTEL_TRACES_EXPORTER names an exporter (otlp, console; several with commas); then everything else comes
from the standard variables: OTEL_SERVICE_NAME (default model-gateway), OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER(_ARG), OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT / _PROTOCOL (http/protobuf by default, or grpc) /
_HEADERS / _TIMEOUT, OTEL_BSP_*. While it is off, OpenTelemetry is not even imported and no request does any of
this (the fronts and the data plane test one attribute).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

log = logging.getLogger(__name__)

#: W3C trace context for the backend call being made: the HTTP client and the gRPC channel send these with it.
outgoing: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("gateway_trace_headers", default=())

Span = Any  # opentelemetry.trace.Span, kept out of the signatures so that nothing imports it while tracing is off


def from_env(environ: Mapping[str, str] | None = None) -> Tracing | None:
    env = os.environ if environ is None else environ
    exporters = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if not exporters or exporters == ["none"] or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return Tracing(exporters, env)


class Tracing:
    """One tracer provider per worker process (built after the fork), batching spans to the exporters."""

    def __init__(self, exporters: list[str], env: Mapping[str, str]) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": "model-gateway"}
        self.provider = TracerProvider(resource=Resource.create(attributes))  # sampler: OTEL_TRACES_SAMPLER
        for name in exporters:
            self.provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
        self.tracer = self.provider.get_tracer("gateway")
        self.propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._server, self._client, self._internal = (trace.SpanKind.SERVER, trace.SpanKind.CLIENT,
                                                      trace.SpanKind.INTERNAL)
        log.info("tracing on: exporters %s", ", ".join(exporters))

    def request_span(self, name: str, header: Callable[[str], str | None], attributes: dict[str, Any]) -> Span:
        """The request's span, a child of the client's traceparent when it sent one."""
        carrier = {}
        parent = header("traceparent")
        if parent:
            carrier["traceparent"] = parent
            state = header("tracestate")
            if state:
                carrier["tracestate"] = state
        context = self.propagator.extract(carrier) if carrier else None
        return self.tracer.start_span(name, context=context, kind=self._server, attributes=attributes)

    def child(self, parent: Span, name: str, *, client: bool = False, start_ns: int | None = None,
              attributes: dict[str, Any] | None = None) -> Span:
        context = self._trace.set_span_in_context(parent)
        return self.tracer.start_span(name, context=context, kind=self._client if client else self._internal,
                                      start_time=start_ns, attributes=attributes)

    def headers(self, span: Span) -> tuple[tuple[str, str], ...]:
        """The traceparent (and tracestate) that makes ``span`` the parent of what the backend does."""
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return tuple(carrier.items())

    def failed(self, span: Span, description: str) -> None:
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, description))

    @staticmethod
    def trace_id(span: Span) -> str:
        """The span's trace id in hex when it is sampled (recorded and exported), else ""."""
        context = span.get_span_context()
        return format(context.trace_id, "032x") if context.trace_flags.sampled else ""

    @staticmethod
    def now_ns() -> int:
        return time.time_ns()

    def shutdown(self) -> None:
        """Export what is still batched (the worker is exiting)."""
        self.provider.shutdown()


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise SystemExit(f"OTEL_TRACES_EXPORTER={name!r}: the gateway supports otlp, console or none")
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise SystemExit(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: the gateway supports http/protobuf or grpc")
