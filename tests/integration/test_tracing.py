"""Tracing end to end: a gateway with OTEL_TRACES_EXPORTER=otlp exports its spans over OTLP/gRPC to a receiver
here (opentelemetry-proto's TraceService); the client's W3C traceparent is the request span's parent; the
backend call's trace context reaches real TorchServe (REST, a header) and real TF Serving (gRPC, metadata) through
recording proxies; the shadow call is traced; the latency histogram carries the trace id as an exemplar; the
access log line names the trace."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from gateway.dev import localstack

from .localhttp import LocalHttp

TRACE_ID = secrets.token_hex(16)
CLIENT_SPAN = secrets.token_hex(8)
X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
SCALE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
         "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request: Any, context: Any) -> Any:  # the service method, named by the proto
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[Any]:
        return [s for s in self.spans if s.trace_id.hex() == trace_id]


class HttpRecorder(LocalHttp):
    """Forwards every request to ``upstream`` and keeps the traceparent headers it saw."""

    def __init__(self, upstream: str) -> None:
        self.seen: list[str] = []

        def forward(method: str, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, str, bytes]:
            lower = {k.lower(): v for k, v in headers.items()}
            if "traceparent" in lower:
                self.seen.append(lower["traceparent"])
            sent = {k: v for k, v in lower.items() if k not in ("host", "content-length")}
            r = httpx.request(method, upstream + path, content=body, headers=sent, timeout=10)
            return r.status_code, r.headers.get("content-type", "application/json"), r.content

        super().__init__(forward)


class GrpcRecorder(grpc.GenericRpcHandler):
    """Forwards every unary call, as bytes, to ``upstream`` and keeps the traceparent metadata it saw."""

    def __init__(self, upstream: str) -> None:
        self.seen: list[str] = []
        self.channel = grpc.insecure_channel(upstream)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((self,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def service(self, details: Any) -> Any:
        method = details.method
        forward = self.channel.unary_unary(method)

        def handle(request: bytes, context: Any) -> bytes:
            metadata = [(k, v) for k, v in context.invocation_metadata()
                        if not k.startswith((":", "grpc-")) and k != "user-agent"]
            self.seen.extend(v for k, v in metadata if k == "traceparent")
            response: bytes = forward(request, metadata=metadata or None, timeout=10)
            return response

        return grpc.unary_unary_rpc_method_handler(handle)

    def close(self) -> None:
        self.server.stop(None)
        self.channel.close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, torchserve: localstack.TorchServeEndpoints,
           tfserving: localstack.TFServingEndpoints) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("tracing")
    receiver = Receiver()
    ts_proxy = HttpRecorder(torchserve.inference_url)
    tf_proxy = GrpcRecorder(tfserving.grpc_target)
    routes = {"revision": 1, "backends": {
        "torchserve": {"kind": "torchserve", "url": f"http://127.0.0.1:{ts_proxy.port}",
                       "management_url": torchserve.management_url, "token_file": str(torchserve.key_file)},
        "tfserving": {"kind": "tfserving", "url": tfserving.rest_url, "transport": "grpc",
                      "grpc_target": f"127.0.0.1:{tf_proxy.port}"}},
        "models": {
            "scale": {"schema": SCALE, "default_version": 1, "shadow": {"version": 2, "percent": 100},
                      "versions": {1: {"backend": "torchserve", "model": "scale", "version": "1"},
                                   2: {"backend": "torchserve", "model": "scale", "version": "2"}}},
            "affine": {"versions": {1: {"backend": "tfserving", "model": "affine", "version": 1}}}}}
    routes_file = work / "routes.yaml"
    routes_file.write_text(yaml.safe_dump(routes))
    grpc_port = localstack.free_port()
    proc, url = localstack.start_gateway(work / "gateway", routes_file, env={
        "GATEWAY_GRPC_PORT": str(grpc_port), "GATEWAY_ADMIN_PORT": "0", "GATEWAY_ACCESS_LOG_SAMPLE": "1",
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "gateway-under-test"})
    try:
        yield {"url": url, "grpc": f"127.0.0.1:{grpc_port}", "receiver": receiver, "ts_proxy": ts_proxy,
               "tf_proxy": tf_proxy, "process": proc, "log": work / "gateway" / "gateway.log"}
    finally:
        proc.stop()
        ts_proxy.close()
        tf_proxy.close()
        receiver.server.stop(None)


def _spans(receiver: Receiver, trace_id: str, names: set[str], timeout_s: float = 20) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        spans = receiver.trace(trace_id)
        if names <= {s.name for s in spans} or time.monotonic() > deadline:
            return spans
        time.sleep(0.2)


def test_a_rest_request_is_traced_from_the_client_through_the_gateway_to_torchserve(traced: dict[str, Any]) -> None:
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    r = httpx.post(f"{traced['url']}/v2/models/scale/infer", json=X3, timeout=10,
                   headers={"traceparent": traceparent, "x-request-id": "trace-test-1"})
    assert r.status_code == 200, r.text
    spans = _spans(traced["receiver"], TRACE_ID, {"POST v2_rest", "decode", "route", "backend call", "shadow"})
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    root = by_name["POST v2_rest"][0]
    assert root.parent_span_id.hex() == CLIENT_SPAN  # the client's span is the parent
    for name in ("decode", "route", "shadow"):
        assert by_name[name][0].parent_span_id == root.span_id, name
    primary = [s for s in by_name["backend call"] if s.parent_span_id == root.span_id]
    in_shadow = [s for s in by_name["backend call"] if s.parent_span_id == by_name["shadow"][0].span_id]
    assert len(primary) == 1 and len(in_shadow) == 1, [s.name for s in spans]
    attributes = {a.key: a.value.string_value for a in root.attributes}
    assert attributes["gateway.model"] == "scale" and attributes["gateway.status"] == "200"
    # TorchServe got the trace context of the gateway's backend call spans (primary and shadow).
    seen = {tuple(h.split("-")[1:3]) for h in traced["ts_proxy"].seen}
    assert {(TRACE_ID, s.span_id.hex()) for s in primary + in_shadow} <= seen, seen

    # The latency histogram's exemplar names the trace (one worker, OpenMetrics).
    metrics = httpx.get(f"{traced['url']}/metrics", headers={"accept": "application/openmetrics-text"}).text
    assert f'trace_id="{TRACE_ID}"' in metrics
    # The access log line names the request and its trace.
    _wait_for_log(traced["log"], lambda line: line.get("trace_id") == TRACE_ID and
                  line.get("request_id") == "trace-test-1" and line.get("model") == "scale")


def test_a_grpc_request_carries_its_trace_to_tf_serving_in_metadata(traced: dict[str, Any]) -> None:
    trace_id = secrets.token_hex(16)
    client = tritongrpc.InferenceServerClient(url=traced["grpc"])
    inp = tritongrpc.InferInput("x", [1, 3], "FP32")
    inp.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32))
    client.infer("affine", [inp], headers={"traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01"})
    client.close()
    name = "/inference.GRPCInferenceService/ModelInfer"
    spans = _spans(traced["receiver"], trace_id, {name, "backend call"})
    calls = [s for s in spans if s.name == "backend call"]
    assert calls and {s.name for s in spans} >= {name, "decode", "route"}
    assert (trace_id, calls[0].span_id.hex()) in {tuple(h.split("-")[1:3]) for h in traced["tf_proxy"].seen}


def _wait_for_log(path: Path, match: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for raw in path.read_text().splitlines():
            start = raw.find("{")
            if start >= 0 and '"protocol"' in raw:
                try:
                    if match(json.loads(raw[start:])):
                        return
                except ValueError:
                    continue
        assert time.monotonic() < deadline, "no matching access log line"
        time.sleep(0.2)
