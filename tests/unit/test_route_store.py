"""The file route store's log lines an operator needs: a refused reload names the worker, a revision that goes
backwards is said (and still served)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

from gateway.routes.store import FileRouteStore

ROUTES = {"backends": {"tf": {"kind": "tfserving", "url": "http://127.0.0.1:8501"}},
          "models": {"m": {"versions": {1: {"backend": "tf", "model": "m", "version": 1}}}}}


async def test_reloads_log_refusals_with_the_worker_and_revisions_that_go_backwards(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({"revision": 7, **ROUTES}))
    store = FileRouteStore(path)
    with caplog.at_level(logging.INFO, logger="gateway.routes.store"):
        path.write_text("revision: [")
        assert not await store.reload()
        assert f"routes file refused by worker pid {os.getpid()}" in caplog.text
        assert store.current.revision == 7  # the last good table keeps serving
        path.write_text(yaml.safe_dump({"revision": 5, **ROUTES}))
        assert await store.reload()
    assert store.current.revision == 5
    assert f"routes revision went backwards in worker pid {os.getpid()}: 7 -> 5" in caplog.text
