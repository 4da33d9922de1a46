"""Shadow traffic: compare() on numeric, classifier and BYTES outputs; Shadows never delays or fails the caller,
bounds what is in flight, and counts every outcome."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
import pytest

from gateway.deadline import set_deadline, timeout_for
from gateway.errors import BackendError, BackendTimeout
from gateway.metrics import Metrics
from gateway.shadow import Comparison, Shadows, compare
from gateway.types import InferResponse, Tensor

LABELS = {"model": "mlp", "primary_version": "1", "shadow_version": "2"}


def answer(*tensors: tuple[str, Any] | tuple[str, Any, str]) -> InferResponse:
    out = []
    for name, data, *datatype in tensors:
        array = np.asarray(data, dtype=object if datatype == ["BYTES"] else np.float32)
        out.append(Tensor(name, datatype[0] if datatype else "FP32", array))
    return InferResponse(outputs=tuple(out))


# --- compare -------------------------------------------------------------------------------------------------


def test_identical() -> None:
    response = answer(("y", [[1.0, 2.0], [3.0, 4.0]]))
    assert compare(response, response, 1e-6) == Comparison(0.0, 1.0, 1.0, ("y",))


def test_within_tolerance_is_isclose_relative_to_the_primary() -> None:
    # |s - p| <= tol + tol*|p|: 100.05 vs 100.0 is inside 1e-3 (limit 0.101); 0.0015 vs 0.0 is not (limit 0.001).
    primary = answer(("y", [100.0, 0.0, 5.0, 7.0]))
    shadow = answer(("y", [100.05, 0.0015, 5.0, 7.0]))
    result = compare(primary, shadow, 1e-3)
    assert result.within_tolerance == 0.75
    assert result.max_abs_diff == pytest.approx(0.05, rel=1e-3)
    assert result.argmax_agreement is None
    assert result.compared == ("y",)


def test_beyond_tolerance() -> None:
    result = compare(answer(("y", [1.0, 2.0])), answer(("y", [1.5, 3.0])), 1e-3)
    assert result.max_abs_diff == pytest.approx(1.0)
    assert result.within_tolerance == 0.0


def test_shape_mismatch_is_infinitely_different() -> None:
    result = compare(answer(("y", [1.0, 2.0]), ("z", [1.0])), answer(("y", [1.0, 2.0, 3.0]), ("z", [1.0])), 1e-3)
    assert (result.max_abs_diff, result.within_tolerance, result.compared) == (math.inf, 0.0, ("y", "z"))


def test_nan_in_both_at_the_same_place_is_equal() -> None:
    nan = math.nan
    same = compare(answer(("y", [nan, 1.0, math.inf])), answer(("y", [nan, 1.0, math.inf])), 1e-6)
    assert (same.max_abs_diff, same.within_tolerance) == (0.0, 1.0)
    one_side = compare(answer(("y", [nan, 1.0, 2.0, 3.0])), answer(("y", [1.0, 1.0, 2.0, 3.0])), 1e-6)
    assert (one_side.max_abs_diff, one_side.within_tolerance) == (math.inf, 0.75)
    elsewhere = compare(answer(("y", [nan, 1.0])), answer(("y", [1.0, nan])), 1e-6)
    assert (elsewhere.max_abs_diff, elsewhere.within_tolerance) == (math.inf, 0.0)


def test_argmax_on_a_classifier_output() -> None:
    primary = answer(("scores", [[0.1, 0.7, 0.2], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4]]))
    agree = answer(("scores", [[0.2, 0.6, 0.2], [0.7, 0.2, 0.1], [0.3, 0.2, 0.5]]))
    disagree = answer(("scores", [[0.1, 0.7, 0.2], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2]]))
    close = compare(primary, agree, 1e-3)
    assert close.argmax_agreement == 1.0 and close.within_tolerance < 1.0
    assert compare(primary, disagree, 1e-3).argmax_agreement == pytest.approx(1 / 3)


def test_argmax_is_averaged_over_classifier_outputs_only() -> None:
    primary = answer(("a", [[1.0, 0.0], [0.0, 1.0]]), ("b", [[0.0, 1.0]]), ("single", [[1.0], [2.0]]))
    shadow = answer(("a", [[1.0, 0.0], [1.0, 0.0]]), ("b", [[0.0, 1.0]]), ("single", [[2.0], [1.0]]))
    assert compare(primary, shadow, 1e-6).argmax_agreement == pytest.approx((0.5 + 1.0) / 2)


def test_bytes_compare_for_equality() -> None:
    primary = answer(("label", [b"cat", b"dog"], "BYTES"), ("p", [0.5, 0.5]))
    same = compare(primary, answer(("label", [b"cat", b"dog"], "BYTES"), ("p", [0.5, 0.5])), 1e-6)
    assert same == Comparison(0.0, 1.0, None, ("label", "p"))
    differ = compare(primary, answer(("label", [b"cat", b"cow"], "BYTES"), ("p", [0.5, 0.5])), 1e-6)
    assert (differ.max_abs_diff, differ.within_tolerance) == (math.inf, 0.75)


def test_only_outputs_in_both_are_compared() -> None:
    result = compare(answer(("y", [1.0]), ("extra", [9.0])), answer(("other", [3.0]), ("y", [1.0])), 1e-6)
    assert result == Comparison(0.0, 1.0, None, ("y",))
    nothing = compare(answer(("y", [1.0])), answer(("z", [1.0])), 1e-6)
    assert (nothing.max_abs_diff, nothing.within_tolerance, nothing.compared) == (math.inf, 0.0, ())


def test_mixed_numeric_datatypes_compare_as_float64() -> None:
    primary = InferResponse((Tensor("y", "INT64", np.array([2**40, 3], dtype=np.int64)),))
    shadow = InferResponse((Tensor("y", "FP64", np.array([2.0**40, 3.0])),))
    assert compare(primary, shadow, 0.0) == Comparison(0.0, 1.0, None, ("y",))


@pytest.mark.parametrize("tolerance", [0.0, 1e-5, 1e-3, 1.0])
def test_within_tolerance_matches_numpy_isclose_on_special_values(tolerance: float) -> None:
    special = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, 1.00001, 1e308, -1e308, 1e-300, 5e-324, 2.0]
    pairs = [(p, s) for p in special for s in special]
    primary = InferResponse((Tensor("y", "FP64", np.array([p for p, _ in pairs])),))
    shadow = InferResponse((Tensor("y", "FP64", np.array([s for _, s in pairs])),))
    with np.errstate(all="ignore"):
        expected = np.isclose(shadow.outputs[0].data, primary.outputs[0].data, rtol=tolerance, atol=tolerance,
                              equal_nan=True)
    assert compare(primary, shadow, tolerance).within_tolerance == np.count_nonzero(expected) / len(pairs)


# --- Shadows -------------------------------------------------------------------------------------------------


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {**LABELS, **labels}) or 0.0


def counts(metrics: Metrics) -> dict[str, float]:
    return {outcome: sample(metrics, "gateway_shadow_requests_total", outcome=outcome)
            for outcome in ("ok", "error", "timeout", "dropped")}


def agreed(metrics: Metrics, result: str = "agree") -> float:
    return sample(metrics, "gateway_shadow_comparisons_total", result=result)


PRIMARY = answer(("y", [[0.2, 0.8]]))


async def test_a_slow_shadow_never_delays_submit() -> None:
    metrics = Metrics()
    shadows = Shadows(metrics)
    release = asyncio.Event()

    async def slow() -> InferResponse:
        await release.wait()
        return PRIMARY

    start = time.perf_counter()
    assert shadows.submit(**LABELS, call=slow, primary=PRIMARY, tolerance=1e-6, timeout_s=30)
    assert time.perf_counter() - start < 0.05
    assert shadows.pending == 1
    release.set()
    await shadows.close()
    assert shadows.pending == 0
    assert counts(metrics) == {"ok": 1, "error": 0, "timeout": 0, "dropped": 0}
    assert agreed(metrics) == 1


async def test_a_differing_shadow_is_recorded_as_disagreeing() -> None:
    metrics = Metrics()
    shadows = Shadows(metrics)

    async def other() -> InferResponse:
        return answer(("y", [[0.9, 0.1]]))

    shadows.submit(**LABELS, call=other, primary=PRIMARY, tolerance=1e-3, timeout_s=1)
    await shadows.close()
    assert (agreed(metrics, "agree"), agreed(metrics, "disagree")) == (0, 1)
    assert sample(metrics, "gateway_shadow_argmax_agreement_ratio_count") == 1
    assert sample(metrics, "gateway_shadow_argmax_agreement_ratio_bucket", le="0.5") == 1


async def test_max_pending_drops_and_counts() -> None:
    metrics = Metrics()
    shadows = Shadows(metrics, max_pending=2)
    release = asyncio.Event()
    calls = 0

    async def held() -> InferResponse:
        nonlocal calls
        calls += 1
        await release.wait()
        return PRIMARY

    submitted = [shadows.submit(**LABELS, call=held, primary=PRIMARY, tolerance=1e-6, timeout_s=30)
                 for _ in range(5)]
    assert submitted == [True, True, False, False, False]
    assert shadows.pending == 2
    release.set()
    await shadows.close()
    assert calls == 2  # a dropped shadow never calls the backend
    assert counts(metrics) == {"ok": 2, "error": 0, "timeout": 0, "dropped": 3}


async def test_errors_and_timeouts_are_counted_and_swallowed() -> None:
    metrics = Metrics()
    shadows = Shadows(metrics)

    async def fails() -> InferResponse:
        raise BackendError("boom")

    async def hangs() -> InferResponse:
        await asyncio.sleep(30)
        return PRIMARY

    async def backend_timeout() -> InferResponse:
        raise BackendTimeout("backend did not answer")

    def not_even_a_coroutine() -> Any:
        raise ValueError("raised when called")

    for call in (fails, hangs, backend_timeout, not_even_a_coroutine):
        assert shadows.submit(**LABELS, call=call, primary=PRIMARY, tolerance=1e-6, timeout_s=0.05)
    await asyncio.wait_for(shadows.close(), 5)
    assert counts(metrics) == {"ok": 0, "error": 2, "timeout": 2, "dropped": 0}
    assert agreed(metrics) + agreed(metrics, "disagree") == 0


async def test_close_cancels_what_is_still_running() -> None:
    metrics = Metrics()
    shadows = Shadows(metrics)
    cancelled = asyncio.Event()

    async def forever() -> InferResponse:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return PRIMARY

    shadows.submit(**LABELS, call=forever, primary=PRIMARY, tolerance=1e-6, timeout_s=60)
    await asyncio.sleep(0)
    start = time.perf_counter()
    await shadows.close(timeout_s=0.05)
    assert time.perf_counter() - start < 1
    assert cancelled.is_set() and shadows.pending == 0
    assert counts(metrics)["dropped"] == 1
    # Closed: later shadows are refused, never started.
    assert not shadows.submit(**LABELS, call=forever, primary=PRIMARY, tolerance=1e-6, timeout_s=60)
    assert shadows.pending == 0 and counts(metrics)["dropped"] == 2


async def test_the_shadow_does_not_inherit_the_clients_deadline() -> None:
    shadows = Shadows(Metrics())
    seen: list[float] = []

    async def reads_deadline() -> InferResponse:
        seen.append(timeout_for(30.0))
        return PRIMARY

    async def request() -> None:  # a front's request task: its own context, with the client's deadline
        set_deadline(0.5)
        shadows.submit(**LABELS, call=reads_deadline, primary=PRIMARY, tolerance=1e-6, timeout_s=5)

    await asyncio.create_task(request())
    await shadows.close()
    assert seen == [30.0]


def test_submit_without_a_running_loop_does_not_raise() -> None:
    async def never() -> InferResponse:  # pragma: no cover - must not be called
        raise AssertionError

    assert not Shadows(Metrics()).submit(**LABELS, call=never, primary=PRIMARY, tolerance=1e-6, timeout_s=1)
