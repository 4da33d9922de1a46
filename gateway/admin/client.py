"""Client of the admin API (gateway/admin/app.py) and the `gateway routes ...` commands built on it.

    gateway routes show                       the routes file's text on stdout; its revision and ETag on stderr
    gateway routes apply FILE [--etag E]      replace the routes with FILE, compare-and-swap on E (the ETag `show`
                                              printed: revision and content, so an edit made since answers a
                                              conflict), by default on the ETag read just before; --revision N
                                              checks the number only
    gateway routes set-default MODEL VERSION  the instant switch [--etag E | --revision N]
    gateway rollout start MODEL TO_VERSION [--steps 5,25,50,100] [--dwell S] [--max-error-rate R]
                          [--max-p99-ratio X] [--max-p99-s S] [--min-requests N] [--sticky-header H]
    gateway rollout status MODEL | promote MODEL | rollback MODEL | abort MODEL [--why TEXT]

The admin URL comes from --admin-url or GATEWAY_ADMIN_URL (default http://127.0.0.1:8002); the token from
--token-file / GATEWAY_ADMIN_TOKEN_FILE or GATEWAY_ADMIN_TOKEN (--token works too, but shows in `ps`).
Exit status: 0 done, 1 refused or failed (the message says why), 3 revision conflict (nothing was written;
re-read and retry).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import httpx

DEFAULT_ADMIN_URL = "http://127.0.0.1:8002"
EXIT_CONFLICT = 3


class AdminError(Exception):
    """The admin API refused or failed; the message is for a person."""


class AdminConflict(AdminError):
    def __init__(self, message: str, current: int | None) -> None:
        super().__init__(message)
        self.current = current


class AdminClient:
    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        import httpx  # here, not at import: `gateway serve` does not need it

        self.url = url.rstrip("/")
        self._client: httpx.Client = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"},
                                    timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_routes(self) -> dict[str, Any]:
        """{"revision", "applied_revision", "path", "text"}."""
        return self._call("GET", "/routes")

    def revision(self) -> int:
        return int(self.get_routes()["revision"])

    def base(self) -> tuple[int, str]:
        """(revision, ETag) of the routes as they are now: a write quoting the ETag also checks the content."""
        routes = self.get_routes()
        return int(routes["revision"]), str(routes["etag"])

    def put_routes(self, text: str, revision: int, etag: str | None = None) -> dict[str, Any]:
        """{"revision": new, "etag", "applied_revision"}. With ``etag`` the write checks the content read too."""
        return self._call("PUT", "/routes", content=text.encode(), headers={
            "if-match": f'"{etag or revision}"', "content-type": "application/yaml"})

    def set_default(self, model: str, version: str, revision: int, etag: str | None = None) -> dict[str, Any]:
        return self._call("POST", f"/models/{quote(model, safe='')}/default",
                          json={"version": version, "revision": revision, **({"etag": etag} if etag else {})})

    def start_rollout(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/rollouts", json=dict(spec))

    def rollout(self, model: str) -> dict[str, Any]:
        return self._call("GET", f"/rollouts/{quote(model, safe='')}")

    def end_rollout(self, model: str, action: str, who: str, why: str = "") -> dict[str, Any]:
        """action: promote | rollback | abort."""
        return self._call("POST", f"/rollouts/{quote(model, safe='')}/{action}", json={"who": who, "why": why})

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import httpx

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise AdminError(f"the admin API at {self.url} did not answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise AdminError(f"cannot reach the admin API at {self.url}: {exc or type(exc).__name__} (is the "
                             "gateway running with GATEWAY_ADMIN_PORT and an admin token? set GATEWAY_ADMIN_URL "
                             "or --admin-url)") from exc
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:500]}
        if not isinstance(body, dict):
            body = {"error": str(body)[:500]}
        status = response.status_code
        if status == 200:
            return body
        error = str(body.get("error", ""))
        if status == 401:
            raise AdminError(f"the admin API at {self.url} refused the token (401 Unauthorized): use the gateway's "
                             "admin token (GATEWAY_ADMIN_TOKEN or GATEWAY_ADMIN_TOKEN_FILE, or --token/--token-file)")
        if status == 409 and path.startswith("/rollouts"):  # a state conflict (one running already, ended)
            raise AdminError(f"refused (409): {error}")
        if status == 409:
            current = body.get("revision")
            raise AdminConflict(f"revision conflict, nothing was written: {error}. Run `gateway routes show`, redo "
                                "the change and apply it again", current if isinstance(current, int) else None)
        if status == 400:
            raise AdminError(f"refused, nothing was written: {error}")
        if status == 404:
            raise AdminError(f"not found (404): {error}")
        raise AdminError(f"the admin API answered {status}: {error or response.text[:500]}")


def _token(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    token_file = args.token_file or environ.get("GATEWAY_ADMIN_TOKEN_FILE")
    if args.token:
        return str(args.token)
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AdminError(f"cannot read the admin token file {token_file}: {exc.strerror}") from exc
        if token:
            return token
        raise AdminError(f"the admin token file {token_file} is empty")
    token = environ.get("GATEWAY_ADMIN_TOKEN", "").strip()
    if not token:
        raise AdminError("no admin token: set GATEWAY_ADMIN_TOKEN or GATEWAY_ADMIN_TOKEN_FILE (or --token-file)")
    return token


def _common(p: Any) -> None:
    p.add_argument("--admin-url", help=f"admin API (default: $GATEWAY_ADMIN_URL or {DEFAULT_ADMIN_URL})")
    p.add_argument("--token-file", help="file holding the admin token (default: $GATEWAY_ADMIN_TOKEN_FILE)")
    p.add_argument("--token", help="the admin token (default: $GATEWAY_ADMIN_TOKEN; visible in ps, prefer a file)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")


def add_rollout_parser(sub: Any) -> None:
    """`gateway rollout ...`: canary rollouts through the admin API (gateway/control/orchestrator.py)."""
    p = sub.add_parser("rollout", help="canary rollouts through the admin API", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    cmds = p.add_subparsers(dest="rollout_command", required=True)
    p_start = cmds.add_parser("start", help="start moving MODEL to TO_VERSION in canary steps")
    p_start.add_argument("model")
    p_start.add_argument("to_version")
    p_start.add_argument("--from-version", help="the version it serves now (default: its default version)")
    p_start.add_argument("--steps", help="canary percentages, comma-separated (default 5,25,50,100)")
    p_start.add_argument("--dwell", type=float, help="seconds per step (default 60)")
    p_start.add_argument("--max-error-rate", type=float, help="canary 5xx share that rolls back (default 0.05)")
    p_start.add_argument("--max-p99-ratio", type=float, help="canary p99 / stable p99 that rolls back")
    p_start.add_argument("--max-p99-s", type=float, help="canary p99 in seconds that rolls back")
    p_start.add_argument("--min-requests", type=int, help="canary requests a step needs to pass (default 20)")
    p_start.add_argument("--sticky-header", help="header whose value keeps a user on one variant")
    p_start.add_argument("--why", default="", help="recorded in the rollout's history")
    life = p_start.add_argument_group("lifecycle", "deploy the new version first, warm it up, retire the old one")
    life.add_argument("--deploy", action="store_true",
                      help="load TO_VERSION on its backend and wait until it serves (TF Serving: from its base_path)")
    life.add_argument("--archive", help="TorchServe: the archive (.mar in the model store, or a URL); implies --deploy")
    life.add_argument("--deploy-workers", type=int, help="TorchServe: initial workers (default 1)")
    life.add_argument("--deploy-timeout", type=float, help="seconds to wait until it serves (default 120)")
    life.add_argument("--warmup", type=Path, metavar="FILE",
                      help="JSON: a v2 inference body, or a list of them, sent to TO_VERSION before any traffic")
    life.add_argument("--warmup-count", type=int, help="send a single warm-up body this many times")
    life.add_argument("--retire", action="store_true",
                      help="after promotion, drain and unload the old version (never one the routes still use)")
    for name in ("status", "promote", "rollback", "abort"):
        c = cmds.add_parser(name, help=f"{name} MODEL's rollout" if name != "status" else "show MODEL's rollout")
        c.add_argument("model")
        if name != "status":
            c.add_argument("--why", default="", help="recorded in the rollout's history")


def lifecycle_spec(args: argparse.Namespace) -> dict[str, Any]:
    """``deploy``, ``warmup`` and ``retire`` of POST /rollouts from the start command's flags (the admin API
    validates them against the target's backend)."""
    import json

    spec: dict[str, Any] = {}
    if args.deploy or args.archive or args.deploy_workers is not None or args.deploy_timeout is not None:
        deploy: dict[str, Any] = {}
        if args.archive:
            deploy["archive"] = args.archive
        if args.deploy_workers is not None:
            deploy["workers"] = args.deploy_workers
        if args.deploy_timeout is not None:
            deploy["timeout_s"] = args.deploy_timeout
        spec["deploy"] = deploy
    if args.warmup is not None:
        try:
            samples = json.loads(args.warmup.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise AdminError(f"--warmup: cannot read {args.warmup}: {exc}") from exc
        if args.warmup_count is not None:
            if not isinstance(samples, dict):
                raise AdminError("--warmup-count needs --warmup FILE to hold a single v2 inference body")
            samples = {"body": samples, "count": args.warmup_count}
        spec["warmup"] = samples
    elif args.warmup_count is not None:
        raise AdminError("--warmup-count needs --warmup FILE")
    if args.retire:
        spec["retire"] = True
    return spec


def run_rollout(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    import json

    env = os.environ if environ is None else environ
    url = args.admin_url or env.get("GATEWAY_ADMIN_URL") or DEFAULT_ADMIN_URL
    who = env.get("USER") or env.get("LOGNAME") or "cli"
    try:
        with AdminClient(url, _token(args, env), timeout_s=args.timeout) as client:
            if args.rollout_command == "start":
                spec: dict[str, Any] = {"model": args.model, "to_version": args.to_version, "who": who,
                                        "why": args.why}
                if args.steps:
                    try:
                        spec["steps"] = [float(s) for s in args.steps.split(",") if s.strip()]
                    except ValueError as exc:
                        raise AdminError(f"--steps: {exc}") from exc
                for key in ("from_version", "max_error_rate", "max_p99_ratio", "max_p99_s", "min_requests",
                            "sticky_header"):
                    if getattr(args, key) is not None:
                        spec[key] = getattr(args, key)
                if args.dwell is not None:
                    spec["dwell_s"] = args.dwell
                spec.update(lifecycle_spec(args))
                done = client.start_rollout(spec)
            elif args.rollout_command == "status":
                done = client.rollout(args.model)
            else:
                done = client.end_rollout(args.model, args.rollout_command, who, args.why)
            print(json.dumps(done, indent=2))
            print(f"# {done['model']}: {done['state']} at {done['percent']:g}% ({done['from_version']} -> "
                  f"{done['to_version']}){': ' + done['reason'] if done.get('reason') else ''}", file=sys.stderr)
            return 0
    except AdminError as exc:
        print(f"gateway rollout {args.rollout_command}: {exc}", file=sys.stderr)
        return EXIT_CONFLICT if isinstance(exc, AdminConflict) else 1


def add_parser(sub: Any) -> None:
    """`gateway routes ...` under the main parser's subcommands."""
    p = sub.add_parser("routes", help="show or change the routes through the admin API",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    cmds = p.add_subparsers(dest="routes_command", required=True)
    cmds.add_parser("show", help="print the routes file (stdout) and its revision (stderr)")
    p_apply = cmds.add_parser("apply", help="replace the routes with FILE (validated, compare-and-swap)")
    p_apply.add_argument("file", type=Path)
    for p_write in (p_apply, p_set := cmds.add_parser("set-default", help="switch MODEL's default version to "
                                                                          "VERSION at once")):
        which = p_write.add_mutually_exclusive_group()
        which.add_argument("--etag", help="the ETag FILE was based on, as `gateway routes show` printed it: the "
                                          "write checks revision and content (default: the ETag read just before)")
        which.add_argument("--revision", type=int, help="the revision it was based on (checks the number only)")
    p_set.add_argument("model")
    p_set.add_argument("version")


def _base(client: AdminClient, args: argparse.Namespace) -> tuple[int, str | None]:
    """What a write compares with: --etag (revision and content), --revision (the number), else the ETag now."""
    if args.etag:
        number = args.etag.strip().strip('"').partition("-")[0]
        if not number.isdigit():
            raise AdminError(f"--etag {args.etag!r}: expected the ETag `gateway routes show` printed "
                             "(<revision>-<digest>)")
        return int(number), args.etag.strip().strip('"')
    return client.base() if args.revision is None else (args.revision, None)


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    url = args.admin_url or env.get("GATEWAY_ADMIN_URL") or DEFAULT_ADMIN_URL
    try:
        with AdminClient(url, _token(args, env), timeout_s=args.timeout) as client:
            if args.routes_command == "show":
                routes = client.get_routes()
                sys.stdout.write(routes["text"])
                print(f"# {routes['path']}: revision {routes['revision']}, etag {routes['etag']} (applied by the "
                      f"process that answered: {routes['applied_revision']})", file=sys.stderr)
                return 0
            if args.routes_command == "apply":
                try:
                    text = args.file.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise AdminError(f"cannot read {args.file}: {exc}") from exc
                base, etag = _base(client, args)
                done = client.put_routes(text, base, etag)
                print(f"applied {args.file}: revision {base} -> {done['revision']}")
                return 0
            base, etag = _base(client, args)
            done = client.set_default(args.model, args.version, base, etag)
            print(f"{args.model}: default version {done['default_version']} (revision {base} -> {done['revision']})")
            return 0
    except AdminConflict as exc:
        print(f"gateway routes {args.routes_command}: {exc}", file=sys.stderr)
        return EXIT_CONFLICT
    except AdminError as exc:
        print(f"gateway routes {args.routes_command}: {exc}", file=sys.stderr)
        return 1
