"""Measurement: backend failures classified by kind, server errors logged without flooding, the access log line,
the new metric families, tracing off unless asked for."""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import tracing
from gateway.backends.grpc_channel import failure_kind
from gateway.dataplane import backend_failure
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidArgument,
    error_for_status,
)
from gateway.metrics import Metrics
from gateway.telemetry import ErrorStorms, Exchange, Telemetry, access_line


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = metrics.render()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_backend_failures_are_classified_by_kind_and_code() -> None:
    assert backend_failure(BackendUnavailable("refused").from_backend("connect")) == ("connect", "")
    assert backend_failure(BackendTimeout("late").from_backend("timeout")) == ("timeout", "")
    assert backend_failure(error_for_status(503, "not loaded")) == ("status", "503")
    assert backend_failure(error_for_status(400, "bad tensor")) == ("status", "400")  # the backend's own refusal
    assert backend_failure(BackendError("unreadable answer")) == ("status", "")
    assert backend_failure(BackendTimeout("client deadline passed")) == ("timeout", "")
    # Raised by the gateway before anything was sent, or the client went away: not the backend's failure.
    assert backend_failure(InvalidArgument("cannot encode")) is None
    assert backend_failure(RuntimeError("bug")) is None


def test_grpc_failures_tell_a_dead_connection_from_an_answer() -> None:
    assert failure_kind(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: "
                        "UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused") == \
        ("connect", "")
    assert failure_kind(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") == ("timeout", "")
    assert failure_kind(grpc.StatusCode.UNAVAILABLE, "model is loading") == ("status", "UNAVAILABLE")
    assert failure_kind(grpc.StatusCode.NOT_FOUND, "Servable not found") == ("status", "NOT_FOUND")


def test_a_storm_of_server_errors_is_logged_rate_limited_then_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    storms = ErrorStorms(per_window=3, window_s=3600)
    with caplog.at_level(logging.WARNING, logger="gateway.errors"):
        for _ in range(50):
            storms.record(None, "v2_rest", "503", "backend 'ts' is unreachable")
        assert len(caplog.records) == 3
        storms.flush(force=True)
    assert len(caplog.records) == 4
    assert "47 more server errors" in caplog.records[-1].getMessage()
    assert "503 model - backend - x47" in caplog.records[-1].getMessage()


def test_the_access_log_line_is_one_json_object_with_every_field() -> None:
    call = Exchange(started=0.0, backend_s=0.0125)
    line = json.loads(access_line(call, "tf_grpc", "NOT_FOUND", 0.02, 120, None, "rid-1", "ab" * 16))
    assert line["protocol"] == "tf_grpc" and line["status"] == "NOT_FOUND" and line["request_id"] == "rid-1"
    assert line["trace_id"] == "ab" * 16 and line["backend_s"] == 0.0125 and line["request_bytes"] == 120
    assert set(line) == {"ts", "request_id", "trace_id", "model", "version", "variant", "backend", "protocol",
                         "status", "duration_s", "backend_s", "request_bytes", "response_bytes", "error"}


def test_telemetry_counts_server_errors_without_a_route_and_measures_nothing_else() -> None:
    metrics = Metrics()
    telemetry = Telemetry(metrics)
    call = telemetry.begin("POST v2_rest", lambda name: None)
    assert call.span is None  # tracing off: no span, no trace context
    telemetry.end(call, "v2_rest", "404")
    assert not any(name == "gateway_requests_total" for name, _ in samples(metrics))


def test_new_families_render_with_their_labels() -> None:
    m = Metrics()
    m.request(model="m", version="1", variant="", backend="ts", protocol="v2_rest", code="200", seconds=0.01,
              received=300, sent=5000)
    m.backend_call_child("ts", "m", "1", "rest").observe(0.004)
    m.backend_error(backend="ts", model="m", version="1", kind="status", code="503")
    m.experiment_weights({("m", "ab", "a"): 0.9, ("m", "ab", "b"): 0.1})
    m.experiment_weights({("m", "ab", "a"): 1.0})  # variant b removed: its weight reads 0
    m.routes_reloaded(False)
    m.rollout(model="m", percent=20, running=True, guards={"max_error_ratio": 0.05, "max_p99_seconds": None,
                                                           "max_p99_ratio": 1.5})
    m.sample_process()
    s = samples(m)

    def value(name: str, **labels: str) -> float:
        return s[(name, frozenset(labels.items()))]

    assert value("gateway_request_size_bytes_bucket", model="m", protocol="v2_rest", le="1024.0") == 1
    assert value("gateway_response_size_bytes_sum", model="m", protocol="v2_rest") == 5000
    assert value("gateway_backend_request_duration_seconds_count", backend="ts", model="m", version="1",
                 transport="rest") == 1
    assert value("gateway_backend_errors_total", backend="ts", model="m", version="1", kind="status",
                 code="503") == 1
    assert value("gateway_experiment_weight_ratio", model="m", experiment="ab", variant="b") == 0
    assert value("gateway_experiment_weight_ratio", model="m", experiment="ab", variant="a") == 1
    assert value("gateway_routes_last_reload_successful") == 0
    assert value("gateway_routes_reloads_total", result="failure") == 1
    assert value("gateway_rollout_guard_max_p99_ratio", model="m") == 1.5
    assert value("gateway_rollout_transitions_total", model="m", event="rolled_back") == 0  # created at 0
    assert value("process_resident_memory_bytes") > 0 and value("process_cpu_seconds_total") > 0
    assert ("gateway_build_info", frozenset()) not in s and any(n == "gateway_build_info" for n, _ in s)


def test_trace_ids_are_exemplars_in_openmetrics_only() -> None:
    m = Metrics()
    m.request(model="m", version="1", variant="", backend="ts", protocol="v2_rest", code="200", seconds=0.01,
              trace_id="cd" * 16)
    body, content_type = m.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and b'trace_id="' + b"cd" * 16 in body
    assert b"trace_id" not in m.render()[0]


@pytest.mark.parametrize("env", [{}, {"OTEL_TRACES_EXPORTER": "none"},
                                 {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}])
def test_tracing_is_off_unless_an_exporter_is_named(env: dict[str, str]) -> None:
    assert tracing.from_env(env) is None


def test_an_unknown_exporter_is_refused_with_its_name() -> None:
    with pytest.raises(SystemExit, match="zipkin"):
        tracing.from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
