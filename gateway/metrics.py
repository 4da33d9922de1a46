"""Metrics: every Prometheus metric the gateway exports, defined once; the data plane records, /metrics renders.

One ``Metrics`` per process, each with its own registry (nothing is registered on prometheus_client's global
default registry, so tests can build several).

Several uvicorn workers: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty, writable directory *before* the worker
processes start (prometheus_client reads it when it is first imported). Every worker then writes its values to
mmap files there, and ``render()`` in any worker merges all of them (a ``MultiProcessCollector``), so one scrape
of any worker sees the whole gateway. The directory must be emptied when the gateway (not a worker) starts,
else the previous run's counts are added in. Counters and histograms of a worker that exited stay part of the
totals. Gauges count only while their worker lives: ``gateway_inflight_requests`` is ``livesum``
(``inflight_all_workers`` skips the files of dead pids; a worker that exits cleanly removes its own through
``process_exiting``), so a rollout's drain sees every worker's requests in flight, not only its own;
``gateway_routes_revision`` and the ``process_*`` gauges are ``liveall`` (one series per worker, a ``pid`` label).
prometheus_client's own process collector reads only the scraped process, so ``sample_process`` copies this
process's figures into those gauges (the composition root calls it every few seconds in every worker).

Exemplars (trace ids on the latency histograms) need the OpenMetrics exposition and one process: prometheus_client
keeps none in multiprocess mode, so they appear with ``GATEWAY_WORKERS=1`` only.

Label values are small closed sets (models, versions and variants from the routes file, status codes,
protocols), so each labelled child is looked up once and cached in a dict keyed by its label tuple: recording
then costs one dict lookup plus the increments. Callers must not pass client-chosen strings (an unknown model's
name) as labels; map them to a fixed value first.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Final

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.process_collector import ProcessCollector

from gateway import __version__

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# 0.5 ms .. 30 s: a fast backend answers in about a millisecond, the largest backend timeout is tens of seconds.
DURATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                           30.0, math.inf)
DIFF_BUCKETS: Final = (*(float(f"1e{e}") for e in range(-9, 4)), math.inf)  # 1e-9 .. 1e3, log-spaced
RATIO_BUCKETS: Final = (0.5, 0.9, 0.99, 0.999, 1.0, math.inf)
SIZE_BUCKETS: Final = (*(256.0 * 4**i for i in range(10)), math.inf)  # 256 B .. 64 MiB (the default body limit)
# A non-finite diff (shape mismatch, NaN on one side only) is observed as this: it lands in the +Inf bucket like
# inf would, but keeps the histogram's _sum finite (an inf would turn _sum, and every rate() over it, into inf/NaN).
NONFINITE_DIFF: Final = 1e4

REQUEST_LABELS: Final = ("model", "version", "variant", "backend", "protocol", "code")
SHADOW_LABELS: Final = ("model", "primary_version", "shadow_version")
BACKEND_LABELS: Final = ("backend", "model", "version", "transport")
#: Kinds of failed backend calls: no connection (refused, unreachable, reset), no answer in time, an error answer.
BACKEND_ERROR_KINDS: Final = ("connect", "timeout", "status")
ALERTED_EVENTS: Final = ("rolled_back", "failed")  # rollout transitions an alert watches


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self.multiprocess = _multiprocess_mode()
        if self.multiprocess:
            # A dead worker's live gauges under this pid (reused) would be taken over: drop them first.
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]  # untyped in the library
            # Metric objects still register on self.registry (harmless); a scrape reads every worker's files.
            self._render_registry = CollectorRegistry()
            MultiProcessCollector(self._render_registry)  # type: ignore[no-untyped-call]  # untyped in the library
        else:
            self._render_registry = self.registry
        reg = self.registry
        self.requests = Counter("gateway_requests", "Inference requests answered, by served target and status "
                                "(HTTP status for REST fronts, gRPC code name for gRPC fronts).",
                                REQUEST_LABELS, registry=reg)
        self.duration = Histogram("gateway_request_duration_seconds", "Time from decoded request to answer.",
                                  REQUEST_LABELS[:-1], registry=reg, buckets=DURATION_BUCKETS)
        self.shadows = Counter("gateway_shadow_requests", "Mirrored (shadow) requests by outcome: "
                               "ok, error, timeout, or dropped (too many in flight, or shut down).",
                               (*SHADOW_LABELS, "outcome"), registry=reg)
        self.max_abs_diff = Histogram("gateway_shadow_max_abs_diff", "Largest |primary - shadow| over the "
                                      "compared outputs of one request (shape mismatch counts as +Inf).",
                                      SHADOW_LABELS, registry=reg, buckets=DIFF_BUCKETS)
        self.within_tolerance = Histogram("gateway_shadow_within_tolerance_ratio", "Fraction of output elements "
                                          "where the shadow matches the primary within tolerance.",
                                          SHADOW_LABELS, registry=reg, buckets=RATIO_BUCKETS)
        self.argmax_agreement = Histogram("gateway_shadow_argmax_agreement_ratio", "Fraction of rows of "
                                          "classifier outputs whose argmax agrees between primary and shadow.",
                                          SHADOW_LABELS, registry=reg, buckets=RATIO_BUCKETS)
        self.comparisons = Counter("gateway_shadow_comparisons", "Shadow answers compared with the primary's: "
                                   "agree when every element is within tolerance and every argmax agrees.",
                                   (*SHADOW_LABELS, "result"), registry=reg)
        self.assignments = Counter("gateway_assignments", "Experiment assignments by variant and how the "
                                   "variant was chosen (sticky, random, override, default, failover).",
                                   ("model", "experiment", "variant", "how"), registry=reg)
        self.inflight = Gauge("gateway_inflight_requests", "Backend calls in flight, by backend target (a "
                              "version is retired only once its count is 0 in every worker).",
                              ("backend", "model", "version"), registry=reg, multiprocess_mode="livesum")
        # Rollouts (gateway/control/orchestrator.py, in the worker that serves the admin API): their state, and every
        # transition of their history by event (who, when and why are in the admin API's history).
        self.routes_revision = Gauge("gateway_routes_revision", "The routes revision this worker serves (one "
                                     "series per worker: pid).", registry=reg, multiprocess_mode="liveall")
        self.routes_reload_ok = Gauge("gateway_routes_last_reload_successful", "1 when this worker's last read of "
                                      "the routes file was valid, 0 while it refuses the file (the previous routes "
                                      "keep serving).", registry=reg, multiprocess_mode="liveall")
        self.routes_reloads = Counter("gateway_routes_reloads", "Routes file reloads by result (success, failure).",
                                      ("result",), registry=reg)
        self.experiment_weight = Gauge("gateway_experiment_weight_ratio", "The weight the routes give each "
                                       "experiment variant (0..1; 0 once the variant is gone).",
                                       ("model", "experiment", "variant"), registry=reg,
                                       multiprocess_mode="livemostrecent")
        self.rollout_percent = Gauge("gateway_rollout_canary_percent", "Traffic share of the new version in the "
                                     "model's current (or last) rollout, percent.", ("model",), registry=reg,
                                     multiprocess_mode="livemostrecent")
        self.rollout_running = Gauge("gateway_rollout_running", "1 while a rollout of the model runs, else 0.",
                                     ("model",), registry=reg, multiprocess_mode="livemostrecent")
        self.rollout_leader = Gauge("gateway_rollout_leader", "1 while this process drives the rollouts (with the "
                                    "etcd store: the elected replica), else 0.", registry=reg,
                                    multiprocess_mode="livemax")
        self.rollout_transitions = Counter("gateway_rollout_transitions", "Rollout transitions by event: started, "
                                           "step, step_passed, promoted, rolled_back, aborted, failed, resumed, "
                                           "deploying, deployed, warmed_up, drained, unregistered, unloaded, ...",
                                           ("model", "event"), registry=reg)
        self.rollout_guards = {
            name: Gauge(f"gateway_rollout_guard_{name}", f"The running (or last) rollout's {doc} (NaN: not set).",
                        ("model",), registry=reg, multiprocess_mode="livemostrecent")
            for name, doc in (("max_error_ratio", "max_error_rate guard: the canary's largest server-error share"),
                              ("max_p99_seconds", "max_p99_s guard: the canary's largest p99"),
                              ("max_p99_ratio", "max_p99_ratio guard: the largest canary p99 / stable p99"))}
        # The backend calls behind the answers (primary and shadow calls), so that gateway overhead = request time -
        # backend time; model and version are the logical ones, as on gateway_requests.
        self.backend_duration = Histogram("gateway_backend_request_duration_seconds", "Time of the gateway's "
                                          "inference calls to a backend (connection wait included).",
                                          BACKEND_LABELS, registry=reg, buckets=DURATION_BUCKETS)
        self.backend_errors = Counter("gateway_backend_errors", "Failed backend calls by kind (connect, timeout, "
                                      "status) and code (the backend's HTTP status or gRPC code; empty for "
                                      "connect and timeout).", ("backend", "model", "version", "kind", "code"),
                                      registry=reg)
        self.request_size = Histogram("gateway_request_size_bytes", "Size of inference request bodies (REST) or "
                                      "messages (gRPC) as received.", ("model", "protocol"), registry=reg,
                                      buckets=SIZE_BUCKETS)
        self.response_size = Histogram("gateway_response_size_bytes", "Size of inference response bodies (REST) "
                                       "or messages (gRPC) as sent.", ("model", "protocol"), registry=reg,
                                       buckets=SIZE_BUCKETS)
        self.channel_state = Gauge("gateway_backend_channel_state", "gRPC backend channels per connectivity state "
                                   "(IDLE, CONNECTING, READY, TRANSIENT_FAILURE, SHUTDOWN), summed over workers.",
                                   ("backend", "state"), registry=reg, multiprocess_mode="livesum")
        build = Gauge("gateway_build_info", "1, with the gateway's version and its runtime's.",
                      ("version", "python_version", "grpc_version"), registry=reg, multiprocess_mode="livemax")
        build.labels(__version__, platform.python_version(), grpc.__version__).set(1)
        # This process's figures (``sample_process``), one series per worker in multiprocess mode.
        self.process_cpu = Counter("process_cpu_seconds", "Total user and system CPU time spent in seconds.",
                                   registry=reg)
        self.process_gauges = {
            name: Gauge(name, doc, registry=reg, multiprocess_mode="liveall")
            for name, doc in (("process_resident_memory_bytes", "Resident memory size in bytes."),
                              ("process_virtual_memory_bytes", "Virtual memory size in bytes."),
                              ("process_open_fds", "Number of open file descriptors."),
                              ("process_start_time_seconds", "Start time of the process since unix epoch in "
                               "seconds."))}
        self._process = ProcessCollector(registry=None)
        self._cpu_seen = 0.0
        self._weights_set: set[tuple[str, str, str]] = set()
        self._channels_set: set[tuple[str, str]] = set()
        self._backend_children: dict[tuple[str, ...], Histogram] = {}
        self._size_children: dict[tuple[str, str], tuple[Histogram, Histogram]] = {}
        # Client authentication and rate limits (gateway/auth/): tenant names come from the auth policy only.
        self.auth_refusals = Counter("gateway_auth_refusals", "Requests refused by client authentication (401: "
                                     "tenant empty, reason missing, invalid or expired) or authorization (403: "
                                     "reason forbidden, or unknown_tenant for a valid token naming no tenant).",
                                     ("tenant", "reason"), registry=reg)
        self.rate_limited_total = Counter("gateway_rate_limited", "Inference requests refused (429) by a rate "
                                          "limit, by tenant, model and the limit that refused (tenant, "
                                          "tenant_model, model).", ("tenant", "model", "limit"), registry=reg)
        self.tenant_requests = Counter("gateway_tenant_requests", "Inference requests a tenant was let through "
                                       "with (authentication on).", ("tenant",), registry=reg)
        self.rate_limit_rps = Gauge("gateway_rate_limit_rps", "Configured rate limits, requests per second for "
                                    "the whole gateway (every replica together): model * is a tenant's limit over "
                                    "every model, tenant * a model's over every tenant.", ("tenant", "model"),
                                    registry=reg, multiprocess_mode="livemax")
        self.rate_limit_burst = Gauge("gateway_rate_limit_burst", "The burst (bucket size) of those limits.",
                                      ("tenant", "model"), registry=reg, multiprocess_mode="livemax")
        self._auth_children: dict[tuple[str, ...], Counter] = {}
        self._admitted: dict[str, Counter] = {}
        # Staying up under load (gateway/admission.py, gateway/backends/endpoints.py, gateway/api/connections.py).
        self.admission_queue_length = Gauge("gateway_admission_queue_length", "Calls waiting for a call slot, by "
                                            "scope (backend, model) and its name, summed over workers.",
                                            ("scope", "name"), registry=reg, multiprocess_mode="livesum")
        self.admission_limit_value = Gauge("gateway_admission_limit", "Calls in flight a worker lets through, by "
                                           "scope and name (moves when adaptive).", ("scope", "name"), registry=reg,
                                           multiprocess_mode="liveall")
        self.admission_wait_seconds = Histogram("gateway_admission_wait_seconds", "Time admitted calls waited for "
                                                "their call slots, by backend.", ("backend",), registry=reg,
                                                buckets=DURATION_BUCKETS)
        self.admission_refusals = Counter("gateway_admission_refused", "Calls refused by admission control, by "
                                          "scope, name and reason (queue_full, wait_timeout).",
                                          ("scope", "name", "reason"), registry=reg)
        self.endpoints = Gauge("gateway_backend_endpoints", "A backend's endpoints by state (available, ejected, "
                               "unhealthy), as one worker sees them.", ("backend", "state"), registry=reg,
                               multiprocess_mode="liveall")
        self.ejections = Counter("gateway_backend_ejections", "Endpoints ejected after consecutive failures.",
                                 ("backend",), registry=reg)
        self.retries = Counter("gateway_backend_retries", "Retries of calls that never reached a backend, by result: "
                               "sent, or not sent (no_budget, no_time, no_endpoint).", ("backend", "result"),
                               registry=reg)
        self.connections_closed = Counter("gateway_connections_closed", "Client connections the gateway refused or "
                                          "closed on its own, by listener and reason (refused, header_timeout, "
                                          "body_timeout, idle).", ("listener", "reason"), registry=reg)
        self.connections_open = Gauge("gateway_connections_open", "Open client connections by listener, summed "
                                      "over workers.", ("listener",), registry=reg, multiprocess_mode="livesum")
        self._request_children: dict[tuple[str, ...], tuple[Counter, Histogram]] = {}
        self._shadow_children: dict[tuple[str, ...], Counter] = {}
        self._comparison_children: dict[tuple[str, ...], tuple[Histogram, Histogram, Histogram, Counter, Counter]] = {}
        self._assignment_children: dict[tuple[str, ...], Counter] = {}

    def request(self, *, model: str, version: str, variant: str, backend: str, protocol: str, code: str,
                seconds: float, received: int | None = None, sent: int | None = None, trace_id: str = "") -> None:
        """One answered request. protocol: v2_rest | v2_grpc | tf_rest | tf_grpc | torchserve_rest; code: the
        HTTP status as a string ("200") for REST, the gRPC code name ("OK") for gRPC; variant "" outside an
        experiment; received / sent: the request's and the answer's sizes in bytes, when known; trace_id: the
        request's trace (an exemplar on the latency histogram, in one-process mode)."""
        key = (model, version, variant, backend, protocol, code)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (self.requests.labels(*key), self.duration.labels(*key[:-1]))
        children[0].inc()
        if trace_id and not self.multiprocess:
            children[1].observe(seconds, exemplar={"trace_id": trace_id})
        else:
            children[1].observe(seconds)
        if received is not None or sent is not None:
            sizes = self._size_children.get((model, protocol))
            if sizes is None:
                sizes = self._size_children[(model, protocol)] = (self.request_size.labels(model, protocol),
                                                                  self.response_size.labels(model, protocol))
            if received is not None:
                sizes[0].observe(received)
            if sent is not None:
                sizes[1].observe(sent)

    def backend_call_child(self, backend: str, model: str, version: str, transport: str) -> Histogram:
        key = (backend, model, version, transport)
        child = self._backend_children.get(key)
        if child is None:
            child = self._backend_children[key] = self.backend_duration.labels(*key)
        return child

    def backend_error(self, *, backend: str, model: str, version: str, kind: str, code: str = "") -> None:
        """kind: connect | timeout | status (code: the backend's HTTP status or gRPC code name)."""
        self.backend_errors.labels(backend, model, version, kind, code).inc()

    def routes_reloaded(self, ok: bool, revision: int | None = None) -> None:
        """A read of the routes file: valid (and now served at ``revision``) or refused."""
        self.routes_reload_ok.set(1 if ok else 0)
        self.routes_reloads.labels("success" if ok else "failure").inc()
        if ok and revision is not None:
            self.routes_revision.set(revision)

    def experiment_weights(self, weights: dict[tuple[str, str, str], float]) -> None:
        """The routes' experiment weights, {(model, experiment, variant): 0..1}; variants no longer in the routes
        go to 0 (a multiprocess gauge cannot remove a series)."""
        for key in self._weights_set - weights.keys():
            self.experiment_weight.labels(*key).set(0)
        for key, weight in weights.items():
            self.experiment_weight.labels(*key).set(weight)
        self._weights_set = set(weights)

    def channel_states(self, states: Mapping[tuple[str, str], int]) -> None:
        """This worker's gRPC backend channels per (backend, connectivity state)."""
        for key in self._channels_set - states.keys():
            self.channel_state.labels(*key).set(0)
        for key, count in states.items():
            self.channel_state.labels(*key).set(count)
        self._channels_set = set(states)

    def sample_process(self) -> None:
        """Copy this process's CPU, memory and descriptors (read by prometheus_client from /proc) into the
        process_* metrics; a no-op where /proc is missing."""
        for family in self._process.collect():
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total":
                    self.process_cpu.inc(max(0.0, sample.value - self._cpu_seen))
                    self._cpu_seen = max(self._cpu_seen, sample.value)
                elif sample.name in self.process_gauges:
                    self.process_gauges[sample.name].set(sample.value)

    def shadow(self, *, model: str, primary_version: str, shadow_version: str, outcome: str) -> None:
        """outcome: ok | error | timeout | dropped."""
        key = (model, primary_version, shadow_version, outcome)
        child = self._shadow_children.get(key)
        if child is None:
            child = self._shadow_children[key] = self.shadows.labels(*key)
        child.inc()

    def comparison(self, *, model: str, primary_version: str, shadow_version: str, max_abs_diff: float,
                   within_tolerance: float, argmax_agreement: float | None) -> None:
        key = (model, primary_version, shadow_version)
        children = self._comparison_children.get(key)
        if children is None:
            children = self._comparison_children[key] = (
                self.max_abs_diff.labels(*key), self.within_tolerance.labels(*key),
                self.argmax_agreement.labels(*key), self.comparisons.labels(*key, "agree"),
                self.comparisons.labels(*key, "disagree"))
        diff_h, within_h, argmax_h, agree, disagree = children
        diff_h.observe(max_abs_diff if math.isfinite(max_abs_diff) else NONFINITE_DIFF)
        within_h.observe(within_tolerance)
        if argmax_agreement is not None:
            argmax_h.observe(argmax_agreement)
        if within_tolerance == 1.0 and (argmax_agreement is None or argmax_agreement == 1.0):
            agree.inc()
        else:
            disagree.inc()

    def assignment(self, *, model: str, experiment: str, variant: str, how: str) -> None:
        """how: sticky | random | override | default."""
        key = (model, experiment, variant, how)
        child = self._assignment_children.get(key)
        if child is None:
            child = self._assignment_children[key] = self.assignments.labels(*key)
        child.inc()

    def auth_refusal(self, *, tenant: str, reason: str) -> None:
        """reason: missing | invalid | expired (401, tenant "") | forbidden | unknown_tenant (403)."""
        self._auth_child("refusal", self.auth_refusals, tenant, reason).inc()

    def rate_limited(self, *, tenant: str, model: str, limit: str) -> None:
        """limit: tenant | tenant_model | model (the bucket that refused)."""
        self._auth_child("limited", self.rate_limited_total, tenant, model, limit).inc()

    def tenant_request(self, tenant: str) -> None:
        child = self._admitted.get(tenant)  # every request a tenant sends: one dict lookup
        if child is None:
            child = self._admitted[tenant] = self.tenant_requests.labels(tenant)
        child.inc()

    def rate_limit(self, *, tenant: str, model: str, rps: float, burst: int) -> None:
        self.rate_limit_rps.labels(tenant, model).set(rps)
        self.rate_limit_burst.labels(tenant, model).set(burst)

    def _auth_child(self, kind: str, counter: Counter, *labels: str) -> Counter:
        key = (kind, *labels)
        child = self._auth_children.get(key)
        if child is None:
            child = self._auth_children[key] = counter.labels(*labels)
        return child

    def rollout(self, *, model: str, percent: float, running: bool, events: Sequence[str] = (),
                guards: Mapping[str, float | None] | None = None) -> None:
        """A rollout's state now, the transitions recorded since the last call, and its guards (max_error_ratio,
        max_p99_seconds, max_p99_ratio; None: not set)."""
        self.rollout_percent.labels(model).set(percent)
        self.rollout_running.labels(model).set(1 if running else 0)
        for event in ALERTED_EVENTS:  # created at 0, so that increase() sees their first one
            self.rollout_transitions.labels(model, event)
        for event in events:
            self.rollout_transitions.labels(model, event).inc()
        if guards is not None:
            for name, gauge in self.rollout_guards.items():
                value = guards.get(name)
                gauge.labels(model).set(math.nan if value is None else value)

    def admission_queue(self, scope: str, name: str, waiting: int) -> None:
        self.admission_queue_length.labels(scope, name).set(waiting)

    def admission_limit(self, scope: str, name: str, limit: int) -> None:
        self.admission_limit_value.labels(scope, name).set(limit)

    def admission_wait(self, backend: str, seconds: float) -> None:
        self.admission_wait_seconds.labels(backend).observe(seconds)

    def admission_refused(self, scope: str, name: str, reason: str) -> None:
        self.admission_refusals.labels(scope, name, reason).inc()

    def endpoint_ejected(self, backend: str) -> None:
        self.ejections.labels(backend).inc()

    def backend_retry(self, backend: str, result: str) -> None:
        self.retries.labels(backend, result).inc()

    def endpoint_states(self, states: dict[str, dict[str, int]]) -> None:
        """{backend: {state: endpoints}}: this worker's view now."""
        for backend, counts in states.items():
            for state, n in counts.items():
                self.endpoints.labels(backend, state).set(n)

    def connection_closed(self, listener: str, reason: str) -> None:
        self.connections_closed.labels(listener, reason).inc()

    def inflight_child(self, backend: str, model: str, version: str) -> Gauge:
        return self.inflight.labels(backend, model, version)

    def inflight_all_workers(self, backend: str, model: str, version: str) -> int | None:
        """The in-flight gauge of that target summed over every live worker; None outside multiprocess mode (the
        caller's own count is the whole truth there)."""
        samples = self._live("livesum", "gateway_inflight_requests")
        if samples is None:
            return None
        return round(sum(value for labels, value in samples
                         if (labels.get("backend"), labels.get("model"), labels.get("version"))
                         == (backend, model, version)))

    def applied_revision_all_workers(self) -> int | None:
        """The oldest routes revision a live worker serves (every worker has applied at least this one); None
        outside multiprocess mode or before any worker set it."""
        samples = self._live("liveall", "gateway_routes_revision")
        return None if not samples else round(min(value for _, value in samples))

    def _live(self, mode: str, name: str) -> list[tuple[dict[str, str], float]] | None:
        """The samples of a ``live*`` gauge merged over the workers that still run; the files of workers that
        died without cleaning up (SIGKILL) are removed on the way. None outside multiprocess mode."""
        if not self.multiprocess:
            return None
        directory = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or ""
        files = []
        for path in glob.glob(os.path.join(directory, f"gauge_{mode}_*.db")):
            pid = _pid_of(path)
            if pid is not None and _alive(pid):
                files.append(path)
            elif pid is not None:
                with contextlib.suppress(OSError):
                    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]  # untyped in the library
        out: list[tuple[dict[str, str], float]] = []
        for family in MultiProcessCollector.merge(files, accumulate=False):  # type: ignore[no-untyped-call]
            if family.name == name:
                out.extend((sample.labels, sample.value) for sample in family.samples)
        return out

    def process_exiting(self) -> None:
        """A worker's clean exit: its live gauge files go (its in-flight count no longer counts)."""
        if self.multiprocess:
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]  # untyped in the library

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The Prometheus text exposition (every worker's, in multiprocess mode) and its content type; OpenMetrics
        (with exemplars) when ``accept`` (the scraper's Accept header) asks for it."""
        if "application/openmetrics-text" in accept:
            body = openmetrics.generate_latest(self._render_registry)  # type: ignore[no-untyped-call]  # untyped
            return body, openmetrics.CONTENT_TYPE_LATEST
        return generate_latest(self._render_registry), CONTENT_TYPE_PLAIN_0_0_4


def _multiprocess_mode() -> bool:
    """Whether values go to PROMETHEUS_MULTIPROC_DIR. prometheus_client picks its value class once, when it is
    imported; a mismatch with the environment now would silently count in one process only, so refuse it."""
    wanted = MULTIPROC_ENV in os.environ or MULTIPROC_ENV.lower() in os.environ
    active = bool(getattr(values.ValueClass, "_multiprocess", False))
    if wanted != active:
        raise RuntimeError(
            f"{MULTIPROC_ENV} is {'set' if wanted else 'unset'} but prometheus_client was imported when it was "
            f"{'unset' if wanted else 'set'}: set it before the gateway process (or worker) starts")
    return wanted


def _pid_of(path: str) -> int | None:
    """``gauge_livesum_<pid>.db`` -> pid."""
    try:
        return int(os.path.basename(path).rsplit("_", 1)[1].split(".", 1)[0])
    except (ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
