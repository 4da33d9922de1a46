"""Canary guards: the canary variant against the stable one over a step's window, from the gateway's metrics.

Two sources of the figures (:class:`GuardSource`):

- :class:`LocalGuards` (the default, one replica): the delta of cumulative counters and histogram buckets between
  two snapshots of this gateway's Prometheus text exposition (every worker's in multiprocess mode); the p99 is
  interpolated in the duration histogram's buckets as Prometheus' histogram_quantile does.
- :class:`PrometheusGuards` (several replicas, GATEWAY_GUARDS_PROMETHEUS_URL): PromQL over every replica Prometheus
  scrapes, as Argo Rollouts and Flagger do: ``increase()`` over the step's window summed by variant, and
  ``histogram_quantile(0.99, sum by (variant, le) (increase(..._bucket[w])))``.

Either way the verdict is the canary's server-error share (5xx and gRPC server-error codes) and its p99, absolute
and relative to the stable p99.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import ControlUnavailable

GRPC_SERVER_ERRORS = frozenset({"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS",
                                "UNIMPLEMENTED"})


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile from cumulative histogram buckets [(upper bound, count), ...] sorted by bound, last +Inf:
    linear interpolation inside the bucket that holds it (Prometheus' histogram_quantile); in the +Inf bucket the
    largest finite bound. None without observations."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > prev_count:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = (bound if not math.isinf(bound) else prev_bound), count
    return prev_bound


def is_error(code: str) -> bool:
    return code.startswith("5") or code in GRPC_SERVER_ERRORS


@dataclass(frozen=True)
class Window:
    """One variant's requests over a window: total, server errors, cumulative duration buckets."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()
    p99_s: float | None = None  # computed by Prometheus (no buckets then)

    @property
    def error_rate(self) -> float | None:
        return None if self.requests <= 0 else self.errors / self.requests

    def p99(self) -> float | None:
        return self.p99_s if self.p99_s is not None else quantile(0.99, self.buckets)

    def minus(self, start: Window) -> Window:
        before = dict(start.buckets)
        return Window(self.requests - start.requests, self.errors - start.errors,
                      tuple((b, c - before.get(b, 0.0)) for b, c in self.buckets))


def snapshot(exposition: str, model: str) -> dict[str, Window]:
    """Per experiment variant of ``model``: cumulative totals from a Prometheus text exposition of the gateway's
    metrics (gateway_requests by code, gateway_request_duration_seconds buckets), summed over the other labels."""
    requests: dict[str, float] = {}
    errors: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name not in ("gateway_requests", "gateway_request_duration_seconds"):
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or not labels.get("variant"):
                continue
            variant = labels["variant"]
            if sample.name == "gateway_requests_total":
                requests[variant] = requests.get(variant, 0.0) + sample.value
                if is_error(labels.get("code", "")):
                    errors[variant] = errors.get(variant, 0.0) + sample.value
            elif sample.name == "gateway_request_duration_seconds_bucket":
                per = buckets.setdefault(variant, {})
                le = float(labels["le"])
                per[le] = per.get(le, 0.0) + sample.value
    return {v: Window(requests.get(v, 0.0), errors.get(v, 0.0), tuple(sorted(buckets.get(v, {}).items())))
            for v in set(requests) | set(buckets)}


class GuardSource(Protocol):
    """Where a step's figures come from: ``begin`` marks the step's start, ``window`` gives each variant's
    requests, errors and p99 since that mark."""

    async def begin(self, model: str) -> Any: ...

    async def window(self, model: str, mark: Any) -> dict[str, Window]: ...


class LocalGuards:
    """This gateway's own metrics (every worker's on this host): the delta between two snapshots."""

    def __init__(self, exposition: Callable[[], str]) -> None:
        self.exposition = exposition

    async def begin(self, model: str) -> dict[str, Window]:
        return snapshot(await asyncio.to_thread(self.exposition), model)

    async def window(self, model: str, mark: dict[str, Window]) -> dict[str, Window]:
        now = snapshot(await asyncio.to_thread(self.exposition), model)
        return {v: w.minus(mark.get(v, Window())) for v, w in now.items()}


_ERROR_CODES = "5..|" + "|".join(sorted(GRPC_SERVER_ERRORS))


class PrometheusGuards:
    """PromQL over every replica: the step's window is ``[now - step start]`` (whole seconds, at least
    ``min_window_s``: increase() needs two scrapes in it). Each query has a timeout; an unreachable Prometheus
    counts as no figures yet (the step waits, and no verdict is made on missing data)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, min_window_s: float = 1.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.min_window_s = min_window_s
        self.last_error = ""

    async def begin(self, model: str) -> float:
        return time.time()

    @staticmethod
    def queries(model: str, window_s: int) -> dict[str, str]:
        selector = f'model="{_label(model)}",variant!=""'
        w = f"{window_s}s"
        return {
            "requests": f"sum by (variant) (increase(gateway_requests_total{{{selector}}}[{w}]))",
            "errors": f'sum by (variant) (increase(gateway_requests_total{{{selector},code=~"{_ERROR_CODES}"}}[{w}]))',
            "p99": "histogram_quantile(0.99, sum by (variant, le) "
                   f"(increase(gateway_request_duration_seconds_bucket{{{selector}}}[{w}])))",
        }

    async def window(self, model: str, mark: float) -> dict[str, Window]:
        elapsed = time.time() - mark
        if elapsed < self.min_window_s:
            return {}
        queries = self.queries(model, max(1, math.ceil(elapsed)))
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                answers = await asyncio.gather(*(self._query(client, q) for q in queries.values()))
        except (httpx.HTTPError, ControlUnavailable, ValueError) as exc:
            self.last_error = f"Prometheus at {self.url}: {exc}"
            return {}
        requests, errors, p99 = answers
        # increase() extrapolates each series on its own: the errors may come out a hair above the requests.
        return {v: Window(requests=n, errors=min(errors.get(v, 0.0), n), p99_s=p99.get(v))
                for v, n in requests.items()}

    async def _query(self, client: httpx.AsyncClient, query: str) -> dict[str, float]:
        r = await client.get(f"{self.url}/api/v1/query", params={"query": query})
        body = r.json()
        if r.status_code != 200 or body.get("status") != "success":
            raise ControlUnavailable(f"query refused ({r.status_code}): {body.get('error', r.text[:200])}")
        out = {}
        for sample in body["data"]["result"]:
            value = float(sample["value"][1])
            if math.isfinite(value):
                out[sample["metric"].get("variant", "")] = value
        return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


@dataclass(frozen=True)
class Guards:
    max_error_rate: float = 0.05  # the canary's server-error share over the step window
    max_p99_ratio: float | None = None  # canary p99 / stable p99
    max_p99_s: float | None = None  # canary p99, seconds
    min_requests: int = 20  # canary requests a step needs before it can pass (and before latency is judged)


@dataclass(frozen=True)
class Verdict:
    breach: str | None  # why the canary must be rolled back; None: no breach
    enough: bool  # the canary answered min_requests in the window
    figures: dict[str, Any]


def evaluate(guards: Guards, stable: Window, canary: Window) -> Verdict:
    """Judge the canary against the guards and the stable variant over the same window."""
    c_p99, s_p99 = canary.p99(), stable.p99()
    figures = {"canary_requests": canary.requests, "canary_errors": canary.errors,
               "canary_error_rate": canary.error_rate, "canary_p99_s": c_p99,
               "stable_requests": stable.requests, "stable_errors": stable.errors,
               "stable_error_rate": stable.error_rate, "stable_p99_s": s_p99}
    enough = canary.requests >= guards.min_requests
    rate = canary.error_rate
    # Errors count from the first few requests: min(min_requests, 5) keeps one early failure from deciding alone.
    if rate is not None and canary.requests >= min(guards.min_requests, 5) and rate > guards.max_error_rate:
        return Verdict(f"canary error rate {rate:.1%} ({canary.errors:g} of {canary.requests:g}) over "
                       f"max_error_rate {guards.max_error_rate:.1%}", enough, figures)
    if enough and c_p99 is not None:
        if guards.max_p99_s is not None and c_p99 > guards.max_p99_s:
            return Verdict(f"canary p99 {c_p99 * 1000:.1f} ms over max_p99_s {guards.max_p99_s * 1000:.1f} ms",
                           enough, figures)
        if (guards.max_p99_ratio is not None and s_p99 is not None and s_p99 > 0
                and stable.requests >= guards.min_requests and c_p99 / s_p99 > guards.max_p99_ratio):
            return Verdict(f"canary p99 {c_p99 * 1000:.1f} ms is {c_p99 / s_p99:.2f}x the stable p99 "
                           f"{s_p99 * 1000:.1f} ms, over max_p99_ratio {guards.max_p99_ratio:g}", enough, figures)
    return Verdict(None, enough, figures)
