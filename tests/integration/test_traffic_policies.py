"""Traffic policies against real backends: a cross-framework A/B split with sticky keys over REST and gRPC,
QA overrides, shadows that agree (same weights on TorchServe) and disagree (next version), and shadows that hang
or fail without touching the primary's latency or success."""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import Counter

import grpc
import httpx
import numpy as np
import tritonclient.grpc as tritongrpc

from .stack import Gateway

X4 = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 0.5, -1, 2, 0]}]}
X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (0 when absent)."""
    text = client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[line.index("{"):line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def eventually(check, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_sticky_ab_split_across_frameworks_over_rest(client: httpx.Client) -> None:
    seen: dict[str, str] = {}
    for i in range(40):
        user = f"user-{i}"
        r = client.post("/v2/models/mlp_ab/infer", json=X4, headers={"x-user-id": user})
        assert r.status_code == 200, r.text
        seen[user] = r.headers["x-model-variant"]
        assert r.headers["x-backend"] == {"tf": "tfserving", "torch": "torchserve"}[seen[user]]
    assert set(seen.values()) == {"tf", "torch"}  # 40 keys at 50/50: both sides used
    for user, variant in list(seen.items())[:10]:  # stable on every front
        again = client.post("/v1/models/mlp_ab:predict", json={"instances": [[1, 2, 3, 4]]},
                            headers={"x-user-id": user})
        assert again.headers["x-model-variant"] == variant
    # Both variants answer with the same numbers: one schema, one answer, whatever served it.
    answers = {v: client.post("/v2/models/mlp_ab/infer", json=X4, headers={"x-user-id": u}).json()
               for u, v in seen.items()}
    np.testing.assert_allclose(answers["tf"]["outputs"][0]["data"], answers["torch"]["outputs"][0]["data"],
                               atol=1e-5)
    assert metric(client, "gateway_assignments_total", model="mlp_ab", experiment="port", how="sticky") >= 40


def test_sticky_ab_over_grpc_metadata(gateway: Gateway, client: httpx.Client) -> None:
    triton = tritongrpc.InferenceServerClient(url=gateway.grpc_target)
    try:
        rest = {u: client.post("/v2/models/mlp_ab/infer", json=X4, headers={"x-user-id": u}
                               ).headers["x-model-variant"] for u in ("a", "b", "c", "d", "e", "f")}
        for user, variant in rest.items():
            inp = tritongrpc.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(np.array([[1, 2, 3, 4]], np.float32))
            result = triton.infer("mlp_ab", [inp], headers={"x-user-id": user}, client_timeout=30)
            assert result.as_numpy("probabilities").shape == (1, 3)
            assert rest[user] == variant  # REST headers and gRPC metadata give the same assignment
    finally:
        triton.close()
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mlp_ab"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1, 2, 3, 4]], np.float32)))
        for user, variant in rest.items():
            _, call = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict.with_call(
                request, metadata=(("x-user-id", user),), timeout=30)
            assert dict(call.trailing_metadata())["x-model-variant"] == variant


def test_overrides_and_forbidden_overrides(gateway: Gateway, client: httpx.Client) -> None:
    forced = client.post("/v2/models/mlp_ab/infer", json=X4, headers={"x-user-id": "a", "x-model-variant": "torch"})
    assert forced.headers["x-model-variant"] == "torch" and forced.headers["x-backend"] == "torchserve"
    by_version = client.post("/v2/models/mlp_ab/infer", json=X4, headers={"x-model-version": "3"})
    assert by_version.headers["x-model-version"] == "3"
    locked = client.post("/v2/models/mlp_locked/infer", json=X4, headers={"x-model-version": "1"})
    assert locked.status_code == 403 and "does not allow" in locked.json()["error"]
    triton = tritongrpc.InferenceServerClient(url=gateway.grpc_target)
    try:
        inp = tritongrpc.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.array([[1, 2, 3, 4]], np.float32))
        try:
            triton.infer("mlp_locked", [inp], headers={"x-model-version": "1"})
            raise AssertionError("override should be refused")
        except Exception as exc:  # tritonclient's InferenceServerException
            assert "PERMISSION_DENIED" in str(exc.status()) and "does not allow" in str(exc)  # type: ignore[attr-defined]
    finally:
        triton.close()


def test_assignment_log_line(gateway: Gateway, client: httpx.Client) -> None:
    client.post("/v2/models/mlp_ab/infer", json={**X4, "id": "req-77"}, headers={"x-user-id": "logged-user"})

    def logged() -> dict | None:  # type: ignore[type-arg]
        for line in gateway.process.log_path.read_text().splitlines():
            if "req-77" in line and "gateway.assignment" in line:
                return json.loads(line[line.index("{"):])  # type: ignore[no-any-return]
        return None

    assert eventually(lambda: logged() is not None, timeout=5)
    entry = logged()
    assert entry is not None
    assert entry["experiment"] == "port" and entry["how"] == "sticky" and len(entry["key_hash"]) == 16
    assert "logged-user" not in json.dumps(entry)  # the key itself never reaches the log


def test_shadow_comparison_agrees_across_frameworks_and_disagrees_across_versions(client: httpx.Client) -> None:
    for _ in range(5):
        assert client.post("/v2/models/mlp_port/infer", json=X4).status_code == 200
        assert client.post("/v1/models/mlp_next:predict", json={"instances": [[1, 2, 3, 4]]}).status_code == 200

    def compared() -> bool:
        return (metric(client, "gateway_shadow_comparisons_total", model="mlp_port") >= 5
                and metric(client, "gateway_shadow_comparisons_total", model="mlp_next") >= 5)

    assert eventually(compared)
    assert metric(client, "gateway_shadow_comparisons_total", model="mlp_port", result="disagree") == 0
    assert metric(client, "gateway_shadow_comparisons_total", model="mlp_next", result="agree") == 0
    # argmax: the port picks the same class every time, the next version does not (chosen so in model_repo).
    port_argmax = metric(client, "gateway_shadow_argmax_agreement_ratio_sum", model="mlp_port")
    next_argmax = metric(client, "gateway_shadow_argmax_agreement_ratio_sum", model="mlp_next")
    assert port_argmax >= 5 and next_argmax < 5


def test_hanging_and_failing_shadows_leave_the_primary_alone(client: httpx.Client) -> None:
    def timed(model: str, n: int = 15) -> tuple[list[float], list[int]]:
        latencies, codes = [], []
        for _ in range(n):
            start = time.perf_counter()
            r = client.post(f"/v2/models/{model}/infer", json=X3)
            latencies.append(time.perf_counter() - start)
            codes.append(r.status_code)
            assert r.json()["outputs"][0]["data"] == [2, 4, 6], r.text
        return latencies, codes

    baseline, base_codes = timed("scale/versions/1")
    slow, slow_codes = timed("scale_slow_shadow")
    failing, failing_codes = timed("scale_failing_shadow")
    print(f"\nprimary p50: no shadow {statistics.median(baseline) * 1e3:.1f} ms, hanging shadow "
          f"{statistics.median(slow) * 1e3:.1f} ms, failing shadow {statistics.median(failing) * 1e3:.1f} ms")
    assert Counter(base_codes) == Counter(slow_codes) == Counter(failing_codes) == Counter({200: 15})
    # The hanging shadow holds each mirrored call for its 3 s timeout; had the primary waited, it would show.
    assert max(slow) < 1.5 and statistics.median(slow) < statistics.median(baseline) + 0.25
    assert statistics.median(failing) < statistics.median(baseline) + 0.25
    assert eventually(lambda: metric(client, "gateway_shadow_requests_total", model="scale_failing_shadow",
                                     outcome="error") >= 15)
    assert eventually(lambda: metric(client, "gateway_shadow_requests_total", model="scale_slow_shadow",
                                     outcome="timeout") >= 15, timeout=20)


def test_per_variant_request_metrics(client: httpx.Client) -> None:
    client.post("/v2/models/mlp_ab/infer", json=X4, headers={"x-model-variant": "torch"})
    assert metric(client, "gateway_requests_total", model="mlp_ab", variant="torch", backend="torchserve",
                  protocol="v2_rest", code="200") >= 1
    assert metric(client, "gateway_request_duration_seconds_count", model="mlp_ab", variant="torch") >= 1
    client.post("/v2/models/mlp_locked/infer", json=X4, headers={"x-model-version": "1"})
    # A refusal before routing has no model label: unknown names never become label values.
    assert metric(client, "gateway_requests_total", model="nope") == 0


def test_every_inference_is_measured_whatever_its_method_and_only_inferences(client: httpx.Client) -> None:
    """The data plane decides what is measured: a PUT /predictions is an inference (TorchServe takes both methods),
    a metadata or readiness request for the same model is not."""
    def count(protocol: str) -> float:
        return metric(client, "gateway_requests_total", model="scale", protocol=protocol)

    before, v2_before = count("torchserve_rest"), count("v2_rest")
    for method in ("POST", "PUT"):
        r = client.request(method, "/predictions/scale/1", json=X3)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2, 4, 6], r.text
    assert count("torchserve_rest") == before + 2
    assert client.get("/v2/models/scale").status_code == 200
    assert client.get("/v2/models/scale/ready").status_code == 200
    assert count("v2_rest") == v2_before


def test_shadow_over_grpc_fronts(gateway: Gateway, client: httpx.Client) -> None:
    before = metric(client, "gateway_shadow_comparisons_total", model="mlp_port")
    triton = tritongrpc.InferenceServerClient(url=gateway.grpc_target)
    try:
        for _ in range(3):
            inp = tritongrpc.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(np.array([[1, 2, 3, 4]], np.float32))
            assert triton.infer("mlp_port", [inp], client_timeout=30).as_numpy("probabilities").shape == (1, 3)
    finally:
        triton.close()
    assert eventually(lambda: metric(client, "gateway_shadow_comparisons_total", model="mlp_port") >= before + 3)
    assert metric(client, "gateway_shadow_comparisons_total", model="mlp_port", result="disagree") == 0
