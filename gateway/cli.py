"""Command line: `gateway serve` (the gateway), `gateway dev` (the whole local stack), `gateway check-routes`,
`gateway routes show|apply|set-default` (the admin API's client)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from gateway.admin import client as admin_client
from gateway.errors import ConfigError
from gateway.routes.schema import load_routes
from gateway.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def serve(settings: Settings) -> None:
    import uvicorn

    # Fail before forking workers when the routes file is invalid, with the validator's message.
    load_routes(settings.routes_file)
    os.environ.update(settings.to_env())  # uvicorn's factory (in every worker) rebuilds Settings from these
    if settings.workers > 1:
        _multiprocess_metrics_dir()
    else:  # SIGHUP's default action would kill the only worker at once, requests in flight included
        signal.signal(signal.SIGHUP, _sighup_single_worker)
    uvicorn.run(
        "gateway.server:create_app", factory=True, host=settings.host, port=settings.port,
        workers=settings.workers, loop="uvloop", http="httptools", lifespan="on",
        log_level=settings.log_level, access_log=False, timeout_graceful_shutdown=30,
        # SIGHUP to this (master) process restarts the workers one by one; a new worker must finish its startup
        # (routes, backend clients, gRPC listener) within this before the old one is stopped, else the restart
        # is abandoned and the old workers keep serving. Also how long a hung worker may miss its health pings.
        timeout_worker_healthcheck=30,
        log_config=_log_config(settings.log_level),
        # No X-Forwarded-* rewriting (a per-request middleware): the gateway does not use client addresses.
        proxy_headers=False, server_header=False,
    )


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _sighup_single_worker(sig: int, frame: object) -> None:
    logging.getLogger("gateway").warning(
        "SIGHUP ignored: a rolling restart needs --workers 2 or more (one process cannot hand its requests over); "
        "SIGTERM drains and stops it")


def _log_config(level: str) -> dict[str, object]:
    """uvicorn applies this in every worker process, so the gateway's own loggers (assignments, route reloads)
    reach the output from workers too, not only from a process that called logging.basicConfig."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["gateway"] = {"format": LOG_FORMAT}
    config["handlers"]["gateway"] = {"formatter": "gateway", "class": "logging.StreamHandler",
                                     "stream": "ext://sys.stderr"}
    config["loggers"]["gateway"] = {"handlers": ["gateway"], "level": level.upper(), "propagate": False}
    return config


def _multiprocess_metrics_dir() -> None:
    """Several workers share one set of Prometheus metrics through files in PROMETHEUS_MULTIPROC_DIR (any worker's
    /metrics shows all). The directory must exist and be empty before the workers start."""
    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="gateway-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def check_routes(path: Path) -> int:
    try:
        config = load_routes(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: revision {config.revision}, {len(config.models)} models on {len(config.backends)} backends: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the gateway (settings from GATEWAY_* environment variables)")
    p_serve.add_argument("--routes", type=Path, help="routes file (default: $GATEWAY_ROUTES_FILE or routes.yaml)")
    p_serve.add_argument("--port", type=int)
    p_serve.add_argument("--grpc-port", type=int, help="0 turns gRPC off (default: $GATEWAY_GRPC_PORT or 8001)")
    p_serve.add_argument("--workers", type=int)
    p_dev = sub.add_parser("dev", help="start TorchServe, TF Serving (real or stand-in) and the gateway locally")
    p_dev.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8000")))
    p_dev.add_argument("--grpc-port", type=int, default=int(os.environ.get("GATEWAY_GRPC_PORT", "8001")))
    p_dev.add_argument("--admin-port", type=int, default=int(os.environ.get("GATEWAY_ADMIN_PORT", "8002")))
    p_dev.add_argument("--workdir", type=Path, default=REPO_ROOT / ".run" / "dev")
    p_dev.add_argument("--no-token-auth", action="store_true", help="start TorchServe without token auth")
    p_check = sub.add_parser("check-routes", help="validate a routes file and exit")
    p_check.add_argument("routes", type=Path)
    admin_client.add_parser(sub)  # gateway routes show | apply FILE | set-default MODEL VERSION
    admin_client.add_rollout_parser(sub)  # gateway rollout start | status | promote | rollback | abort
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("GATEWAY_LOG_LEVEL", "info").upper(), format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polling in `gateway dev` is not news

    if args.command == "check-routes":
        return check_routes(args.routes)
    if args.command == "routes":
        return admin_client.run(args)
    if args.command == "rollout":
        return admin_client.run_rollout(args)
    if args.command == "dev":
        from gateway.dev.devstack import run_dev

        return run_dev(port=args.port, grpc_port=args.grpc_port, workdir=args.workdir,
                       token_auth=not args.no_token_auth, admin_port=args.admin_port)
    settings = Settings.from_env()
    overrides = {k: v for k, v in (("routes_file", args.routes), ("port", args.port), ("grpc_port", args.grpc_port),
                                   ("workers", args.workers)) if v is not None}
    try:
        serve(dataclasses.replace(settings, **overrides))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
