"""The gateway under abuse with the numbers of issue 12, each figure printed beside a baseline from the same run.

Starts the stack of tests/integration/abuse.py (its own TorchServe with a job queue of 8, two TF Servings, the
fast test backends, two black holes, the gateway) plus a second gateway with the settings the gateway had before
(uvicorn's 5 s keep-alive, no read timeouts), then runs, on 127.0.0.1, each loop bounded in count and time:

* 4,000 idle + 300 slow-header connections while a client keeps sending requests (the default header timeout,
  10 s), against both gateways;
* 3,000 keep-alive clients with a 15 s client keep-alive (pauses of 3-14.5 s between requests), both gateways;
* 1,024 clients against TorchServe for 20 s: through a backend with admission control (8 calls in flight, 16
  waiting, 0.5 s at most), and through one without (as before: no limit, no health checks, no ejection);
* TorchServe stopped (SIGSTOP) for 20 s under 40 req/s, both ways;
* two TF Servings behind one backend, a black hole among three endpoints, slow gRPC calls (5 s each, for 60 s)
  through connections aged every 0.41 s, exact backend timeouts, and last an A/B variant whose TF Serving is
  killed (-9).

    python load_tests/bench_resilience.py [--quick] [--workdir DIR] [--json FILE]

``--quick`` uses the small numbers of the CI test. Takes about 5 minutes (the TorchServe hang 40 s of it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from gateway.lifecycle import grpc_max_connection_age_s  # noqa: E402
from tests.integration import abuse  # noqa: E402  # the scenarios, shared with tests/integration/test_resilience.py

OLD_SETTINGS = {"GATEWAY_KEEPALIVE_TIMEOUT_S": "5", "GATEWAY_HEADER_TIMEOUT_S": "0", "GATEWAY_BODY_TIMEOUT_S": "0"}
# The defaults (the CI test uses 2 s to stay short): a Python load generator with thousands of clients may take
# more than 2 s between connecting and writing its request, and would be closed as idle.
HEADER_TIMEOUT_S = 10


async def run(stack: abuse.AbuseStack, old_url: str, quick: bool) -> dict[str, Any]:
    n = {"idle": 1000 if quick else 4000, "keepalive": 400 if quick else 3000, "flood": 256 if quick else 1024,
         "flood_s": 6 if quick else 20, "hang_s": 5 if quick else 20, "slow_s": 20 if quick else 60}
    figures: dict[str, Any] = {"numbers": n}

    def show(title: str, result: Any) -> None:
        abuse.printed(title, result.lines())
        figures[title] = dataclasses.asdict(result)

    show("idle and slow-header connections", await abuse.idle_and_slow_connections(
        stack.gateway_url, n["idle"], 300, header_timeout_s=HEADER_TIMEOUT_S))
    show("idle and slow-header connections, baseline (no header timeout)", await abuse.idle_and_slow_connections(
        old_url, n["idle"], 300, header_timeout_s=HEADER_TIMEOUT_S))
    show("keep-alive clients", await abuse.keepalive_clients(stack.gateway_url, n["keepalive"], rounds=2))
    show("keep-alive clients, baseline (5 s server keep-alive)", await abuse.keepalive_clients(
        old_url, n["keepalive"], rounds=2))
    show("flood", await abuse.flood(stack, n["flood"], n["flood_s"]))
    show("flood, baseline (no admission control)", await abuse.flood(stack, n["flood"], n["flood_s"], model="open"))
    show("TorchServe hang", await abuse.backend_hang(stack, n["hang_s"], rate=40))
    await asyncio.sleep(3)  # TorchServe settles
    show("TorchServe hang, baseline (no admission control, no health checks)", await abuse.backend_hang(
        stack, n["hang_s"], rate=40, model="open", backend="ts_open"))
    await asyncio.sleep(3)
    show("two TF Servings", await abuse.balanced(stack, "pair", 2000))
    show("black hole among three", await abuse.balanced(stack, "trio", 1000, min_s=10))
    age = grpc_max_connection_age_s(1.5) or 0.0
    show("slow gRPC calls", await abuse.slow_grpc_calls(stack.grpc_target, 10, n["slow_s"], age))
    failover, plain = await abuse.kill_variant_backend(stack, duration_s=10)
    show("A/B variant backend killed, with a failover variant", failover)
    show("A/B variant backend killed, without", plain)
    return figures


def _plain(value: Any) -> Any:
    """JSON-ready: mappings with string keys all the way down."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI test's small numbers")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here too")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-resilience-"))
    print(f"open file limit {abuse.raise_fd_limit()}; starting TorchServe, two TF Servings and the gateways in "
          f"{workdir} ...", flush=True)
    started = time.monotonic()
    stack = abuse.start_stack(workdir, gateway_env={"GATEWAY_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                                                    "GATEWAY_BODY_TIMEOUT_S": "30"})
    try:
        old_url = abuse.another_gateway(stack, "gateway_old", OLD_SETTINGS)
        # The clients run here, on the same cores as the servers: below them, as clients elsewhere would be.
        os.nice(10)
        print(f"stack up in {time.monotonic() - started:.0f} s; the clients run at nice 10", flush=True)
        figures = asyncio.run(run(stack, old_url, args.quick))
    finally:
        stack.stop()
    if args.json is not None:
        args.json.write_text(json.dumps(_plain(figures), indent=2, default=str))
    print(f"\ndone in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
