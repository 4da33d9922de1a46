"""Command line: `gateway serve` (the gateway), `gateway dev` (the whole local stack), `gateway check-routes`,
`gateway routes show|apply|set-default` (the admin API's client), `gateway auth add-key` (a client API key)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from gateway.admin import client as admin_client
from gateway.errors import ConfigError
from gateway.routes.schema import load_routes
from gateway.settings import Settings
from gateway.tls import TLSSetupError

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    p_auth = sub.add_parser("auth", help="client authentication: make API keys")
    auth_cmds = p_auth.add_subparsers(dest="auth_command", required=True)
    p_key = auth_cmds.add_parser("add-key", help="make a new API key for TENANT: its hash goes into KEYS_FILE "
                                                 "(made, with a random salt, when missing), the key to stdout, once")
    p_key.add_argument("keys_file", type=Path)
    p_key.add_argument("tenant")
    p_key.add_argument("--id", help="a name for people (default: TENANT-N)")
    p_key.add_argument("--policy", type=Path, help="refuse a TENANT this auth policy does not define "
                                                   "(default: $GATEWAY_AUTH_FILE when set)")
    admin_client.add_parser(sub)  # gateway routes show | apply FILE | set-default MODEL VERSION
    admin_client.add_rollout_parser(sub)  # gateway rollout start | status | promote | rollback | abort
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("GATEWAY_LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polling in `gateway dev` is not news

    if args.command == "check-routes":
        return check_routes(args.routes)
    if args.command == "auth":
        return add_key(args.keys_file, args.tenant, args.id, args.policy or _env_path("GATEWAY_AUTH_FILE"))
    if args.command == "routes":
        return admin_client.run(args)
    if args.command == "rollout":
        return admin_client.run_rollout(args)
    if args.command == "dev":
        from gateway.dev.devstack import run_dev

        return run_dev(port=args.port, grpc_port=args.grpc_port, workdir=args.workdir,
                       token_auth=not args.no_token_auth, admin_port=args.admin_port)
    from gateway.server import serve

    settings = Settings.from_env()
    overrides = {k: v for k, v in (("routes_file", args.routes), ("port", args.port), ("grpc_port", args.grpc_port),
                                   ("workers", args.workers)) if v is not None}
    try:
        serve(dataclasses.replace(settings, **overrides))
    except (ConfigError, TLSSetupError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def add_key(keys_file: Path, tenant: str, key_id: str | None, policy_file: Path | None) -> int:
    from gateway.auth.keys import add_key as write_key
    from gateway.auth.tenants import load_policy

    try:
        if policy_file is not None and tenant not in load_policy(policy_file).tenants:
            print(f"{policy_file}: no tenant {tenant!r}", file=sys.stderr)
            return 1
        key = write_key(keys_file, tenant, key_id)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"gateway auth add-key: {exc}", file=sys.stderr)
        return 1
    print(key)
    print(f"# the key above is shown once; {keys_file} holds only its hash (tenant {tenant})", file=sys.stderr)
    return 0


def _env_path(name: str) -> Path | None:
    return Path(os.environ[name]) if os.environ.get(name) else None


if __name__ == "__main__":
    raise SystemExit(main())
