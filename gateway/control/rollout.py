"""Canary rollouts over the routes file: traffic side only (the new version must already be loaded on its backend).

A rollout moves a model from ``from_version`` to ``to_version`` through canary steps (e.g. 5, 25, 50, 100 percent).
Each step is one routes write through :mod:`gateway.routes.writer` (validated, compare-and-swap, atomic): the
model gets an experiment ``canary`` with variants ``stable`` (from_version, weight 100-p) and ``canary``
(to_version, weight p); at 100 the experiment goes and ``default_version`` becomes to_version (promoted). A
rollback (automatic or asked for) and an abort write the model back to from_version only, in one write.

During each step's dwell the orchestrator reads the gateway's own metrics (``Metrics.render()``, every worker's in
multiprocess mode) every ``check_interval_s`` and compares the canary variant with the stable one over the step's
window (counter and histogram deltas since the step was applied): the canary's 5xx share (and gRPC server-error
codes) against ``max_error_rate``, its approximate p99 (interpolated in the duration histogram's buckets, as
Prometheus' histogram_quantile does) against ``max_p99_s`` and ``max_p99_ratio`` x the stable p99. A breach rolls
back at once; a step passes when its dwell is over and the canary answered at least ``min_requests`` requests
(else the step waits for traffic).

State: one JSON file per model in ``<routes file>.rollouts/`` next to the routes file, written atomically (temp
file, fsync, rename) after every routes write. The routes are always written first, each write whole: after a
crash the routes are all-old, a step, or promoted, never a mix. On start the orchestrator reconciles each running
rollout with the routes file (the applied step is read back from the routes, which win over the state file) and
resumes its dwell; routes that match none of the rollout's steps (someone edited them) end the rollout as
``aborted`` without touching the routes.

Lifecycle: with ``deploy`` the orchestrator first loads the new version on its backend and waits until it serves;
with ``warmup`` (a list of v2 JSON inference bodies, or {"body": ..., "count": N}) it then sends each sample
straight to the new target through the gateway's data plane (the backend adapter without one). Either failing
ends the rollout as ``failed`` with the reason, before any traffic step (the routes are not written). With
``retire`` a promoted rollout drains the old version and unloads it; a version that the routes file still sends
traffic to (a default, experiment variant, label or shadow of any model) is never unloaded. The backend's kind
picks what deploy and retire do (:mod:`gateway.control.backend_lifecycle`); ``deploy`` is checked per kind at
start (400), as is what the backend needs:

* TorchServe (management_url, token_file): ``deploy`` {"archive": file in the model store, "workers"?,
  "timeout_s"?} registers the archive and waits for a READY worker; retire moves TorchServe's default to the new
  version, drains (TorchServe's queue and the gateway's in-flight count for that target both 0), unregisters.
* TF Serving (model_config_file: the models.config TF Serving was started with, and grpc_target): ``deploy``
  {"timeout_s"?} only, the version's directory must already exist under the model's base_path. It sets the
  model's policy in the file to ``specific`` {the versions served now (a latest/all policy becomes the versions
  TF Serving reports AVAILABLE) + the new one}, writes the file atomically, reloads TF Serving with that whole
  list (HandleReloadConfigRequest) and waits for AVAILABLE; on failure the file is put back (and reloaded), so
  that TF Serving's poller does not retry the version. Retire drains (the gateway's in-flight count for that
  target: TF Serving finishes the requests holding a servable itself), writes the file without the old version,
  reloads and waits until TF Serving reports it END or no longer lists it. A version a label in the file points
  at is never removed (retire_skipped). Other models in the file are left as they are.

History events of the lifecycle, in order: ``deploying``, ``deployed`` (or ``failed``), ``warming_up``,
``warmed_up``, then after ``promoted``: ``backend_default`` (TorchServe, when the old and new versions are one
TorchServe model), ``draining``, ``drained``, then ``unregistered`` (TorchServe) or ``unloaded`` (TF Serving);
``retire_skipped`` or ``retire_failed`` instead when the old version stays. Every transition is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.backends.base import Backends
from gateway.codecs import v2_json
from gateway.control.backend_lifecycle import (
    BackendLifecycle,
    ConfigFiles,
    Note,
    RetireSkipped,
    SpecError,
    describe,
    lifecycle_class,
    lifecycle_for,
)
from gateway.routes import writer
from gateway.routes.schema import BackendConfig, RoutesConfig, VersionConfig, load_routes
from gateway.routes.table import RouteTable
from gateway.types import ModelRef

if TYPE_CHECKING:
    from gateway.dataplane import DataPlane
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.rollout")

State = Literal["running", "promoted", "rolled_back", "aborted", "failed"]
STABLE, CANARY = "stable", "canary"
EXPERIMENT = "canary"
DEFAULT_STEPS: tuple[float, ...] = (5, 25, 50, 100)
GRPC_SERVER_ERRORS = frozenset({"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS",
                                "UNIMPLEMENTED"})
_WRITE_ATTEMPTS = 8
RETIRE_DONE = frozenset({"retired", "retire_failed", "retire_skipped"})  # phases after which no retire resumes
WARMUP_TIMEOUT_S = 30.0
APPLY_TIMEOUT_S = 15.0  # every worker polls the routes every GATEWAY_ROUTES_POLL_S (0.5 s by default)
MAX_WARMUP_SAMPLES = 1000


class RolloutError(Exception):
    """A refused rollout operation; ``status`` is the HTTP status the admin API answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- pure parts: steps, histogram quantiles, guards --------------------------------------------------------------

def plan_steps(steps: Sequence[Any] | None) -> list[float]:
    """Canary percentages, strictly increasing, in (0, 100], ending at 100 (added when missing)."""
    raw = list(DEFAULT_STEPS if steps is None else steps)
    out: list[float] = []
    for s in raw:
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or not 0 < s <= 100:
            raise RolloutError(400, f"steps: each step must be a percentage in (0, 100], got {s!r}")
        if out and s <= out[-1]:
            raise RolloutError(400, f"steps: must increase strictly, got {raw!r}")
        out.append(float(s))
    if not out or out[-1] != 100:
        out.append(100.0)
    return out


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

    @property
    def error_rate(self) -> float | None:
        return None if self.requests <= 0 else self.errors / self.requests

    def p99(self) -> float | None:
        return quantile(0.99, self.buckets)

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


@dataclass(frozen=True)
class Guards:
    max_error_rate: float = 0.05  # the canary's server-error share over the step window
    max_p99_ratio: float | None = None  # canary p99 / stable p99
    max_p99_s: float | None = None  # canary p99, seconds
    min_requests: int = 20  # canary requests a step needs before it can pass (and before latency is judged)

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> Guards:
        g = cls()
        values: dict[str, Any] = {}
        for name in ("max_error_rate", "max_p99_ratio", "max_p99_s"):
            v = spec.get(name, getattr(g, name))
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0
                                  or not math.isfinite(v)):
                raise RolloutError(400, f"{name} must be a number >= 0, got {v!r}")
            values[name] = None if v is None else float(v)
        m = spec.get("min_requests", g.min_requests)
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise RolloutError(400, f"min_requests must be an integer >= 1, got {m!r}")
        if values["max_error_rate"] is None:
            raise RolloutError(400, "max_error_rate is required (the canary's 5xx share that rolls it back)")
        return cls(max_error_rate=values["max_error_rate"], max_p99_ratio=values["max_p99_ratio"],
                   max_p99_s=values["max_p99_s"], min_requests=m)


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


# --- rollout state and its file ----------------------------------------------------------------------------------

@dataclass
class Rollout:
    model: str
    from_version: str
    to_version: str
    steps: list[float]
    dwell_s: float
    guards: Guards
    sticky_header: str | None = None
    state: State = "running"
    step_index: int = -1  # the last applied step (-1: none, all traffic on from_version)
    percent: float = 0.0  # the canary share now in the routes
    routes_revision: int | None = None  # the revision of the last routes write of this rollout
    reason: str = ""  # why it ended
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    history: list[dict[str, Any]] = field(default_factory=list)
    # Lifecycle: deploy + wait until it serves before the first step, warm-up, drain + unload after.
    deploy: dict[str, Any] | None = None  # TorchServe {"archive", "workers", "timeout_s"}; TF Serving {"timeout_s"}
    warmup: list[dict[str, Any]] = field(default_factory=list)  # v2 JSON inference bodies
    retire: bool = False
    phase: str = ""  # deploying | warming_up | canary | retiring | retired | retire_failed | retire_skipped

    def record(self, event: str, who: str, why: str = "", **what: Any) -> None:
        self.updated_at = time.time()
        self.history.append({"at": self.updated_at, "event": event, "who": who, "why": why,
                             "percent": self.percent, "step": self.step_index, **what})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Rollout:
        data = dict(raw)
        data["guards"] = Guards(**data.get("guards", {}))
        data["steps"] = [float(s) for s in data["steps"]]
        return cls(**data)


class StateStore:
    """``<routes file>.rollouts/<model>.json``, written atomically."""

    def __init__(self, routes_path: Path) -> None:
        real = Path(os.path.realpath(routes_path))
        self.dir = real.with_name(f"{real.name}.rollouts")

    def path(self, model: str) -> Path:
        return self.dir / f"{model}.json"

    def save(self, rollout: Rollout) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        text = orjson.dumps(rollout.to_json(), option=orjson.OPT_INDENT_2).decode()
        writer.atomic_write(self.path(rollout.model), text)

    def load(self, model: str) -> Rollout | None:
        try:
            return Rollout.from_json(orjson.loads(self.path(model).read_bytes()))
        except FileNotFoundError:
            return None

    def load_all(self) -> list[Rollout]:
        out = []
        for p in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                out.append(Rollout.from_json(orjson.loads(p.read_bytes())))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.error("rollout state %s unreadable, ignored: %s", p, exc)
        return out


# --- routes edits (pure, on the loaded YAML mapping) --------------------------------------------------------------

def _version_value(version: str) -> str | int:
    return int(version) if version.isascii() and version.isdigit() else version


def _model_of(raw: Any, model: str) -> dict[str, Any]:
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict) or not isinstance(models.get(model), dict):
        raise RolloutError(404, f"model {model!r} is not defined in the routes file")
    return models[model]  # type: ignore[no-any-return]


def _versions(spec: Mapping[str, Any]) -> set[str]:
    versions = spec.get("versions")
    return {str(int(v)) if str(v).isdigit() else str(v) for v in versions} if isinstance(versions, dict) else set()


def current_default(spec: Mapping[str, Any]) -> str:
    if spec.get("default_version") is not None:
        return str(int(spec["default_version"]))
    return max(_versions(spec), key=int)


def step_routes(raw: Mapping[str, Any], rollout: Rollout, percent: float) -> dict[str, Any]:
    """The routes with the model at ``percent`` canary: an experiment for 0 < percent < 100, the model on
    to_version alone at 100, on from_version alone at 0."""
    out = copy.deepcopy(dict(raw))
    spec = _model_of(out, rollout.model)
    if percent <= 0 or percent >= 100:
        spec.pop("experiment", None)
        spec["default_version"] = _version_value(rollout.from_version if percent <= 0 else rollout.to_version)
        return out
    experiment: dict[str, Any] = {
        "name": EXPERIMENT, "salt": f"{rollout.model}-{rollout.to_version}", "fallback": "random",
        "variants": [{"name": STABLE, "version": _version_value(rollout.from_version), "weight": 100 - percent},
                     {"name": CANARY, "version": _version_value(rollout.to_version), "weight": percent}]}
    if rollout.sticky_header:
        experiment["sticky_key"] = {"header": rollout.sticky_header}
    spec["experiment"] = experiment
    spec["default_version"] = _version_value(rollout.from_version)
    return out


def applied_percent(raw: Mapping[str, Any], rollout: Rollout) -> float | None:
    """The canary share the routes give the model, when they have the shape this rollout writes; None otherwise."""
    spec = _model_of(raw, rollout.model)
    experiment = spec.get("experiment")
    if experiment is None:
        default = current_default(spec)
        return 0.0 if default == rollout.from_version else 100.0 if default == rollout.to_version else None
    if not isinstance(experiment, dict) or experiment.get("name") != EXPERIMENT:
        return None
    variants = {v.get("name"): v for v in experiment.get("variants", []) if isinstance(v, dict)}
    if set(variants) != {STABLE, CANARY} or str(variants[STABLE].get("version")) != rollout.from_version \
            or str(variants[CANARY].get("version")) != rollout.to_version:
        return None
    return float(variants[CANARY].get("weight", -1))


def write_routes(path: Path, edit: Callable[[dict[str, Any]], dict[str, Any]],
                 lock_timeout_s: float = writer.LOCK_TIMEOUT_S) -> int:
    """Read, edit, compare-and-swap write; a conflict (another model's change meanwhile) re-reads and retries."""
    for _ in range(_WRITE_ATTEMPTS):
        text, revision = writer.read(path)
        raw = yaml.safe_load(text)
        try:  # the models the edit changed are re-written; the rest of the file keeps its text and comments
            return writer.apply(path, writer.splice_models(text, edit(raw)), revision,
                                lock_timeout_s=lock_timeout_s)
        except writer.RevisionConflict:
            continue
    raise RolloutError(409, f"{path}: the routes kept changing under the rollout ({_WRITE_ATTEMPTS} conflicts)")


def read_routes(path: Path) -> dict[str, Any]:
    text, _ = writer.read(path)
    raw = yaml.safe_load(text)
    return raw if isinstance(raw, dict) else {}


# --- lifecycle spec: deploy, warm-up, retire ------------------------------------------------------------------

def check_backend(backend: BackendConfig, stage: str, where: str) -> None:
    """RolloutError 400 when ``stage`` (deploy or retire) of ``where`` cannot run on that backend."""
    missing = lifecycle_class(backend).missing(backend)
    if missing is not None:
        raise RolloutError(400, f"{stage} of {where} needs {missing}")


def plan_deploy(value: Any, backend: BackendConfig, where: str = "the new version") -> dict[str, Any] | None:
    """The ``deploy`` spec for a target on ``backend``, checked per kind: TorchServe ``{"archive": "scale-2.mar",
    "workers"?: 1, "timeout_s"?: 120}``, TF Serving ``{"timeout_s"?: 120}``; None without one."""
    if value is None:
        return None
    check_backend(backend, "deploy", where)
    try:
        return lifecycle_class(backend).plan_deploy(value)
    except SpecError as exc:
        raise RolloutError(400, f"{exc} ({where} is on {backend.kind} backend {backend.name!r})") from None


def plan_warmup(value: Any) -> list[dict[str, Any]]:
    """A list of v2 JSON inference bodies, or ``{"body": {...}, "count": N}`` (N copies of one body)."""
    if value is None:
        return []
    if isinstance(value, dict):
        body, count = value.get("body"), value.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_WARMUP_SAMPLES:
            raise RolloutError(400, f"warmup.count must be an integer in [1, {MAX_WARMUP_SAMPLES}], got {count!r}")
        samples = [body] * count
    elif isinstance(value, list):
        samples = list(value)
    else:
        raise RolloutError(400, "warmup must be a list of v2 inference bodies or {\"body\": ..., \"count\": N}")
    if len(samples) > MAX_WARMUP_SAMPLES:
        raise RolloutError(400, f"warmup: at most {MAX_WARMUP_SAMPLES} samples, got {len(samples)}")
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict) or not isinstance(sample.get("inputs"), list):
            raise RolloutError(400, f"warmup sample {i}: must be a v2 inference body {{\"inputs\": [...]}}")
        try:  # decoded now, so that a malformed sample is a 400 here rather than a failed rollout later
            v2_json.decode_request(orjson.dumps(sample), ModelRef("warmup"))
        except Exception as exc:
            raise RolloutError(400, f"warmup sample {i}: {exc}") from None
    return [dict(sample) for sample in samples if isinstance(sample, dict)]


def _backend_target(vc: VersionConfig) -> tuple[str, str, str]:
    return vc.backend, vc.model, vc.version


def traffic_users(config: RoutesConfig, backend: str, model: str, version: str) -> list[str]:
    """Where the routes still send traffic to the backend target (backend, model, version): every model's
    default version, experiment variants, labels and shadow that resolve to it (described, for the reason)."""
    target = (backend, model, version)
    users: list[str] = []
    for m in config.models.values():
        refs: list[tuple[str, str]] = [("default", m.default_version)]
        if m.experiment is not None:
            refs += [(f"experiment variant {v.name}", v.version) for v in m.experiment.variants]
        refs += [(f"label {label}", v) for label, v in m.labels.items()]
        if m.shadow is not None:
            refs.append(("shadow", m.shadow.version))
        for what, logical in refs:
            vc = m.versions.get(logical)
            if vc is not None and _backend_target(vc) == target:
                users.append(f"models.{m.name} {what} (version {logical})")
    return users


# --- the orchestrator --------------------------------------------------------------------------------------------

class Orchestrator:
    """Runs rollouts as tasks on the running event loop (the admin worker's); file I/O in threads."""

    def __init__(self, routes_path: Path, metrics_text: Callable[[], str], reload: Callable[[], Any] = lambda: None,
                 *, check_interval_s: float = 0.2, plane: DataPlane | None = None,
                 drain_timeout_s: float = 60.0, metrics: Metrics | None = None) -> None:
        self.routes_path = routes_path
        self.metrics = metrics  # exports each rollout's state and transitions (gateway_rollout_*)
        self._exported: dict[str, int] = {}  # per model: history entries already counted
        self.plane = plane  # warm-up goes through it, drain reads its in-flight counts; None: own adapters
        self.drain_timeout_s = drain_timeout_s
        self._backends: Backends | None = None
        self._config_files = ConfigFiles()  # models.config edits of TF Serving backends, one at a time per file
        self.states = StateStore(routes_path)
        self.metrics_text = metrics_text
        self.reload = reload
        self.check_interval_s = check_interval_s
        self.rollouts: dict[str, Rollout] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _save(self, ro: Rollout) -> None:
        """Persist the rollout (atomic state file) and export what changed since the last save."""
        await asyncio.to_thread(self.states.save, ro)
        self._export(ro)

    def _export(self, ro: Rollout) -> None:
        if self.metrics is None:
            return
        seen = self._exported.get(ro.model, len(ro.history))
        self.metrics.rollout(model=ro.model, percent=ro.percent, running=ro.state == "running",
                             events=[h["event"] for h in ro.history[seen:]])
        self._exported[ro.model] = len(ro.history)

    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    # -- lifecycle

    async def resume(self) -> list[Rollout]:
        """Load saved rollouts; reconcile running ones with the routes file and restart their dwell."""
        resumed = []
        for ro in await asyncio.to_thread(self.states.load_all):
            self.rollouts[ro.model] = ro
            self._exported[ro.model] = len(ro.history)  # counted by the process that recorded them
            self._export(ro)
            if ro.state == "promoted" and ro.retire and ro.phase not in RETIRE_DONE:
                # Promoted but not retired yet (stopped between the promotion's write and the end of the retire).
                ro.record("resumed", "orchestrator", "gateway restarted: retiring the old version again")
                self._spawn_retire(ro)
                continue
            if ro.state != "running":
                continue
            try:
                raw = await asyncio.to_thread(read_routes, self.routes_path)
                percent = applied_percent(raw, ro)
                written_at = (await asyncio.to_thread(os.stat, self.routes_path)).st_mtime
            except (RolloutError, OSError):
                percent, written_at = None, time.time()
            if percent is None:
                ro.state, ro.reason = "aborted", "on resume the routes matched none of the rollout's steps " \
                                                 "(changed outside it); routes left as they are"
                ro.record("aborted", "orchestrator", ro.reason)
            elif percent >= 100:
                ro.percent, ro.step_index, ro.state = 100.0, len(ro.steps) - 1, "promoted"
                ro.reason = "the routes were already promoted when the gateway restarted"
                ro.record("promoted", "orchestrator", ro.reason, at=written_at)
                if ro.retire:
                    await self._save(ro)
                    self._spawn_retire(ro)
                    continue
            elif percent <= 0 and ro.percent > 0:
                # Traffic is back on from_version although a step had been applied: the rollout was being rolled
                # back or aborted when the gateway stopped (or someone moved it back by hand). Never re-run it.
                ro.state, ro.percent, ro.step_index = "aborted", 0.0, -1
                ro.reason = (f"on resume the routes were back on version {ro.from_version} (the rollout was being "
                             "ended when the gateway stopped, or was moved back by hand); ended, routes left as "
                             "they are")
                ro.record("aborted", "orchestrator", ro.reason, at=written_at)
            else:
                unrecorded = percent > ro.percent  # lower: moved back by hand, nothing of ours to record
                ro.percent = percent
                ro.step_index = ro.steps.index(percent) if percent in ro.steps else -1
                if percent > 0 and unrecorded and ro.step_index >= 0:
                    # The previous process wrote this step and stopped before recording it: record it now, at
                    # the time of the write (the routes file's mtime), so that the history misses no transition.
                    ro.record("step", "orchestrator", f"canary at {percent:g}% (written just before the gateway "
                              "stopped; recorded on resume)", at=written_at)
                if percent > 0 and ro.step_index < 0:  # a share the plan does not have: go back to safety
                    await self._end(ro, "aborted", "orchestrator", f"on resume the canary share {percent:g}% is "
                                    "none of the steps; traffic back on the old version")
                    continue
                ro.record("resumed", "orchestrator", "gateway restarted: dwell of the applied step restarts")
                self._spawn(ro)
                resumed.append(ro)
            await self._save(ro)
        return resumed

    async def close(self) -> None:
        """Stop the tasks; the routes stay at the last applied step and the state says running (resumed later)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._backends is not None:
            await self._backends.close()
            self._backends = None

    def _spawn(self, ro: Rollout) -> None:
        self._tasks[ro.model] = asyncio.create_task(self._run(ro), name=f"rollout-{ro.model}")

    def _spawn_retire(self, ro: Rollout) -> None:
        self._tasks[ro.model] = asyncio.create_task(self._retire_task(ro), name=f"rollout-retire-{ro.model}")

    # -- operations

    def get(self, model: str) -> Rollout:
        ro = self.rollouts.get(model) or self.states.load(model)
        if ro is None:
            raise RolloutError(404, f"no rollout for model {model!r}")
        return ro

    async def start(self, spec: Mapping[str, Any], who: str = "admin-api") -> Rollout:
        model = spec.get("model")
        if not isinstance(model, str) or not model:
            raise RolloutError(400, "model is required")
        to_version = _req_version(spec.get("to_version"), "to_version")
        steps = plan_steps(spec.get("steps"))
        dwell = spec.get("dwell_s", 60.0)
        if isinstance(dwell, bool) or not isinstance(dwell, int | float) or not 0 <= dwell < 86400:
            raise RolloutError(400, f"dwell_s must be a number of seconds >= 0, got {dwell!r}")
        guards = Guards.from_json(spec)
        sticky = spec.get("sticky_header")
        if sticky is not None and (not isinstance(sticky, str) or not sticky.strip()):
            raise RolloutError(400, "sticky_header must be a header name")
        warmup = plan_warmup(spec.get("warmup"))
        retire = spec.get("retire", False)
        if not isinstance(retire, bool):
            raise RolloutError(400, f"retire must be true or false, got {retire!r}")
        async with self._lock(model):
            existing = self.rollouts.get(model)
            task = self._tasks.get(model)
            if existing is not None and existing.state != "running" and task is not None and not task.done():
                raise RolloutError(409, f"the previous rollout of {model!r} is still {existing.phase or 'ending'} "
                                        "(retiring the old version); start the next one when it is done")
            if existing is not None and existing.state == "running":
                raise RolloutError(409, f"model {model!r} already has a running rollout "
                                        f"({existing.from_version} -> {existing.to_version})")
            raw = await asyncio.to_thread(read_routes, self.routes_path)
            mspec = _model_of(raw, model)
            if mspec.get("experiment") is not None:
                raise RolloutError(409, f"model {model!r} runs an experiment already; a canary needs the model on "
                                        "one version (remove the experiment first)")
            default = current_default(mspec)
            from_version = default if spec.get("from_version") is None else _req_version(
                spec["from_version"], "from_version")
            if from_version != default:
                raise RolloutError(409, f"model {model!r} serves version {default}, not from_version {from_version}")
            if to_version == from_version:
                raise RolloutError(400, f"to_version {to_version} is the version the model serves already")
            if to_version not in _versions(mspec):
                raise RolloutError(400, f"version {to_version} is not listed under models.{model}.versions "
                                        "(add it to the routes first)")
            deploy = None
            if spec.get("deploy") is not None or retire:
                config = await asyncio.to_thread(load_routes, self.routes_path)
                deploy = plan_deploy(spec.get("deploy"), _backend_of(config, model, to_version),
                                     f"version {to_version} of {model!r}")
                if retire:
                    check_backend(_backend_of(config, model, from_version), "retire",
                                  f"version {from_version} of {model!r}")
            ro = Rollout(model=model, from_version=from_version, to_version=to_version, steps=steps,
                         dwell_s=float(dwell), guards=guards, sticky_header=None if sticky is None
                         else sticky.strip().lower(), deploy=deploy, warmup=warmup, retire=retire)
            ro.record("started", who, str(spec.get("why", "")), steps=steps, dwell_s=ro.dwell_s,
                      guards=asdict(guards), deploy=deploy, warmup_samples=len(warmup), retire=retire)
            self.rollouts[model] = ro
            self._exported[model] = 0
            await self._save(ro)
            self._spawn(ro)
            return ro

    async def promote(self, model: str, who: str = "admin-api", why: str = "") -> Rollout:
        return await self._manual(model, "promoted", who, why or "promoted by hand")

    async def rollback(self, model: str, who: str = "admin-api", why: str = "") -> Rollout:
        return await self._manual(model, "rolled_back", who, why or "rolled back by hand")

    async def abort(self, model: str, who: str = "admin-api", why: str = "") -> Rollout:
        """Cancel the rollout: traffic back on from_version (as a rollback), recorded as aborted rather than as a
        verdict on the new version."""
        return await self._manual(model, "aborted", who, why or "aborted by hand")

    async def _manual(self, model: str, state: State, who: str, why: str) -> Rollout:
        async with self._lock(model):
            ro = self.get(model)
            if ro.state != "running":
                raise RolloutError(409, f"the rollout of {model!r} is {ro.state} already")
            if state == "promoted" and ro.step_index < 0 and (ro.deploy is not None or ro.warmup):
                raise RolloutError(409, f"the rollout of {model!r} is still {ro.phase or 'preparing'}: version "
                                        f"{ro.to_version} is not deployed and warmed up yet; promote it after that "
                                        "(or abort)")
            task = self._tasks.pop(model, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._end(ro, state, who, why)
            if state == "promoted" and ro.retire:
                self._spawn_retire(ro)
            return ro

    # -- the loop

    async def _run(self, ro: Rollout) -> None:
        try:
            if ro.step_index < 0 and ro.phase in ("", "deploying", "warming_up"):
                failure = await self._prepare(ro)
                async with self._lock(ro.model):
                    if ro.state != "running":
                        return
                    if failure is not None:
                        await self._fail(ro, failure)
                        return
                    ro.phase = "canary"
                    await self._save(ro)
            while ro.state == "running":
                nxt = ro.step_index + 1
                if ro.step_index >= 0:  # a step is applied: dwell on it
                    verdict = await self._dwell(ro)
                    if verdict.breach is not None:
                        async with self._lock(ro.model):
                            if ro.state == "running":
                                await self._end(ro, "rolled_back", "orchestrator", verdict.breach,
                                                figures=verdict.figures)
                        return
                    ro.record("step_passed", "orchestrator", "dwell over, no guard breached",
                              figures=verdict.figures)
                async with self._lock(ro.model):
                    if ro.state != "running":
                        return
                    if ro.steps[nxt] >= 100:
                        await self._end(ro, "promoted", "orchestrator", "every step passed its guards")
                        promoted = True
                    else:
                        await self._apply(ro, nxt)
                        promoted = False
                if promoted:
                    if ro.retire:
                        await self._retire(ro)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("rollout of %s failed", ro.model)
            async with self._lock(ro.model):
                if ro.state == "running":
                    with contextlib.suppress(Exception):
                        await self._end(ro, "aborted", "orchestrator", f"orchestrator error: {exc}")
        finally:
            if self._tasks.get(ro.model) is asyncio.current_task():
                self._tasks.pop(ro.model, None)

    # -- lifecycle: deploy, warm-up, retire

    async def _config(self) -> RoutesConfig:
        return await asyncio.to_thread(load_routes, self.routes_path)

    async def _prepare(self, ro: Rollout) -> str | None:
        """Deploy and warm up the new version; the reason it failed, or None. Writes no routes."""
        config = await self._config()
        if ro.deploy is not None:
            ro.phase = "deploying"
            try:
                vc = config.models[ro.model].versions[ro.to_version]
                lifecycle = self._lifecycle(config, vc)
            except Exception as exc:
                return f"deploy of version {ro.to_version} of {ro.model!r} failed: {describe(exc)}"
            try:
                await lifecycle.deploy(vc, ro.deploy, self._note(ro))  # notes deploying, deployed
            except Exception as exc:
                return describe(exc)
            finally:
                await lifecycle.close()
        if ro.warmup:
            ro.phase = "warming_up"
            ro.record("warming_up", "orchestrator", f"{len(ro.warmup)} sample(s) to version {ro.to_version}")
            await self._save(ro)
            began = time.monotonic()
            route = RouteTable.from_config(config).resolve(ModelRef(ro.model, ro.to_version))
            for i, sample in enumerate(ro.warmup):
                try:
                    request = v2_json.decode_request(orjson.dumps(sample), ModelRef(ro.model, ro.to_version))
                    if self.plane is not None:
                        await asyncio.wait_for(self.plane.infer(request, route), WARMUP_TIMEOUT_S)
                    else:
                        if self._backends is None:
                            self._backends = Backends()
                        await asyncio.wait_for(self._backends.get(route.backend).infer(route.target, request),
                                               WARMUP_TIMEOUT_S)
                except Exception as exc:
                    return f"warm-up sample {i} of {len(ro.warmup)} to version {ro.to_version} failed: " \
                           f"{describe(exc)}"
            ro.record("warmed_up", "orchestrator", f"{len(ro.warmup)} sample(s) answered",
                      seconds=round(time.monotonic() - began, 3))
        return None

    async def _fail(self, ro: Rollout, why: str) -> None:
        """Ends a rollout that never moved traffic: the routes are not written (all traffic on from_version)."""
        ro.state, ro.reason, ro.percent = "failed", why, 0.0
        ro.record("failed", "orchestrator", why)
        await self._save(ro)
        log.warning("rollout %s: failed before any traffic moved (%s -> %s): %s", ro.model, ro.from_version,
                    ro.to_version, why)

    async def _retire_task(self, ro: Rollout) -> None:
        try:
            await self._retire(ro)
        finally:
            if self._tasks.get(ro.model) is asyncio.current_task():
                self._tasks.pop(ro.model, None)

    async def _retire(self, ro: Rollout) -> None:
        """Drain then unload from_version on its backend, once the routes send it no traffic."""
        ro.phase = "retiring"
        await self._save(ro)
        try:
            config = await self._config()
            vc = config.models[ro.model].versions[ro.from_version]
            new = config.models[ro.model].versions[ro.to_version]
            users = traffic_users(config, *_backend_target(vc))
            if users:
                raise RetireSkipped(f"{vc.model} version {vc.version} on {vc.backend!r} still gets traffic from "
                                    f"the routes: {'; '.join(users)}")
            # Every worker must serve the promotion's routes first: one that has not polled them yet would still
            # send new requests to the old version with none in flight at the moment the drain looks.
            await self._wait_applied(ro.routes_revision)
            lifecycle = self._lifecycle(config, vc)
            plane = self.plane

            async def still_used() -> list[str]:
                return traffic_users(await self._config(), *_backend_target(vc))

            try:
                event, why = await lifecycle.retire(
                    vc, new, self._note(ro), still_used=still_used, drain_timeout_s=self.drain_timeout_s,
                    inflight=(lambda: plane.inflight.total(*_backend_target(vc))) if plane is not None
                    else (lambda: 0))
            finally:
                await lifecycle.close()
            ro.phase = "retired"
            ro.record(event, "orchestrator", why)
        except asyncio.CancelledError:
            raise
        except RetireSkipped as exc:
            ro.phase = "retire_skipped"
            ro.record("retire_skipped", "orchestrator", str(exc))
        except Exception as exc:
            ro.phase = "retire_failed"
            why = describe(exc)
            ro.record("retire_failed", "orchestrator", f"retiring version {ro.from_version} failed: {why}")
            log.warning("rollout %s: retiring version %s failed: %s", ro.model, ro.from_version, why)
        finally:
            await self._save(ro)

    def _lifecycle(self, config: RoutesConfig, vc: VersionConfig) -> BackendLifecycle:
        return lifecycle_for(config.backends[vc.backend], self._config_files)

    def _note(self, ro: Rollout) -> Note:
        async def note(event: str, why: str, **what: Any) -> None:
            ro.record(event, "orchestrator", why, **what)
            await self._save(ro)
        return note

    async def _wait_applied(self, revision: int | None) -> None:
        """Until every worker serves routes ``revision`` or a later one (gateway_routes_revision, livemin over
        the workers; this process's table alone without several workers). RolloutError after APPLY_TIMEOUT_S."""
        plane = self.plane
        if revision is None or plane is None:
            return
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while True:
            applied = await asyncio.to_thread(plane.metrics.applied_revision_all_workers)
            if applied is None:
                applied = plane.store.current.revision
            if applied >= revision:
                return
            if time.monotonic() > deadline:
                raise RolloutError(503, f"a worker still serves routes revision {applied}, not {revision}, after "
                                        f"{APPLY_TIMEOUT_S:g} s; the old version is kept")
            await asyncio.sleep(0.05)

    async def _dwell(self, ro: Rollout) -> Verdict:
        start = await self._snapshot(ro.model)
        began = time.monotonic()
        waiting_noted = False
        while True:
            await asyncio.sleep(self.check_interval_s)
            now = await self._snapshot(ro.model)
            stable = now.get(STABLE, Window()).minus(start.get(STABLE, Window()))
            canary = now.get(CANARY, Window()).minus(start.get(CANARY, Window()))
            verdict = evaluate(ro.guards, stable, canary)
            if verdict.breach is not None:
                return verdict
            if time.monotonic() - began >= ro.dwell_s:
                if verdict.enough:
                    return verdict
                if not waiting_noted:
                    waiting_noted = True
                    ro.record("waiting", "orchestrator", f"dwell over but the canary answered "
                              f"{canary.requests:g} of min_requests {ro.guards.min_requests}; the step goes on")

    async def _snapshot(self, model: str) -> dict[str, Window]:
        text = await asyncio.to_thread(self.metrics_text)
        return snapshot(text, model)

    async def _write(self, ro: Rollout, percent: float) -> int:
        revision = await asyncio.to_thread(write_routes, self.routes_path, lambda raw: step_routes(raw, ro, percent))
        self.reload()
        return revision

    async def _apply(self, ro: Rollout, index: int) -> None:
        percent = ro.steps[index]
        revision = await self._write(ro, percent)  # the routes first: the state never runs ahead of them
        ro.step_index, ro.percent, ro.routes_revision = index, percent, revision
        ro.record("step", "orchestrator", f"canary at {percent:g}%", revision=revision)
        await self._save(ro)
        log.info("rollout %s: %s -> %s at %g%% (routes revision %d)", ro.model, ro.from_version, ro.to_version,
                 percent, revision)

    async def _end(self, ro: Rollout, state: State, who: str, why: str, **what: Any) -> None:
        percent = 100.0 if state == "promoted" else 0.0
        revision = await self._write(ro, percent)
        ro.state, ro.percent, ro.routes_revision, ro.reason = state, percent, revision, why
        if state == "promoted":
            ro.step_index = len(ro.steps) - 1
        ro.record(state, who, why, revision=revision, **what)
        await self._save(ro)
        log.log(logging.WARNING if state != "promoted" else logging.INFO, "rollout %s: %s (%s -> %s): %s",
                ro.model, state, ro.from_version, ro.to_version, why)


def _backend_of(config: RoutesConfig, model: str, version: str) -> BackendConfig:
    try:
        return config.backends[config.models[model].versions[version].backend]
    except KeyError:
        raise RolloutError(400, f"version {version} of {model!r} is not in the routes file") from None


def _req_version(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RolloutError(400, f"{what} must be a version number, got {value!r}")
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise RolloutError(400, f"{what} must be a positive integer version, got {value!r}")
    return str(int(text))


def public(ro: Rollout) -> dict[str, Any]:
    """The rollout as the admin API answers it."""
    return replace(ro).to_json()
