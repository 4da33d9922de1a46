"""Storms of operational events (gateway/events.py): the first few logged as they come, the rest summed up."""

from __future__ import annotations

import logging

import pytest

from gateway.events import Storm

log = logging.getLogger("gateway.test.events")


def test_a_storm_logs_its_first_events_then_one_summary_per_window(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    storm = Storm(log, "calls refused", window_s=10, per_window=2, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="gateway.test.events"):
        for i in range(30):
            storm.note("backend 'ts' queue full" if i % 3 else "backend 'tf' wait timeout", f"refused call {i}")
        assert [r.getMessage() for r in caplog.records] == ["refused call 0", "refused call 1"]
        storm.flush()
        assert len(caplog.records) == 2  # the window is not over
        now[0] = 10.5
        storm.flush()
        summary = caplog.records[-1].getMessage()
        assert summary.startswith("28 more calls refused in the last 10 s (not logged one by one): ")
        assert "backend 'ts' queue full x19" in summary and "backend 'tf' wait timeout x9" in summary
        storm.note("backend 'ts' queue full", "a new window: logged again")
        assert caplog.records[-1].getMessage() == "a new window: logged again"
        storm.flush(force=True)
        assert len(caplog.records) == 4  # nothing counted since: no summary
