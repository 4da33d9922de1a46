"""Routes file: YAML schema and validation; every error names the file, the field path and what is wrong."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from gateway.errors import ConfigError
from gateway.types import V2_TO_NUMPY, BackendKind, ModelSchema, TensorSpec, Transport

BACKEND_KINDS: tuple[BackendKind, ...] = ("tfserving", "torchserve")
TRANSPORTS: tuple[Transport, ...] = ("rest", "grpc")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
T = TypeVar("T")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class BackendTLS:
    """How the gateway reaches a backend over TLS: the CA that signed its certificate (default: the system's), and
    the gateway's own certificate and key for mutual TLS. Applies to its https:// URLs and its gRPC channels."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checks of each inference endpoint (TorchServe's ping, TF Serving's model status)."""

    interval_s: float = 5.0
    timeout_s: float = 1.0
    unhealthy_after: int = 2  # failed probes in a row take an endpoint out
    healthy_after: int = 1  # passed probes in a row bring it back (and end an ejection early)


@dataclass(frozen=True, slots=True)
class OutlierEjection:
    """Passive ejection of an endpoint after consecutive failures of its own (no connection, no answer in time,
    connection lost), as Envoy's outlier detection with its defaults: out for base_ejection_s x times ejected, at
    most max_ejection_s; at most max_ejected_percent of the endpoints at once (at least one)."""

    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejected_percent: float = 10.0


@dataclass(frozen=True, slots=True)
class Retries:
    """Retries of a call that never reached a backend (no connection, a refused stream), on another endpoint,
    within a budget (Envoy's retry_budget: a share of the calls in flight, plus a minimum) and the call's timeout."""

    attempts: int = 2  # retries after the first try
    budget_percent: float = 20.0
    min_concurrency: int = 3
    on_timeout: bool = False  # also retry a try that ran out of per_try_timeout_s (the backend may still work on it)


@dataclass(frozen=True, slots=True)
class Admission:
    """Admission control: at most max_inflight calls at once (per worker), at most max_queue more waiting, each at
    most max_wait_s; the rest are refused at once (503 + Retry-After / UNAVAILABLE). ``adaptive``: the limit moves
    between min_inflight and max_inflight with the backend's latency (a gradient limit)."""

    max_inflight: int
    max_queue: int
    max_wait_s: float
    adaptive: bool = False
    min_inflight: int = 1


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    kind: BackendKind
    url: str
    management_url: str | None = None
    transport: Transport = "rest"  # how inference calls reach the backend
    grpc_target: str | None = None  # host:port of its inference gRPC API (TF Serving 8500, TorchServe 7070)
    grpc_management_target: str | None = None  # TorchServe's management gRPC API (7071)
    token_file: Path | None = None
    # TF Serving: the models.config it was started with (--model_config_file); rollouts edit it to load/unload
    model_config_file: Path | None = None
    # TorchServe: its model store, where rollouts' deploy archives must be (refused outside it)
    model_store: Path | None = None
    timeout_s: float = 30.0
    connect_timeout_s: float = 2.0
    max_connections: int = 256  # per endpoint
    tls: BackendTLS | None = None  # TLS / mutual TLS to the backend (gRPC: a secure channel)
    # Several inference endpoints (url / grpc_target given as lists); `url` and `grpc_target` are the first.
    urls: tuple[str, ...] = ()
    grpc_targets: tuple[str, ...] = ()
    dns_refresh_s: float = 5.0  # host names are resolved to every address this often (0: connect by name)
    per_try_timeout_s: float | None = None  # each try's limit (default timeout_s)
    health_check: HealthCheck | None = HealthCheck()
    outlier_ejection: OutlierEjection = OutlierEjection()
    retries: Retries = Retries()
    admission: Admission | None = None  # None: the defaults (admission_policy)

    @property
    def inference_urls(self) -> tuple[str, ...]:
        return self.urls or (self.url,)

    @property
    def inference_targets(self) -> tuple[str, ...]:
        return self.grpc_targets or ((self.grpc_target,) if self.grpc_target else ())

    @property
    def admission_policy(self) -> Admission:
        """The backend's admission, or the default: as many calls in flight as connections, as many waiting, each
        waiting at most the backend's timeout."""
        return self.admission or Admission(max_inflight=self.max_connections, max_queue=self.max_connections,
                                           max_wait_s=self.timeout_s)

    @property
    def longest_call_s(self) -> float:
        """The longest a client may wait for one call: the queue, then the call (its retries stay inside it)."""
        return self.admission_policy.max_wait_s + self.timeout_s


@dataclass(frozen=True, slots=True)
class VersionConfig:
    backend: str
    model: str
    version: str


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    version: str
    weight: float  # percent; the variants of an experiment add up to 100


@dataclass(frozen=True, slots=True)
class StickyKey:
    """Where the assignment key comes from: a header (gRPC metadata) or a v2 request parameter."""

    header: str | None = None
    parameter: str | None = None


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    salt: str
    variants: tuple[Variant, ...]
    sticky_key: StickyKey | None = None
    fallback: str = "random"  # requests without the sticky key: "random" (weighted) or "default"
    log_assignments: bool = False
    failover: str | None = None  # the variant that takes a variant's requests while its backend has no endpoint


@dataclass(frozen=True, slots=True)
class Shadow:
    version: str
    percent: float
    tolerance: float = 1e-4
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    versions: Mapping[str, VersionConfig]
    default_version: str
    labels: Mapping[str, str] = field(default_factory=dict)
    schema: ModelSchema | None = None
    experiment: Experiment | None = None
    shadow: Shadow | None = None
    allow_overrides: bool = True  # x-model-variant / x-model-version request headers (QA)
    admission: Admission | None = None  # a limit of its own, inside its backends'


@dataclass(frozen=True, slots=True)
class RoutesConfig:
    revision: int
    backends: Mapping[str, BackendConfig]
    models: Mapping[str, ModelConfig]
    source: str = "<memory>"


def load_routes(path: Path, environ: Mapping[str, str] | None = None) -> RoutesConfig:
    """Read and validate a routes file; `${VAR}` and `${VAR:-default}` in strings come from the environment."""
    return parse_routes(read_yaml(path, "routes file"), str(path), os.environ if environ is None else environ)


def read_yaml(path: Path, what: str) -> Any:
    """A configuration file's YAML (the routes, the auth policy, the API keys); ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def parse_routes(raw: Any, source: str, environ: Mapping[str, str]) -> RoutesConfig:
    p = FieldParser(source, environ)
    top = p.mapping(raw, "", required={"backends", "models"}, allowed={"revision", "backends", "models"})
    revision = p.integer(top.get("revision", 0), "revision", minimum=0)
    backends = {
        name: p.backend(name, spec) for name, spec in p.mapping(top["backends"], "backends").items()
    }
    if not backends:
        p.fail("backends", "must define at least one backend")
    models = {name: p.model(name, spec, backends) for name, spec in p.mapping(top["models"], "models").items()}
    return RoutesConfig(revision=revision, backends=backends, models=models, source=source)


class FieldParser:
    """Checks a parsed document field by field; every refusal names the source, the field path and what is wrong
    (the routes here; the auth policy, gateway/auth/tenants.py, builds on it)."""

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ

    def fail(self, path: str, what: str) -> None:
        raise ConfigError(f"{self.source}: {path or '<top level>'}: {what}")

    def mapping(
        self, value: Any, path: str, *, required: set[str] = frozenset(), allowed: set[str] | None = None  # type: ignore[assignment]
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {_kind(value)}")
        out = {str(k): v for k, v in value.items()}
        for key in sorted(required - out.keys()):
            self.fail(_join(path, key), "is required")
        if allowed is not None:
            for key in sorted(out.keys() - allowed):
                self.fail(_join(path, key), f"unknown field (allowed: {', '.join(sorted(allowed))})")
        return out

    def string(self, value: Any, path: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail(path, f"must be a string, got {_kind(value)}")
        text = self.expand(str(value), path)
        if not text:
            self.fail(path, "must not be empty")
        return text

    def expand(self, text: str, path: str) -> str:
        def sub(m: re.Match[str]) -> str:
            val = self.environ.get(m.group(1))
            if val is None:
                if m.group(2) is None:
                    self.fail(path, f"environment variable {m.group(1)} is not set and has no default")
                return m.group(2) or ""
            return val

        return _ENV.sub(sub, text)

    def name(self, value: Any, path: str) -> str:
        text = self.string(value, path)
        if not _NAME.match(text):
            self.fail(path, f"{text!r} is not a valid name (letters, digits, '_', '.', '-')")
        return text

    def version(self, value: Any, path: str) -> str:
        text = self.string(value, path)
        if not (text.isascii() and text.isdigit()) or len(text) > 18 or int(text) <= 0:
            self.fail(path, f"version {text!r} must be a positive integer")
        return str(int(text))

    def integer(self, value: Any, path: str, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(path, f"must be an integer >= {minimum}, got {value!r}")
        return int(value)

    def number(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self.fail(path, f"must be a positive number of seconds, got {value!r}")
        return float(value)

    def url(self, value: Any, path: str) -> str:
        text = self.string(value, path).rstrip("/")
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(path, f"{text!r} must be an http(s) URL with a host")
        return text

    def target_address(self, value: Any, path: str) -> str | None:
        """A gRPC target: host:port, optionally with a scheme such as dns:///host:port."""
        if value is None:
            return None
        text = self.string(value, path)
        host, sep, port = text.rpartition("/")[2].rpartition(":")
        if not sep or not host or not port.isdigit():
            self.fail(path, f"{text!r} must be host:port")
        return text

    def backend(self, name: str, spec: Any) -> BackendConfig:
        path = f"backends.{name}"
        self.name(name, path)
        allowed = {"kind", "url", "management_url", "token_file", "timeout_s", "connect_timeout_s",
                   "max_connections", "transport", "grpc_target", "grpc_management_target", "model_config_file",
                   "model_store", "tls", "dns_refresh_s", "per_try_timeout_s", "health_check", "outlier_ejection",
                   "retries", "admission"}
        m = self.mapping(spec, path, required={"kind", "url"}, allowed=allowed)
        kind = self.string(m["kind"], f"{path}.kind")
        if kind not in BACKEND_KINDS:
            self.fail(f"{path}.kind", f"{kind!r} is not one of {', '.join(BACKEND_KINDS)}")
        token = m.get("token_file")
        if isinstance(token, str) and not self.expand(token, f"{path}.token_file"):
            token = None  # an empty value (e.g. an unset ${VAR:-}) means token auth is off
        if token is not None and kind != "torchserve":
            self.fail(f"{path}.token_file", "only torchserve backends use a token file")
        transport = self.string(m.get("transport", "rest"), f"{path}.transport")
        if transport not in TRANSPORTS:
            self.fail(f"{path}.transport", f"{transport!r} is not one of {', '.join(TRANSPORTS)}")
        grpc_targets = self.listed(m.get("grpc_target"), f"{path}.grpc_target", self.target_address)
        grpc_target = grpc_targets[0] if grpc_targets else None
        if transport == "grpc" and grpc_target is None:
            self.fail(f"{path}.grpc_target", "is required when transport is grpc (host:port)")
        grpc_management = self.target_address(m.get("grpc_management_target"), f"{path}.grpc_management_target")
        if grpc_management is not None and kind != "torchserve":
            self.fail(f"{path}.grpc_management_target", "only torchserve backends have a management gRPC API")
        model_config_file = self.backend_path(m.get("model_config_file"), f"{path}.model_config_file", kind,
                                              "tfserving", "the models.config TF Serving was started with")
        model_store = self.backend_path(m.get("model_store"), f"{path}.model_store", kind, "torchserve",
                                        "TorchServe's model store")
        tls = None if m.get("tls") is None else self.tls(m["tls"], f"{path}.tls")
        urls = self.listed(m["url"], f"{path}.url", self.url)
        timeout_s = self.number(m.get("timeout_s", 30.0), f"{path}.timeout_s")
        max_connections = self.integer(m.get("max_connections", 256), f"{path}.max_connections", minimum=1)
        per_try = None if m.get("per_try_timeout_s") is None else self.number(m["per_try_timeout_s"],
                                                                               f"{path}.per_try_timeout_s")
        if per_try is not None and per_try > timeout_s:
            self.fail(f"{path}.per_try_timeout_s", f"{per_try:g} is longer than timeout_s ({timeout_s:g}), which "
                                                   "bounds every try and retry together")
        refresh = m.get("dns_refresh_s", 5.0)
        if isinstance(refresh, bool) or not isinstance(refresh, int | float) or refresh < 0:
            self.fail(f"{path}.dns_refresh_s", f"must be seconds >= 0 (0: connect by name), got {refresh!r}")
        if tls is not None and transport == "rest":
            for url in urls:
                if not url.startswith("https://"):
                    self.fail(f"{path}.url", f"{url!r} must be https:// when tls is set (transport rest)")
        return BackendConfig(
            name=name,
            kind=kind,  # type: ignore[arg-type]
            transport=transport,  # type: ignore[arg-type]
            grpc_target=grpc_target,
            grpc_management_target=grpc_management,
            grpc_targets=grpc_targets if len(grpc_targets) > 1 else (),
            urls=urls if len(urls) > 1 else (),
            dns_refresh_s=float(refresh),
            per_try_timeout_s=per_try,
            health_check=self.health_check(m.get("health_check", {}), f"{path}.health_check"),
            outlier_ejection=self.outlier_ejection(m.get("outlier_ejection", {}), f"{path}.outlier_ejection"),
            retries=self.retries(m.get("retries", {}), f"{path}.retries"),
            admission=None if m.get("admission") is None else self.admission(m["admission"], f"{path}.admission",
                                                                              defaults=(max_connections, timeout_s)),
            url=urls[0], tls=tls,
            management_url=None if m.get("management_url") is None
            else self.url(m["management_url"], f"{path}.management_url"),
            token_file=None if token is None else Path(self.string(token, f"{path}.token_file")),
            model_config_file=model_config_file,
            model_store=model_store,
            timeout_s=timeout_s,
            connect_timeout_s=self.number(m.get("connect_timeout_s", 2.0), f"{path}.connect_timeout_s"),
            max_connections=max_connections,
        )

    def tls(self, spec: Any, path: str) -> BackendTLS:
        m = self.mapping(spec if spec is not True else {}, path, allowed={"ca_file", "cert_file", "key_file"})
        files = {k: Path(self.string(v, f"{path}.{k}")) for k, v in m.items() if v is not None}
        if ("cert_file" in files) != ("key_file" in files):
            self.fail(path, "cert_file and key_file go together (the gateway's certificate for mutual TLS)")
        return BackendTLS(**files)

    def listed(self, value: Any, path: str, one: Callable[[Any, str], T | None]) -> tuple[T, ...]:
        """One value or a non-empty list of them (a backend's endpoints)."""
        if value is None:
            return ()
        if not isinstance(value, list):
            found = one(value, path)
            return () if found is None else (found,)
        if not value:
            self.fail(path, "must not be an empty list")
        items = [one(item, f"{path}[{i}]") for i, item in enumerate(value)]
        out = tuple(item for item in items if item is not None)
        if len(set(out)) != len(out):
            self.fail(path, "lists the same endpoint twice")
        return out

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, got {value!r}")
        return bool(value)

    def percent(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            self.fail(path, f"must be a percentage between 0 and 100, got {value!r}")
        return float(value)

    def health_check(self, spec: Any, path: str) -> HealthCheck | None:
        if spec is False:
            return None
        d = HealthCheck()
        m = self.mapping(spec, path, allowed={"interval_s", "timeout_s", "unhealthy_after", "healthy_after"})
        return HealthCheck(interval_s=self.number(m.get("interval_s", d.interval_s), f"{path}.interval_s"),
                           timeout_s=self.number(m.get("timeout_s", d.timeout_s), f"{path}.timeout_s"),
                           unhealthy_after=self.integer(m.get("unhealthy_after", d.unhealthy_after),
                                                        f"{path}.unhealthy_after", minimum=1),
                           healthy_after=self.integer(m.get("healthy_after", d.healthy_after),
                                                      f"{path}.healthy_after", minimum=1))

    def outlier_ejection(self, spec: Any, path: str) -> OutlierEjection:
        d = OutlierEjection()
        m = self.mapping(spec, path, allowed={"consecutive_failures", "base_ejection_s", "max_ejection_s",
                                              "max_ejected_percent"})
        out = OutlierEjection(
            consecutive_failures=self.integer(m.get("consecutive_failures", d.consecutive_failures),
                                              f"{path}.consecutive_failures", minimum=0),
            base_ejection_s=self.number(m.get("base_ejection_s", d.base_ejection_s), f"{path}.base_ejection_s"),
            max_ejection_s=self.number(m.get("max_ejection_s", d.max_ejection_s), f"{path}.max_ejection_s"),
            max_ejected_percent=self.percent(m.get("max_ejected_percent", d.max_ejected_percent),
                                             f"{path}.max_ejected_percent"))
        if out.max_ejection_s < out.base_ejection_s:
            self.fail(f"{path}.max_ejection_s", f"{out.max_ejection_s:g} is shorter than base_ejection_s "
                                                f"({out.base_ejection_s:g})")
        return out

    def retries(self, spec: Any, path: str) -> Retries:
        d = Retries()
        m = self.mapping(spec, path, allowed={"attempts", "budget_percent", "min_concurrency", "on_timeout"})
        return Retries(attempts=self.integer(m.get("attempts", d.attempts), f"{path}.attempts", minimum=0),
                       budget_percent=self.percent(m.get("budget_percent", d.budget_percent), f"{path}.budget_percent"),
                       min_concurrency=self.integer(m.get("min_concurrency", d.min_concurrency),
                                                    f"{path}.min_concurrency", minimum=0),
                       on_timeout=self.boolean(m.get("on_timeout", d.on_timeout), f"{path}.on_timeout"))

    def admission(self, spec: Any, path: str, defaults: tuple[int, float]) -> Admission:
        """``defaults``: (max_inflight, max_wait_s) when not given (the backend's max_connections and timeout)."""
        m = self.mapping(spec, path, allowed={"max_inflight", "max_queue", "max_wait_s", "adaptive", "min_inflight"})
        limit = self.integer(m.get("max_inflight", defaults[0]), f"{path}.max_inflight", minimum=1)
        floor = self.integer(m.get("min_inflight", 1), f"{path}.min_inflight", minimum=1)
        if floor > limit:
            self.fail(f"{path}.min_inflight", f"{floor} is above max_inflight ({limit})")
        return Admission(max_inflight=limit,
                         max_queue=self.integer(m.get("max_queue", limit), f"{path}.max_queue", minimum=0),
                         max_wait_s=self.number(m.get("max_wait_s", defaults[1]), f"{path}.max_wait_s"),
                         adaptive=self.boolean(m.get("adaptive", False), f"{path}.adaptive"), min_inflight=floor)

    def backend_path(self, value: Any, path: str, kind: str, owner: str, what: str) -> Path | None:
        """An absolute path that only ``owner`` backends have (``what`` names it in messages); an empty value (an
        unset ``${VAR:-}``) means none."""
        if value is None or (isinstance(value, str) and not self.expand(value, path)):
            return None
        if kind != owner:
            self.fail(path, f"only {owner} backends have {what}")
        text = self.string(value, path)
        if not os.path.isabs(text):
            self.fail(path, f"{text!r} must be an absolute path ({what})")
        return Path(text)

    def model(self, name: str, spec: Any, backends: Mapping[str, BackendConfig]) -> ModelConfig:
        path = f"models.{name}"
        self.name(name, path)
        m = self.mapping(spec, path, required={"versions"},
                         allowed={"versions", "default_version", "labels", "schema", "experiment", "shadow",
                                  "allow_overrides", "admission"})
        raw_versions = self.mapping(m["versions"], f"{path}.versions")
        if not raw_versions:
            self.fail(f"{path}.versions", "must list at least one version")
        versions: dict[str, VersionConfig] = {}
        for key, target in raw_versions.items():
            vpath = f"{path}.versions.{key}"
            versions[self.version(key, vpath)] = self.target(target, vpath, backends)
        default = (
            self.version(m["default_version"], f"{path}.default_version")
            if "default_version" in m else max(versions, key=int)
        )
        if default not in versions:
            self.fail(f"{path}.default_version", f"version {default} is not listed under versions")
        labels: dict[str, str] = {}
        for label, version in self.mapping(m.get("labels", {}), f"{path}.labels").items():
            lpath = f"{path}.labels.{label}"
            self.name(label, lpath)
            if label.isdigit():
                self.fail(lpath, "a label must not be a number (it would read as a version)")
            labels[label] = self.version(version, lpath)
            if labels[label] not in versions:
                self.fail(lpath, f"points at version {labels[label]}, which is not listed under versions")
        schema = None if m.get("schema") is None else self.schema(m["schema"], f"{path}.schema")
        experiment = None if m.get("experiment") is None else self.experiment(
            name, m["experiment"], f"{path}.experiment", versions)
        shadow = None if m.get("shadow") is None else self.shadow(m["shadow"], f"{path}.shadow", versions)
        if shadow is not None:
            primaries = {default} if experiment is None else {v.version for v in experiment.variants}
            if shadow.version in primaries:
                self.fail(f"{path}.shadow.version", f"version {shadow.version} also serves primary traffic; a "
                                                    "shadow must differ from its primary")
        overrides = m.get("allow_overrides", True)
        if not isinstance(overrides, bool):
            self.fail(f"{path}.allow_overrides", "must be true or false")
        admission = None
        if m.get("admission") is not None:
            longest = max(backends[v.backend].timeout_s for v in versions.values())
            admission = self.admission(m["admission"], f"{path}.admission", defaults=(64, longest))
        return ModelConfig(name=name, versions=versions, default_version=default, labels=labels, schema=schema,
                           experiment=experiment, shadow=shadow, allow_overrides=overrides, admission=admission)

    def experiment(self, model: str, spec: Any, path: str, versions: Mapping[str, VersionConfig]) -> Experiment:
        m = self.mapping(spec, path, required={"variants"},
                         allowed={"name", "salt", "variants", "sticky_key", "fallback", "log_assignments",
                                  "failover"})
        name = self.name(m.get("name", model), f"{path}.name")
        raw = m["variants"]
        if not isinstance(raw, list) or len(raw) < 2:
            self.fail(f"{path}.variants", "must list at least two variants ({name, version, weight})")
        variants = tuple(self.variant(item, f"{path}.variants[{i}]", versions) for i, item in enumerate(raw))
        if len({v.name for v in variants}) != len(variants):
            self.fail(f"{path}.variants", "variant names must be unique")
        total = sum(v.weight for v in variants)
        if abs(total - 100.0) > 1e-6:
            self.fail(f"{path}.variants", f"weights add up to {total:g}, not 100")
        fallback = self.string(m.get("fallback", "random"), f"{path}.fallback")
        if fallback not in ("random", "default"):
            self.fail(f"{path}.fallback", f"{fallback!r} is not one of random, default")
        log = m.get("log_assignments", False)
        if not isinstance(log, bool):
            self.fail(f"{path}.log_assignments", "must be true or false")
        sticky = None if m.get("sticky_key") is None else self.sticky_key(m["sticky_key"], f"{path}.sticky_key")
        failover = None if m.get("failover") is None else self.name(m["failover"], f"{path}.failover")
        if failover is not None and failover not in {v.name for v in variants}:
            self.fail(f"{path}.failover", f"{failover!r} is not one of the variants "
                                          f"({', '.join(v.name for v in variants)})")
        return Experiment(name=name, salt=self.string(m.get("salt", name), f"{path}.salt"), variants=variants,
                          sticky_key=sticky, fallback=fallback, log_assignments=log, failover=failover)

    def variant(self, spec: Any, path: str, versions: Mapping[str, VersionConfig]) -> Variant:
        m = self.mapping(spec, path, required={"name", "version", "weight"}, allowed={"name", "version", "weight"})
        version = self.version(m["version"], f"{path}.version")
        if version not in versions:
            self.fail(f"{path}.version", f"version {version} is not listed under versions")
        weight = m["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 100:
            self.fail(f"{path}.weight", f"must be a percentage between 0 and 100, got {weight!r}")
        return Variant(name=self.name(m["name"], f"{path}.name"), version=version, weight=float(weight))

    def sticky_key(self, spec: Any, path: str) -> StickyKey:
        m = self.mapping(spec, path, allowed={"header", "parameter"})
        if len(m) != 1:
            self.fail(path, "must name exactly one of header or parameter")
        if "header" in m:
            return StickyKey(header=self.string(m["header"], f"{path}.header").lower())
        return StickyKey(parameter=self.string(m["parameter"], f"{path}.parameter"))

    def shadow(self, spec: Any, path: str, versions: Mapping[str, VersionConfig]) -> Shadow:
        m = self.mapping(spec, path, required={"version", "percent"},
                         allowed={"version", "percent", "tolerance", "timeout_s"})
        version = self.version(m["version"], f"{path}.version")
        if version not in versions:
            self.fail(f"{path}.version", f"version {version} is not listed under versions")
        percent = m["percent"]
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 < percent <= 100:
            self.fail(f"{path}.percent", f"must be a percentage in (0, 100], got {percent!r}")
        tolerance = m.get("tolerance", 1e-4)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance < 0:
            self.fail(f"{path}.tolerance", f"must be a non-negative number, got {tolerance!r}")
        return Shadow(version=version, percent=float(percent), tolerance=float(tolerance),
                      timeout_s=self.number(m.get("timeout_s", 10.0), f"{path}.timeout_s"))

    def target(self, spec: Any, path: str, backends: Mapping[str, BackendConfig]) -> VersionConfig:
        m = self.mapping(spec, path, required={"backend", "model", "version"},
                         allowed={"backend", "model", "version"})
        backend = self.string(m["backend"], f"{path}.backend")
        if backend not in backends:
            self.fail(f"{path}.backend", f"unknown backend {backend!r} (defined: {', '.join(sorted(backends))})")
        version = self.string(m["version"], f"{path}.version")
        if backends[backend].kind == "tfserving":
            version = self.version(version, f"{path}.version")
        return VersionConfig(backend=backend, model=self.name(m["model"], f"{path}.model"), version=version)

    def schema(self, spec: Any, path: str) -> ModelSchema:
        m = self.mapping(spec, path, required={"inputs", "outputs"}, allowed={"inputs", "outputs"})
        return ModelSchema(
            inputs=self.specs(m["inputs"], f"{path}.inputs"),
            outputs=self.specs(m["outputs"], f"{path}.outputs"),
        )

    def specs(self, value: Any, path: str) -> tuple[TensorSpec, ...]:
        if not isinstance(value, list) or not value:
            self.fail(path, "must be a non-empty list of {name, datatype, shape}")
        out: list[TensorSpec] = []
        for i, item in enumerate(value):
            ipath = f"{path}[{i}]"
            m = self.mapping(item, ipath, required={"name", "datatype", "shape"},
                             allowed={"name", "datatype", "shape"})
            dtype = self.string(m["datatype"], f"{ipath}.datatype")
            if dtype not in V2_TO_NUMPY:
                self.fail(f"{ipath}.datatype", f"{dtype!r} is not a v2 datatype ({', '.join(V2_TO_NUMPY)})")
            shape = m["shape"]
            if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
            ):
                self.fail(f"{ipath}.shape", "must be a list of integers (-1 for a free dimension)")
            out.append(TensorSpec(name=self.string(m["name"], f"{ipath}.name"), datatype=dtype, shape=tuple(shape)))
        if len({s.name for s in out}) != len(out):
            self.fail(path, "tensor names must be unique")
        return tuple(out)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
