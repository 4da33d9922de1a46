"""Shadow traffic: after the primary answered, the same request goes to a shadow version in the background, and
its answer is compared with the primary's. Nothing here can delay, fail or cancel the primary request."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.errors import BackendTimeout
from gateway.metrics import Metrics
from gateway.types import InferResponse, Tensor

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]


@dataclass(frozen=True, slots=True)
class Comparison:
    max_abs_diff: float
    within_tolerance: float
    argmax_agreement: float | None
    compared: tuple[str, ...]


@dataclass(slots=True)
class _Tally:
    """Running totals over the compared outputs."""

    max_abs_diff: float = 0.0
    elements: int = 0
    within: int = 0
    mismatch: bool = False
    argmax: list[float] = field(default_factory=list)  # one agreement fraction per classifier output


def compare(primary: InferResponse, shadow: InferResponse, tolerance: float) -> Comparison:
    """Compare the outputs both answers have (matched by name, in the primary's order).

    Numeric outputs (any integer, float or BOOL datatype, compared as float64): an element is within tolerance
    when ``numpy.isclose(shadow, primary, rtol=tolerance, atol=tolerance, equal_nan=True)``, i.e.
    ``|shadow - primary| <= tolerance + tolerance * |primary|``; NaN in both at the same place, or the same
    infinity, counts as equal (diff 0), NaN on one side only as diff inf. BYTES outputs are compared for equality
    (diff 0 or inf per element). A shape mismatch, or BYTES on one side only, in any compared output makes the whole
    comparison max_abs_diff=inf, within_tolerance=0. No output in common is the same: nothing agrees.
    argmax_agreement: over numeric outputs of rank 2 with more than one column (classifier scores), the fraction of
    rows whose argmax agrees, averaged over such outputs (0 for such an output whose shapes differ); None if none.
    """
    shadow_by_name = {t.name: t for t in shadow.outputs}
    pairs = [(t, shadow_by_name[t.name]) for t in primary.outputs if t.name in shadow_by_name]
    tally = _Tally()
    for p, s in pairs:
        _compare_one(p, s, tolerance, tally)
    compared = tuple(p.name for p, _ in pairs)
    argmax = float(np.mean(tally.argmax)) if tally.argmax else None
    if tally.mismatch or not pairs:
        return Comparison(float("inf"), 0.0, argmax, compared)
    within = 1.0 if tally.elements == 0 else tally.within / tally.elements
    return Comparison(tally.max_abs_diff, within, argmax, compared)


def _compare_one(primary: Tensor, shadow: Tensor, tolerance: float, tally: _Tally) -> None:
    p_bytes, s_bytes = primary.datatype == "BYTES", shadow.datatype == "BYTES"
    classifier = not p_bytes and primary.data.ndim == 2 and primary.data.shape[1] > 1
    if p_bytes != s_bytes or primary.data.shape != shadow.data.shape:
        tally.mismatch = True
        if classifier:
            tally.argmax.append(0.0)
        return
    if p_bytes:
        equal = np.asarray(primary.data == shadow.data, dtype=bool)
        close, diff = equal, (0.0 if equal.all() else float("inf"))
    else:
        close, diff = _numeric(primary.data.astype(np.float64), shadow.data.astype(np.float64), tolerance)
    tally.max_abs_diff = max(tally.max_abs_diff, diff)
    tally.elements += close.size
    tally.within += int(np.count_nonzero(close))
    if classifier and primary.data.shape[0] > 0:
        agree = np.argmax(primary.data, axis=1) == np.argmax(shadow.data, axis=1)
        tally.argmax.append(float(np.mean(agree)))


def _numeric(a: Array, b: Array, tolerance: float) -> tuple[Array, float]:
    """Which elements are close, and the largest |a - b|. Same result as ``numpy.isclose(b, a, rtol=tolerance,
    atol=tolerance, equal_nan=True)``, cheaper: the differences are needed for the maximum anyway."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, 0 * inf, NaN and overflow are expected here
        diff = np.abs(a - b)
        same = (a == b) | (np.isnan(a) & np.isnan(b))  # also the same infinity
        diff[same] = 0.0
        diff[np.isnan(diff)] = np.inf  # NaN on one side only, or inf against NaN
        close = same | (np.isfinite(diff) & (diff <= tolerance + tolerance * np.abs(a)))
    return close, float(diff.max()) if diff.size else 0.0


class Shadows:
    """Background shadow calls, at most ``max_pending`` in flight; the rest are dropped and counted."""

    def __init__(self, metrics: Metrics, *, max_pending: int = 64) -> None:
        self.metrics = metrics
        self.max_pending = max_pending
        # Strong references: the event loop keeps only weak ones, and a collected task would vanish mid-flight.
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(self, *, model: str, primary_version: str, shadow_version: str,
               call: Callable[[], Awaitable[InferResponse]], primary: InferResponse, tolerance: float,
               timeout_s: float) -> bool:
        """Start ``call()`` in the background and return at once; False (counted "dropped") when too many are
        in flight or the shadows are closed. Never raises. Must be called from a coroutine on the event loop."""
        labels = {"model": model, "primary_version": primary_version, "shadow_version": shadow_version}
        try:
            if self._closed or len(self._tasks) >= self.max_pending:
                self.metrics.shadow(**labels, outcome="dropped")
                return False
            # A fresh context: the shadow must not inherit the client's request state, such as its deadline
            # (gateway.deadline), which would cut the shadow call short once the primary has answered.
            task = asyncio.get_running_loop().create_task(
                self._run(labels, call, primary, tolerance, timeout_s), context=contextvars.Context())
        except Exception:
            log.debug("shadow for %s not started", model, exc_info=True)
            return False
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, labels: dict[str, str], call: Callable[[], Awaitable[InferResponse]],
                   primary: InferResponse, tolerance: float, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                response = await call()
        except asyncio.CancelledError:
            self.metrics.shadow(**labels, outcome="dropped")  # cancelled by close()
            raise
        except (TimeoutError, BackendTimeout):
            self.metrics.shadow(**labels, outcome="timeout")
            return
        except Exception:
            log.debug("shadow call to %s failed", labels, exc_info=True)
            self.metrics.shadow(**labels, outcome="error")
            return
        self.metrics.shadow(**labels, outcome="ok")
        try:
            result = compare(primary, response, tolerance)
            self.metrics.comparison(**labels, max_abs_diff=result.max_abs_diff,
                                    within_tolerance=result.within_tolerance,
                                    argmax_agreement=result.argmax_agreement)
        except Exception:
            log.debug("shadow comparison for %s failed", labels, exc_info=True)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Refuse new shadows, give those in flight up to ``timeout_s`` to finish, then cancel the rest."""
        self._closed = True
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
