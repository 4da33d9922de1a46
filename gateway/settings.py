"""Process settings from environment variables (ports, limits, paths, where the routes live)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_ETCD_PREFIX = "/model-gateway"
HTTP_CLIENTS = ("aiohttp", "pyreqwest")  # the REST backends' HTTP client (gateway/backends/http.py)


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """GATEWAY_ROUTES_STORE=etcd://host:2379[,host2:2379...]/prefix (etcds:// for TLS) and its GATEWAY_ETCD_*
    options: where the routes, the rollouts and the replicas' presence live when several replicas share them."""

    endpoints: tuple[str, ...]
    prefix: str = DEFAULT_ETCD_PREFIX
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 2.0  # every etcd call
    lease_ttl_s: int = 10  # a dead replica's keys go, and a dead leader is replaced, within this

    @property
    def url(self) -> str:
        """The store as a person reads it (no credentials)."""
        return f"{'etcds' if self.tls else 'etcd'}://{','.join(self.endpoints)}{self.prefix}"

    @classmethod
    def parse(cls, url: str, env: Mapping[str, str]) -> EtcdSettings:
        parts = urlsplit(url)
        if parts.scheme not in ("etcd", "etcds") or not parts.netloc or "@" in parts.netloc:
            raise SystemExit(f"GATEWAY_ROUTES_STORE={url!r}: expected etcd://host:port[,host:port...]/prefix "
                             "(etcds:// for TLS; credentials go in GATEWAY_ETCD_USER/GATEWAY_ETCD_PASSWORD_FILE)")
        endpoints = tuple(e.strip() for e in parts.netloc.split(",") if e.strip())
        for endpoint in endpoints:
            host, _, port = endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise SystemExit(f"GATEWAY_ROUTES_STORE: endpoint {endpoint!r} is not host:port")
        prefix = "/" + parts.path.strip("/") if parts.path.strip("/") else DEFAULT_ETCD_PREFIX
        ca, cert, key = (_path(env, f"GATEWAY_ETCD_{name}_FILE") for name in ("CA", "CERT", "KEY"))
        if (cert is None) != (key is None):
            raise SystemExit("GATEWAY_ETCD_CERT_FILE and GATEWAY_ETCD_KEY_FILE go together (mutual TLS)")
        password = env.get("GATEWAY_ETCD_PASSWORD") or None
        password_file = _path(env, "GATEWAY_ETCD_PASSWORD_FILE")
        if password_file is not None:
            try:
                password = password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SystemExit(f"GATEWAY_ETCD_PASSWORD_FILE: cannot read {password_file}: {exc.strerror}") from None
        ttl = _float(env, "GATEWAY_ETCD_LEASE_TTL_S", 10)
        if ttl < 2 or ttl != int(ttl):
            raise SystemExit(f"GATEWAY_ETCD_LEASE_TTL_S={ttl:g}: must be a whole number of seconds >= 2")
        return cls(endpoints=endpoints, prefix=prefix, tls=parts.scheme == "etcds" or ca is not None, ca_file=ca,
                   cert_file=cert, key_file=key, user=env.get("GATEWAY_ETCD_USER") or None, password=password,
                   timeout_s=_float(env, "GATEWAY_ETCD_TIMEOUT_S", 2.0) or 2.0, lease_ttl_s=int(ttl))


@dataclass(frozen=True, slots=True)
class Settings:
    routes_file: Path = Path("routes.yaml")
    host: str = "0.0.0.0"
    port: int = 8000
    grpc_port: int = 8001  # 0 turns the gRPC listener off
    workers: int = 1
    max_body_bytes: int = 64 * 1024 * 1024
    routes_poll_s: float = 0.5  # every worker applies a new routes revision within a second
    shadow_max_pending: int = 64  # shadow calls in flight per process; more are dropped (and counted)
    access_log_sample: float = 0.0  # share of requests written to the JSON access log (gateway.access): 0 off, 1 all
    log_level: str = "info"
    # SIGTERM: seconds not-ready (Connection: close on every answer) before the listener closes (gateway/lifecycle.py)
    drain_s: float = 5.0
    # Connection hygiene on both listeners (gateway/api/connections.py). A kept-alive connection stays open this long
    # idle: above what clients and load balancers use (aiohttp 15 s, most LBs 60 s), so the client closes first and
    # never sends a request into a connection the server is closing.
    keepalive_timeout_s: float = 75.0
    header_timeout_s: float = 10.0  # a request's head must arrive within this (slowloris, idle new connections)
    body_timeout_s: float = 30.0  # longest pause while a request body is read
    max_connections: int = 10_000  # per listener and worker; lowered to fit the file descriptor limit
    grpc_max_streams: int = 128  # concurrent calls on one gRPC connection (more wait in the client)
    # Admin API (gateway/admin/): its own listener and token; never opened without a token; 0 = off.
    admin_host: str = "127.0.0.1"
    admin_port: int = 8002
    admin_token: str | None = field(default=None, repr=False)
    admin_token_file: Path | None = None
    # Where the routes live: the routes file (default), or etcd (several replicas; GATEWAY_ROUTES_STORE=etcd://...).
    # With etcd the routes file, when it exists, seeds an empty store once.
    routes_store: str = "file"
    etcd: EtcdSettings | None = None
    # The admin URL the other replicas forward rollout writes to when this one leads (etcd store only); default
    # http://<this host's address>:<admin port>.
    admin_advertise_url: str | None = None
    # Canary guards from Prometheus (every replica's metrics) instead of this process's own exposition.
    guards_prometheus_url: str | None = None
    guards_prometheus_timeout_s: float = 5.0
    # Client authentication (gateway/auth/): on when the policy file is set; off in the local stack.
    auth_file: Path | None = None  # tenants, their grants and rate limits, the JWT issuer
    auth_keys_file: Path | None = None  # hashed API keys (a Kubernetes Secret)
    auth_open: frozenset[str] = frozenset({"health", "metrics"})  # served without credentials
    auth_reload_s: float = 1.0  # the policy, keys and JWKS files are checked for changes this often
    # Set by `gateway serve` for its workers: the rate limits' shared bucket table (gateway/auth/ratelimit.py).
    ratelimit_file: Path | None = None
    # TLS on the public REST and gRPC listeners, and on the admin listener (gateway/tls.py); reloaded on change.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    admin_tls_cert_file: Path | None = None
    admin_tls_key_file: Path | None = None
    tls_reload_s: float = 1.0  # a new handshake checks the files at most this often
    # The HTTP client the REST backends are called with: aiohttp, or pyreqwest (Rust's reqwest; less CPU per call).
    http_client: str = "aiohttp"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        d = cls()
        store = env.get("GATEWAY_ROUTES_STORE", "").strip() or "file"
        return cls(
            routes_file=Path(env.get("GATEWAY_ROUTES_FILE", str(d.routes_file))),
            host=env.get("GATEWAY_HOST", d.host),
            port=_int(env, "GATEWAY_PORT", d.port),
            grpc_port=_int(env, "GATEWAY_GRPC_PORT", d.grpc_port),
            workers=_int(env, "GATEWAY_WORKERS", d.workers),
            max_body_bytes=_int(env, "GATEWAY_MAX_BODY_BYTES", d.max_body_bytes),
            routes_poll_s=_float(env, "GATEWAY_ROUTES_POLL_S", d.routes_poll_s),
            shadow_max_pending=_int(env, "GATEWAY_SHADOW_MAX_PENDING", d.shadow_max_pending),
            access_log_sample=_float(env, "GATEWAY_ACCESS_LOG_SAMPLE", d.access_log_sample),
            log_level=env.get("GATEWAY_LOG_LEVEL", d.log_level).lower(),
            drain_s=_float(env, "GATEWAY_DRAIN_S", d.drain_s),
            keepalive_timeout_s=_float(env, "GATEWAY_KEEPALIVE_TIMEOUT_S", d.keepalive_timeout_s),
            header_timeout_s=_float(env, "GATEWAY_HEADER_TIMEOUT_S", d.header_timeout_s),
            body_timeout_s=_float(env, "GATEWAY_BODY_TIMEOUT_S", d.body_timeout_s),
            max_connections=_int(env, "GATEWAY_MAX_CONNECTIONS", d.max_connections),
            grpc_max_streams=_int(env, "GATEWAY_GRPC_MAX_STREAMS", d.grpc_max_streams),
            admin_host=env.get("GATEWAY_ADMIN_HOST", d.admin_host),
            admin_port=_int(env, "GATEWAY_ADMIN_PORT", d.admin_port),
            admin_token=env.get("GATEWAY_ADMIN_TOKEN") or None,
            admin_token_file=Path(env["GATEWAY_ADMIN_TOKEN_FILE"]) if env.get("GATEWAY_ADMIN_TOKEN_FILE") else None,
            routes_store=store, etcd=EtcdSettings.parse(store, env) if store != "file" else None,
            admin_advertise_url=env.get("GATEWAY_ADMIN_ADVERTISE_URL") or None,
            guards_prometheus_url=env.get("GATEWAY_GUARDS_PROMETHEUS_URL") or None,
            guards_prometheus_timeout_s=_float(env, "GATEWAY_GUARDS_PROMETHEUS_TIMEOUT_S",
                                               d.guards_prometheus_timeout_s),
            auth_file=_path(env, "GATEWAY_AUTH_FILE"), auth_keys_file=_path(env, "GATEWAY_AUTH_KEYS_FILE"),
            auth_open=_open(env.get("GATEWAY_AUTH_OPEN", ",".join(sorted(d.auth_open)))),
            auth_reload_s=_float(env, "GATEWAY_AUTH_RELOAD_S", d.auth_reload_s) or d.auth_reload_s,
            ratelimit_file=_path(env, "GATEWAY_RATELIMIT_FILE"),
            **_pair(env, "GATEWAY_TLS", "tls"), **_pair(env, "GATEWAY_ADMIN_TLS", "admin_tls"),
            tls_reload_s=_float(env, "GATEWAY_TLS_RELOAD_S", d.tls_reload_s) or d.tls_reload_s,
            http_client=_choice(env, "GATEWAY_HTTP_CLIENT", d.http_client, HTTP_CLIENTS),
        )

    def to_env(self) -> dict[str, str]:
        """The same settings as environment variables, for worker processes that build their own."""
        admin = {"GATEWAY_ADMIN_HOST": self.admin_host, "GATEWAY_ADMIN_PORT": str(self.admin_port)}
        if self.admin_token:
            admin["GATEWAY_ADMIN_TOKEN"] = self.admin_token
        if self.admin_token_file:
            admin["GATEWAY_ADMIN_TOKEN_FILE"] = str(self.admin_token_file)
        return {
            "GATEWAY_ROUTES_FILE": str(self.routes_file), "GATEWAY_HOST": self.host, "GATEWAY_PORT": str(self.port),
            "GATEWAY_GRPC_PORT": str(self.grpc_port), "GATEWAY_WORKERS": str(self.workers),
            "GATEWAY_MAX_BODY_BYTES": str(self.max_body_bytes), "GATEWAY_ROUTES_POLL_S": str(self.routes_poll_s),
            "GATEWAY_SHADOW_MAX_PENDING": str(self.shadow_max_pending),
            "GATEWAY_ACCESS_LOG_SAMPLE": str(self.access_log_sample),
            "GATEWAY_LOG_LEVEL": self.log_level, "GATEWAY_DRAIN_S": str(self.drain_s), **admin,
            "GATEWAY_KEEPALIVE_TIMEOUT_S": str(self.keepalive_timeout_s),
            "GATEWAY_HEADER_TIMEOUT_S": str(self.header_timeout_s), "GATEWAY_BODY_TIMEOUT_S": str(self.body_timeout_s),
            "GATEWAY_MAX_CONNECTIONS": str(self.max_connections),
            "GATEWAY_GRPC_MAX_STREAMS": str(self.grpc_max_streams),
            "GATEWAY_ROUTES_STORE": self.routes_store,
            **({"GATEWAY_ADMIN_ADVERTISE_URL": self.admin_advertise_url} if self.admin_advertise_url else {}),
            **({"GATEWAY_GUARDS_PROMETHEUS_URL": self.guards_prometheus_url} if self.guards_prometheus_url else {}),
            **{name: str(value) for name, value in (
                ("GATEWAY_AUTH_FILE", self.auth_file), ("GATEWAY_AUTH_KEYS_FILE", self.auth_keys_file),
                ("GATEWAY_RATELIMIT_FILE", self.ratelimit_file), ("GATEWAY_TLS_CERT_FILE", self.tls_cert_file),
                ("GATEWAY_TLS_KEY_FILE", self.tls_key_file), ("GATEWAY_ADMIN_TLS_CERT_FILE", self.admin_tls_cert_file),
                ("GATEWAY_ADMIN_TLS_KEY_FILE", self.admin_tls_key_file)) if value is not None},
            "GATEWAY_AUTH_OPEN": ",".join(sorted(self.auth_open)), "GATEWAY_AUTH_RELOAD_S": str(self.auth_reload_s),
            "GATEWAY_TLS_RELOAD_S": str(self.tls_reload_s), "GATEWAY_HTTP_CLIENT": self.http_client,
        }


def _path(env: Mapping[str, str], key: str) -> Path | None:
    return Path(env[key]) if env.get(key) else None


OPEN_CHOICES = ("health", "metrics")


def _open(raw: str) -> frozenset[str]:
    """GATEWAY_AUTH_OPEN: what is served without credentials when authentication is on (health: liveness and
    readiness; metrics: /metrics); empty: nothing."""
    chosen = frozenset(p.strip().lower() for p in raw.split(",") if p.strip())
    unknown = sorted(chosen - set(OPEN_CHOICES))
    if unknown:
        raise SystemExit(f"GATEWAY_AUTH_OPEN={raw!r}: {unknown[0]!r} is not one of {', '.join(OPEN_CHOICES)}")
    return chosen


def _pair(env: Mapping[str, str], prefix: str, field_prefix: str) -> dict[str, Path | None]:
    """<prefix>_CERT_FILE and <prefix>_KEY_FILE: both or neither."""
    cert, key = _path(env, f"{prefix}_CERT_FILE"), _path(env, f"{prefix}_KEY_FILE")
    if (cert is None) != (key is None):
        raise SystemExit(f"{prefix}_CERT_FILE and {prefix}_KEY_FILE go together")
    return {f"{field_prefix}_cert_file": cert, f"{field_prefix}_key_file": key}


def _choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(key, "").strip().lower() or default
    if raw not in choices:
        raise SystemExit(f"{key}={raw!r} is not one of {', '.join(choices)}")
    return raw


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{key}={raw!r} is not an integer") from None


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{key}={raw!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise SystemExit(f"{key}={raw!r} must be a finite number >= 0")
    return value
