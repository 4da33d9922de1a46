"""Process settings from environment variables (ports, limits, paths); routes live in the routes file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


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
    log_level: str = "info"
    # SIGTERM: seconds not-ready (Connection: close on every answer) before the listener closes (gateway/lifecycle.py)
    drain_s: float = 5.0
    # Admin API (gateway/admin/): its own listener and token; never opened without a token; 0 = off.
    admin_host: str = "127.0.0.1"
    admin_port: int = 8002
    admin_token: str | None = field(default=None, repr=False)
    admin_token_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        d = cls()
        return cls(
            routes_file=Path(env.get("GATEWAY_ROUTES_FILE", str(d.routes_file))),
            host=env.get("GATEWAY_HOST", d.host),
            port=_int(env, "GATEWAY_PORT", d.port),
            grpc_port=_int(env, "GATEWAY_GRPC_PORT", d.grpc_port),
            workers=_int(env, "GATEWAY_WORKERS", d.workers),
            max_body_bytes=_int(env, "GATEWAY_MAX_BODY_BYTES", d.max_body_bytes),
            routes_poll_s=_float(env, "GATEWAY_ROUTES_POLL_S", d.routes_poll_s),
            shadow_max_pending=_int(env, "GATEWAY_SHADOW_MAX_PENDING", d.shadow_max_pending),
            log_level=env.get("GATEWAY_LOG_LEVEL", d.log_level).lower(),
            drain_s=_float(env, "GATEWAY_DRAIN_S", d.drain_s),
            admin_host=env.get("GATEWAY_ADMIN_HOST", d.admin_host),
            admin_port=_int(env, "GATEWAY_ADMIN_PORT", d.admin_port),
            admin_token=env.get("GATEWAY_ADMIN_TOKEN") or None,
            admin_token_file=Path(env["GATEWAY_ADMIN_TOKEN_FILE"]) if env.get("GATEWAY_ADMIN_TOKEN_FILE") else None,
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
            "GATEWAY_LOG_LEVEL": self.log_level, "GATEWAY_DRAIN_S": str(self.drain_s), **admin,
        }


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
