"""The admin API from the tests' side: an authenticated client, and waiting on a rollout's state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

CALL_TIMEOUT_S = 10.0


def admin_client(url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=CALL_TIMEOUT_S, headers={"authorization": f"Bearer {token}"})


async def wait_rollout(admin: httpx.AsyncClient, model: str, done: Callable[[dict[str, Any]], bool],
                       timeout_s: float) -> dict[str, Any]:
    """GET /rollouts/{model} until ``done(rollout)`` or ``timeout_s``; the last answer either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = await admin.get(f"/rollouts/{model}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if done(body) or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.1)
