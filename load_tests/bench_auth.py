"""What client authentication costs per request, measured in-process on the gate the fronts call
(gateway/auth/gate.py), beside a baseline measured in the same run: the same loop calling a no-op.

    python load_tests/bench_auth.py [--seconds S] [--json FILE]

Rows: an API key (remembered after its first check, as every request after a client's first one), an API key seen
for the first time (one HMAC-SHA256), a forged key (one HMAC, never remembered), a JWT remembered, a JWT's first
verification (RS256, ES256), the grant check of an inference request (permit + admit), and with a rate limit:
a process-local bucket, and the bucket table shared by the workers (an mmap'd file under an fcntl lock).
For the whole request's cost through the gateway with and without authentication, run
``load_tests/bench_overhead.py --auth`` (the same requests through two gateways, side by side).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth.gate import AuthGate
from gateway.auth.keys import add_key
from gateway.auth.ratelimit import create_table
from gateway.errors import Unauthenticated
from gateway.metrics import Metrics
from gateway.routes.schema import parse_routes
from gateway.routes.table import NO_HINTS, RouteTable
from gateway.settings import Settings
from gateway.types import ModelRef


def per_call_us(fn: Callable[[], object], seconds: float, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time per call in a tight loop of ~``seconds`` / rounds."""
    n = 1
    while True:  # size a batch to ~10 ms
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > 0.01:
            break
        n *= 2
    batch = n
    results = []
    for _ in range(rounds):
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / rounds:
            for _ in range(batch):
                fn()
            calls += batch
        results.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(results)


def setup(workdir: Path) -> dict[str, Any]:
    signing_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing_ec = ec.generate_private_key(ec.SECP256R1())
    keys = []
    for kid, key, alg in (("r", signing_rsa, "RS256"), ("e", signing_ec, "ES256")):
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": alg})
    (workdir / "jwks.json").write_text(json.dumps({"keys": keys}))
    (workdir / "auth.yaml").write_text(yaml.safe_dump({
        "jwt": {"jwks_file": str(workdir / "jwks.json"), "algorithms": ["RS256", "ES256"], "audience": "bench"},
        "tenants": {"bench": {"models": "*"},
                    "limited": {"models": "*", "rate": {"rps": 1e9, "burst": 1_000_000_000}}}}))
    key = add_key(workdir / "keys.yaml", "bench")
    limited_key = add_key(workdir / "keys.yaml", "limited")
    exp = int(time.time()) + 3600
    tokens = {alg: jwt.encode({"tenant": "bench", "aud": "bench", "exp": exp}, signer, algorithm=alg,
                              headers={"kid": kid})
              for alg, signer, kid in (("RS256", signing_rsa, "r"), ("ES256", signing_ec, "e"))}
    create_table(workdir / "buckets")
    return {"key": key, "limited_key": limited_key, "tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per row (default 1)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        workdir = Path(tmp)
        made = setup(workdir)
        settings = Settings(auth_file=workdir / "auth.yaml", auth_keys_file=workdir / "keys.yaml")
        gate = AuthGate(settings, Metrics())
        shared = AuthGate(Settings(auth_file=workdir / "auth.yaml", auth_keys_file=workdir / "keys.yaml",
                                   ratelimit_file=workdir / "buckets"), Metrics())
        table = RouteTable.from_config(parse_routes({"backends": {"b": {"kind": "tfserving", "url": "http://x"}},
                                                     "models": {"m": {"versions": {1: {"backend": "b", "model": "m",
                                                                                       "version": 1}}}}}, "b", {}))
        key = f"Bearer {made['key']}".encode()
        forged = f"Bearer {made['key'][:-4]}xxxx".encode()
        limited = f"Bearer {made['limited_key']}".encode()
        rs, es = (f"Bearer {made['tokens'][a]}".encode() for a in ("RS256", "ES256"))
        ref = ModelRef("m")
        route = table.resolve(ref)
        bench, limited_tenant = gate.policy.tenants["bench"], gate.policy.tenants["limited"]
        assert gate.jwt is not None

        def forged_key() -> None:
            with contextlib.suppress(Unauthenticated):
                gate.authenticate(forged, None)

        def first_key() -> None:
            gate.keys._verified.clear()
            gate._known.clear()
            gate.authenticate(key, None)

        def first_jwt(credential: bytes) -> Callable[[], object]:
            def run() -> None:
                gate.jwt._cache.clear()  # type: ignore[union-attr]
                gate.authenticate(credential, None)
            return run

        def grant(g: AuthGate, tenant: Any) -> Callable[[], None]:
            def run() -> None:
                g.permit(tenant, ref, NO_HINTS).admit(route, True)
            return run

        rows: list[tuple[str, Callable[[], object]]] = [
            ("baseline: the same loop calling a no-op", lambda: None),
            ("API key, remembered (every request after a client's first)", lambda: gate.authenticate(key, None)),
            ("API key, first sight: HMAC-SHA256 + compare_digest", first_key),
            ("API key, forged: HMAC-SHA256, refused (401)", forged_key),
            ("JWT, remembered until it expires", lambda: gate.authenticate(rs, None)),
            ("JWT RS256, first verification", first_jwt(rs)),
            ("JWT ES256, first verification", first_jwt(es)),
            ("grants of an inference (permit + admit), no rate limit", grant(gate, bench)),
            ("... with a rate limit, one worker (in-process bucket)", grant(gate, limited_tenant)),
            ("... with a rate limit, workers sharing the table (mmap + fcntl lock)", grant(shared, limited_tenant)),
            ("API key + grants + shared rate limit: a limited tenant's whole check",
             lambda: grant(shared, shared.authenticate(limited, None))()),
        ]
        results = []
        print(f"per call, median of 5 rounds, {args.seconds:g} s per row (this machine, in-process):")
        baseline = 0.0
        for label, fn in rows:
            us = per_call_us(fn, args.seconds)
            if not results:
                baseline = us
            results.append({"case": label, "us_per_call": round(us, 3), "above_baseline_us": round(us - baseline, 3)})
            print(f"  {label:<72} {us:9.2f} us   (+{us - baseline:.2f} over the baseline)", flush=True)
        shared.buckets.close()
        gate.buckets.close()
    if args.json:
        args.json.write_text(json.dumps({"rows": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
