"""A closed-loop gRPC load generator on grpc.aio, run as its own process (it never shares the loop of the
benchmark or of the servers it measures).

C concurrent in-flight unary calls spread over a few channels (each channel its own HTTP/2 connection: a local
subchannel pool, so channels to one address do not share a connection); each call sends the next request as
soon as the last one answered. Requests are pre-serialized bytes and answers are kept as bytes (no
serializers), so the client's protobuf cost stays out of the loop. Latency is measured per call with
``time.perf_counter`` and reported as percentiles.

It is a worker driven over stdin/stdout, one JSON object per line each way, so one process serves a whole
benchmark (no interpreter start per measurement)::

    -> {"op": "run", "target": "127.0.0.1:8500", "method": "/tensorflow.serving.PredictionService/Predict",
        "request_b64": "...", "metadata": [["authorization", "Bearer k"]], "concurrency": 32, "seconds": 10,
        "channels": 4, "timeout_s": 10}
    <- BENCH_JSON {"requests": N, "duration_s": S, "p50_us": ..., "p90_us": ..., "p99_us": ..., "mean_us": ...,
                   "max_us": ..., "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0},
                   "codes": {"OK": N}}
    -> {"op": "call", "target": ..., "method": ..., "request_b64": ..., "metadata": [...], "timeout_s": 30}
    <- BENCH_JSON {"code": "OK", "details": "", "response_b64": "..."}

Errors: UNAVAILABLE counts as "connect", DEADLINE_EXCEEDED as "timeout", any other non-OK status as "status"
(the gRPC counterpart of a non-2xx answer). End of input ends the process.

    python load_tests/grpc_load.py [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc

JSON_MARK = "BENCH_JSON "
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel, even to the same address
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]


def _percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


def _metadata(raw: Any) -> tuple[tuple[str, str], ...] | None:
    pairs = tuple((str(k).lower(), str(v)) for k, v in raw or ())
    return pairs or None


async def _open(target: str, count: int, wait_s: float) -> list[grpc.aio.Channel]:
    channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(count)]
    try:
        await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), wait_s)
    except BaseException:
        await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)
        raise
    return channels


async def run_load(cmd: dict[str, Any]) -> dict[str, Any]:
    request = base64.b64decode(cmd["request_b64"])
    metadata = _metadata(cmd.get("metadata"))
    concurrency = int(cmd["concurrency"])
    seconds = float(cmd["seconds"])
    timeout = float(cmd.get("timeout_s", 10))
    channels = await _open(cmd["target"], max(1, min(int(cmd.get("channels", 4)), concurrency)), 10)
    calls = [ch.unary_unary(cmd["method"]) for ch in channels]  # no serializers: bytes in, bytes out
    latencies: list[float] = []
    codes: collections.Counter[str] = collections.Counter()
    clock = time.perf_counter
    try:
        start = clock()
        end = start + seconds

        async def worker(call: Callable[..., Any]) -> None:
            record = latencies.append
            while clock() < end:
                t0 = clock()
                try:
                    await call(request, timeout=timeout, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        await asyncio.sleep(0.01)  # a refused connection fails at once: do not spin
                    else:
                        record(clock() - t0)
                    continue
                record(clock() - t0)

        await asyncio.gather(*(worker(calls[i % len(calls)]) for i in range(concurrency)))
        elapsed = clock() - start
    finally:
        await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)
    failed = sum(codes.values())
    codes["OK"] = len(latencies) - failed + codes["UNAVAILABLE"]
    latencies.sort()
    errors = {"connect": codes["UNAVAILABLE"], "read": 0, "write": 0, "timeout": codes["DEADLINE_EXCEEDED"]}
    errors["status"] = failed - errors["connect"] - errors["timeout"]
    return {
        "requests": len(latencies) + errors["connect"], "duration_s": elapsed,
        "p50_us": _percentile(latencies, 50) * 1e6, "p90_us": _percentile(latencies, 90) * 1e6,
        "p99_us": _percentile(latencies, 99) * 1e6,
        "mean_us": sum(latencies) / len(latencies) * 1e6 if latencies else 0.0,
        "max_us": latencies[-1] * 1e6 if latencies else 0.0, "errors": errors,
        "codes": {k: v for k, v in codes.items() if v},
    }


async def one_call(cmd: dict[str, Any]) -> dict[str, Any]:
    """One call (waiting up to timeout_s for the server to be reachable): the benchmark checks every target."""
    timeout = float(cmd.get("timeout_s", 30))
    async with grpc.aio.insecure_channel(cmd["target"], options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(cmd["method"])
        try:
            response = await call(base64.b64decode(cmd["request_b64"]), timeout=timeout,
                                  metadata=_metadata(cmd.get("metadata")), wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            return {"code": exc.code().name, "details": exc.details() or "", "response_b64": ""}
    return {"code": "OK", "details": "", "response_b64": base64.b64encode(response).decode()}


async def serve(lines: asyncio.Queue[str | None]) -> None:
    while (line := await lines.get()) is not None:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            op = cmd.get("op")
            if op == "run":
                result = await run_load(cmd)
            elif op == "call":
                result = await one_call(cmd)
            else:
                result = {"failure": f"unknown op {op!r}"}
        except Exception as exc:  # reported to the benchmark, which raises it
            result = {"failure": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(JSON_MARK + json.dumps(result) + "\n")
        sys.stdout.flush()


async def main_async() -> None:
    # stdin is read in a thread: the loop only ever runs gRPC work (and no pipe transport needs to be set up).
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    loop.run_in_executor(None, reader)
    await serve(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C on the benchmark: go away quietly
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with contextlib.suppress(BrokenPipeError), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main_async())
    # The stdin reader thread has returned (end of input): nothing is left to wait for.


if __name__ == "__main__":
    main()
