"""Metrics: the exposition has every family with the right labels and values; instances are independent;
multiprocess mode merges every worker's values."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import DIFF_BUCKETS, DURATION_BUCKETS, MULTIPROC_ENV, NONFINITE_DIFF, Metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

REQ = {"model": "mlp", "version": "2", "variant": "b", "backend": "ts", "protocol": "v2_rest"}
SHADOW = {"model": "mlp", "primary_version": "1", "shadow_version": "2"}


def samples(metrics: Metrics) -> Samples:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_request_counter_and_duration_histogram() -> None:
    metrics = Metrics()
    metrics.request(**REQ, code="200", seconds=0.003)
    metrics.request(**REQ, code="200", seconds=0.2)
    metrics.request(**REQ, code="503", seconds=0.0004)
    metrics.request(**{**REQ, "protocol": "v2_grpc"}, code="UNAVAILABLE", seconds=45.0)
    found = samples(metrics)
    assert value(found, "gateway_requests_total", **REQ, code="200") == 2
    assert value(found, "gateway_requests_total", **REQ, code="503") == 1
    assert value(found, "gateway_requests_total", **{**REQ, "protocol": "v2_grpc"}, code="UNAVAILABLE") == 1
    # Duration has no code label: the three v2_rest requests share one series.
    assert value(found, "gateway_request_duration_seconds_count", **REQ) == 3
    assert value(found, "gateway_request_duration_seconds_sum", **REQ) == pytest.approx(0.2034)
    buckets = {le: value(found, "gateway_request_duration_seconds_bucket", **REQ, le=le)
               for le in ("0.0005", "0.001", "0.005", "0.25", "30.0", "+Inf")}
    assert buckets == {"0.0005": 1, "0.001": 1, "0.005": 2, "0.25": 3, "30.0": 3, "+Inf": 3}
    grpc = {**REQ, "protocol": "v2_grpc"}
    assert value(found, "gateway_request_duration_seconds_bucket", **grpc, le="30.0") == 0
    assert value(found, "gateway_request_duration_seconds_bucket", **grpc, le="+Inf") == 1


def test_bucket_layouts() -> None:
    assert DURATION_BUCKETS[0] == 0.0005 and DURATION_BUCKETS[-2:] == (30.0, math.inf)
    assert list(DIFF_BUCKETS) == [1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0,
                                  math.inf]
    metrics = Metrics()
    metrics.comparison(**SHADOW, max_abs_diff=0.0, within_tolerance=1.0, argmax_agreement=None)
    les = [dict(labels)["le"] for name, labels in samples(metrics) if name == "gateway_shadow_max_abs_diff_bucket"]
    assert les == ["1e-09", "1e-08", "1e-07", "1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1", "1.0", "10.0",
                   "100.0", "1000.0", "+Inf"]
    ratio_les = [dict(labels)["le"] for name, labels in samples(metrics)
                 if name == "gateway_shadow_within_tolerance_ratio_bucket"]
    assert ratio_les == ["0.5", "0.9", "0.99", "0.999", "1.0", "+Inf"]


def test_shadow_outcomes_and_assignments() -> None:
    metrics = Metrics()
    for outcome in ("ok", "ok", "error", "timeout", "dropped"):
        metrics.shadow(**SHADOW, outcome=outcome)
    metrics.assignment(model="mlp", experiment="exp", variant="a", how="sticky")
    metrics.assignment(model="mlp", experiment="exp", variant="a", how="sticky")
    metrics.assignment(model="mlp", experiment="exp", variant="b", how="override")
    found = samples(metrics)
    assert value(found, "gateway_shadow_requests_total", **SHADOW, outcome="ok") == 2
    for outcome in ("error", "timeout", "dropped"):
        assert value(found, "gateway_shadow_requests_total", **SHADOW, outcome=outcome) == 1
    assert value(found, "gateway_assignments_total", model="mlp", experiment="exp", variant="a", how="sticky") == 2
    assert value(found, "gateway_assignments_total", model="mlp", experiment="exp", variant="b", how="override") == 1


def test_comparisons_agree_and_disagree() -> None:
    metrics = Metrics()
    metrics.comparison(**SHADOW, max_abs_diff=1e-7, within_tolerance=1.0, argmax_agreement=None)
    metrics.comparison(**SHADOW, max_abs_diff=1e-7, within_tolerance=1.0, argmax_agreement=1.0)
    metrics.comparison(**SHADOW, max_abs_diff=0.5, within_tolerance=0.95, argmax_agreement=1.0)
    metrics.comparison(**SHADOW, max_abs_diff=1e-7, within_tolerance=1.0, argmax_agreement=2 / 3)
    metrics.comparison(**SHADOW, max_abs_diff=math.inf, within_tolerance=0.0, argmax_agreement=0.0)
    found = samples(metrics)
    assert value(found, "gateway_shadow_comparisons_total", **SHADOW, result="agree") == 2
    assert value(found, "gateway_shadow_comparisons_total", **SHADOW, result="disagree") == 3
    assert value(found, "gateway_shadow_max_abs_diff_count", **SHADOW) == 5
    assert value(found, "gateway_shadow_max_abs_diff_bucket", **SHADOW, le="1e-06") == 3
    assert value(found, "gateway_shadow_max_abs_diff_bucket", **SHADOW, le="1000.0") == 4
    assert value(found, "gateway_shadow_max_abs_diff_bucket", **SHADOW, le="+Inf") == 5
    # The shape-mismatch inf lands in +Inf but keeps _sum finite.
    assert value(found, "gateway_shadow_max_abs_diff_sum", **SHADOW) == pytest.approx(0.5 + 3e-7 + NONFINITE_DIFF)
    assert value(found, "gateway_shadow_within_tolerance_ratio_bucket", **SHADOW, le="0.5") == 1
    assert value(found, "gateway_shadow_within_tolerance_ratio_bucket", **SHADOW, le="0.99") == 2
    assert value(found, "gateway_shadow_within_tolerance_ratio_bucket", **SHADOW, le="1.0") == 5
    # argmax None is not observed.
    assert value(found, "gateway_shadow_argmax_agreement_ratio_count", **SHADOW) == 4
    assert value(found, "gateway_shadow_argmax_agreement_ratio_bucket", **SHADOW, le="0.9") == 2


def test_instances_do_not_share_state() -> None:
    first, second = Metrics(), Metrics()
    first.request(**REQ, code="200", seconds=0.01)
    assert value(samples(first), "gateway_requests_total", **REQ, code="200") == 1
    assert value(samples(second), "gateway_requests_total", **REQ, code="200") is None
    assert first.registry is not second.registry


def test_families_are_declared_before_any_call() -> None:
    body, _ = Metrics().render()
    for family in ("gateway_requests_total counter", "gateway_request_duration_seconds histogram",
                   "gateway_shadow_requests_total counter", "gateway_shadow_max_abs_diff histogram",
                   "gateway_shadow_within_tolerance_ratio histogram", "gateway_shadow_argmax_agreement_ratio histogram",
                   "gateway_shadow_comparisons_total counter", "gateway_assignments_total counter"):
        assert f"# TYPE {family}\n".encode() in body


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """PROMETHEUS_MULTIPROC_DIR for this test only. prometheus_client chose its value class when it was imported,
    so swap in the multiprocess one too (monkeypatch puts the in-process one back) and close its files after."""
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    value_class = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    monkeypatch.setattr(values, "ValueClass", value_class)
    yield tmp_path
    value_class.close_all_files()


WORKER = textwrap.dedent("""
    from gateway.metrics import Metrics
    m = Metrics()
    m.request(model="mlp", version="2", variant="b", backend="ts", protocol="v2_rest", code="200", seconds=0.003)
    m.shadow(model="mlp", primary_version="1", shadow_version="2", outcome="timeout")
""")


def test_multiprocess_mode_sees_every_worker(multiproc_dir: Path) -> None:
    metrics = Metrics()
    assert metrics.multiprocess
    metrics.request(**REQ, code="200", seconds=0.2)
    metrics.shadow(**SHADOW, outcome="ok")
    # Another worker process writing to the same directory.
    subprocess.run([sys.executable, "-c", WORKER], check=True, timeout=60)
    assert len(list(multiproc_dir.glob("*.db"))) >= 2
    found = samples(metrics)
    assert value(found, "gateway_requests_total", **REQ, code="200") == 2
    assert value(found, "gateway_request_duration_seconds_count", **REQ) == 2
    assert value(found, "gateway_request_duration_seconds_bucket", **REQ, le="0.005") == 1
    assert value(found, "gateway_request_duration_seconds_bucket", **REQ, le="+Inf") == 2
    assert value(found, "gateway_shadow_requests_total", **SHADOW, outcome="ok") == 1
    assert value(found, "gateway_shadow_requests_total", **SHADOW, outcome="timeout") == 1


def test_multiprocess_env_set_after_import_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR is set but prometheus_client was imported"):
        Metrics()
