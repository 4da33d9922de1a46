"""SIGTERM handling (gateway/lifecycle.py), GATEWAY_DRAIN_S, and the in-flight gauge summed over worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import pytest

from gateway.lifecycle import grpc_max_connection_age_s, install_sigterm_drain, stop_listening
from gateway.settings import Settings


async def test_first_sigterm_begins_the_drain_and_stops_after_the_delay() -> None:
    stopped, begun = asyncio.Event(), asyncio.Event()
    stopped_at: list[float] = []

    def server_handler(sig: int, frame: FrameType | None) -> None:  # stands for uvicorn's handle_exit
        stopped_at.append(time.monotonic())
        stopped.set()

    original = signal.signal(signal.SIGTERM, server_handler)
    try:
        assert install_sigterm_drain(1.0, begun.set)
        sent = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(begun.wait(), 5)
        assert not stopped.is_set()  # draining, not stopped
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM (uvicorn's master forwards its own) is ignored
        await asyncio.wait_for(stopped.wait(), 10)
        assert len(stopped_at) == 1 and stopped_at[0] - sent >= 0.99
        await asyncio.sleep(0.1)
        assert len(stopped_at) == 1
    finally:
        signal.signal(signal.SIGTERM, original)


async def test_nothing_is_installed_without_a_server_handler_or_a_delay() -> None:
    original = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert not install_sigterm_drain(1.0, lambda: None)  # no server would ever stop the process
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        signal.signal(signal.SIGTERM, lambda sig, frame: None)
        assert not install_sigterm_drain(0.0, lambda: None)  # GATEWAY_DRAIN_S=0: uvicorn's handling as it is
    finally:
        signal.signal(signal.SIGTERM, original)


def test_grpc_connection_age_fits_in_the_second_half_of_the_drain() -> None:
    assert grpc_max_connection_age_s(0) is None
    for drain in (2.0, 5.0, 30.0):
        age = grpc_max_connection_age_s(drain)
        assert age is not None and drain / 2 + 1.1 * age + 0.3 <= drain + 1e-9  # jitter + reconnect included
    assert grpc_max_connection_age_s(0.5) == 0.1  # never below a tenth of a second


def test_drain_setting() -> None:
    assert Settings.from_env({}).drain_s == 5.0
    assert Settings.from_env({"GATEWAY_DRAIN_S": "0.5"}).drain_s == 0.5
    for bad in ("-1", "soon", "inf", "nan"):
        with pytest.raises(SystemExit, match="GATEWAY_DRAIN_S"):
            Settings.from_env({"GATEWAY_DRAIN_S": bad})


WORKER = """
import sys, time
from gateway.metrics import Metrics
m = Metrics()
m.inflight_child("ts", "scale", "1").inc(int(sys.argv[1]))
m.routes_revision.set(int(sys.argv[2]))
print("ready", flush=True)
time.sleep(60)
"""

READER = """
from gateway.metrics import Metrics
m = Metrics()
m.inflight_child("ts", "scale", "1").inc()
m.routes_revision.set(9)
print(m.applied_revision_all_workers())
print(m.inflight_all_workers("ts", "scale", "1"), m.inflight_all_workers("ts", "scale", "2"))
m.process_exiting()
print(Metrics().inflight_all_workers("ts", "scale", "1"))
"""


def test_inflight_is_summed_over_live_workers_only(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(n), str(revision)], env=env,
                                stdout=subprocess.PIPE, text=True) for n, revision in ((2, 7), (3, 9))]
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"

        def read() -> list[str]:
            out = subprocess.run([sys.executable, "-c", READER], env=env, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return out.stdout.split()

        # The oldest revision served; in flight 2 + 3 + its own 1, another version 0; its own gone after exiting.
        assert read() == ["7", "6", "0", "5"]
        workers[0].kill()  # a worker that died without cleaning up: its files no longer count, and are removed
        workers[0].wait()
        assert read() == ["9", "4", "0", "3"]
        assert not list(tmp_path.glob(f"gauge_live*_{workers[0].pid}.db"))
    finally:
        for w in workers:
            w.kill()
            w.wait()
            if w.stdout is not None:
                w.stdout.close()


def test_inflight_outside_multiprocess_mode_is_none() -> None:
    from gateway.metrics import Metrics

    assert Metrics().inflight_all_workers("ts", "scale", "1") is None


def test_stop_listening_refuses_new_connections_and_leaves_other_ports_alone() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as target, socket.create_server(("127.0.0.1", 0)) as other:
        port = target.getsockname()[1]
        assert stop_listening(port) == 1
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        socket.create_connection(("127.0.0.1", other.getsockname()[1]), timeout=2).close()  # still listening
        assert stop_listening(port) == 0  # nothing listens there any more
