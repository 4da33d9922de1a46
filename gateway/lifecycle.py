"""Graceful shutdown of one gateway process: SIGTERM -> not ready -> drain -> exit.

uvicorn stops a process on SIGTERM by closing its listener at once and finishing the requests in flight. Two
things fail requests there: a client that sends its next request on a keep-alive connection just as the server
closes it (the request is lost on the wire), and a load balancer (or kube-proxy) that still sends new
connections to an instance whose endpoint has not been removed yet. So the first SIGTERM is handled here:

1. ``begin`` runs at once: the process turns not ready (``/v2/health/ready`` 400, ``/ping`` 503, gRPC health
   NOT_SERVING, ``ServerReady`` false) and every REST response carries ``Connection: close``, so busy clients
   move to a fresh connection (another worker, another replica) after their current request.
2. After ``drain_s`` (``GATEWAY_DRAIN_S``) uvicorn's own SIGTERM handling runs: the listener closes, requests in
   flight finish (``timeout_graceful_shutdown``), then the lifespan shutdown stops gRPC with a grace period
   (GOAWAY: clients reconnect elsewhere; calls in flight finish).

A second SIGTERM skips the rest of the delay. SIGINT (Ctrl-C) is left to uvicorn: it stops at once.

With several workers on one shared socket (``gateway serve --workers N``), ``kill -HUP <master>`` restarts the
workers one by one (uvicorn brings each replacement up, waits until it is ready, then sends the old one
SIGTERM), so the gateway's code and settings are replaced under load without a failed request.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("gateway")

Handler = Callable[[int, FrameType | None], Any]


def install_sigterm_drain(drain_s: float, begin: Callable[[], None]) -> bool:
    """Put a delay of ``drain_s`` in front of the SIGTERM handler installed now (uvicorn's), calling ``begin`` on
    the loop when the first SIGTERM arrives. Call it from the running loop's thread. Does nothing (False) off the
    main thread, with ``drain_s <= 0``, or when no Python handler is installed (no server would stop then)."""
    if drain_s <= 0 or threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return False
    loop = asyncio.get_running_loop()
    stop: Handler = previous
    fired = False

    def stop_now(sig: int) -> None:
        stop(sig, None)

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:  # a second SIGTERM: stop now
            loop.call_soon_threadsafe(stop_now, sig)
            return
        fired = True
        loop.call_soon_threadsafe(begin)
        loop.call_soon_threadsafe(loop.call_later, drain_s, stop_now, sig)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True
