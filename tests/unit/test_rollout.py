"""Canary rollouts (gateway/control/: orchestrator, guards, rollout_spec, routes_edit, rollout_state) without
backends: step planning, p99 from histogram buckets, guard decisions, routes edits, state persistence, and the
orchestrator driven by a fake traffic source that records into a real Metrics object."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from gateway.control.guards import Guards, Window, evaluate, quantile, snapshot
from gateway.control.orchestrator import Orchestrator
from gateway.control.rollout_spec import RolloutSpec
from gateway.control.rollout_state import Rollout, StateStore, public
from gateway.control.routes_edit import applied_percent, step_routes
from gateway.errors import ControlError
from gateway.metrics import Metrics
from gateway.routes import writer
from gateway.routes.schema import load_routes

ROUTES = """\
revision: 1
backends:
  ts: {kind: torchserve, url: "http://127.0.0.1:8080"}
models:
  scale:
    default_version: 1
    versions:
      1: {backend: ts, model: scale, version: "1"}
      2: {backend: ts, model: scale, version: "2"}
  other:
    versions:
      1: {backend: ts, model: other, version: "1"}
  ab:
    versions:
      1: {backend: ts, model: ab, version: "1"}
      2: {backend: ts, model: ab, version: "2"}
    experiment:
      variants: [{name: a, version: 1, weight: 50}, {name: b, version: 2, weight: 50}]
"""


@pytest.fixture()
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    return path


def _rollout(**kw: object) -> Rollout:
    args: dict[str, object] = {"model": "scale", "from_version": "1", "to_version": "2",
                               "steps": [10.0, 50.0, 100.0], "dwell_s": 0.2, "guards": Guards(min_requests=5)}
    args.update(kw)
    return Rollout(**args)  # type: ignore[arg-type]


# --- planning, quantiles, guards ----------------------------------------------------------------------------------

def plan_steps(steps: object) -> list[float]:
    spec: dict[str, object] = {"model": "m", "to_version": 2}
    if steps is not None:
        spec["steps"] = steps
    return RolloutSpec.parse(spec).steps


def test_plan_steps() -> None:
    assert plan_steps(None) == [5, 25, 50, 100]
    assert plan_steps([10, 50]) == [10, 50, 100]
    assert plan_steps([1, 2.5, 100]) == [1, 2.5, 100]
    for bad in ([0, 50], [50, 50], [60, 40], [101], [True], ["5"], [math.nan], 5):
        with pytest.raises(ControlError) as info:
            plan_steps(bad)
        assert info.value.http_status == 400 and "steps" in info.value.message, info.value.message


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)]
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.1 * 49 / 50)
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.25, buckets) == pytest.approx(0.05)
    assert quantile(0.99, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.99, []) is None
    # In the +Inf bucket: the largest finite bound.
    assert quantile(0.99, [(0.1, 10.0), (1.0, 20.0), (math.inf, 100.0)]) == 1.0


def test_snapshot_reads_the_gateways_own_metrics() -> None:
    m = Metrics()
    for _ in range(90):
        m.request(model="scale", version="1", variant="stable", backend="ts", protocol="v2_rest", code="200",
                  seconds=0.002)
    for i in range(10):
        m.request(model="scale", version="2", variant="canary", backend="ts", protocol="v2_grpc",
                  code="UNAVAILABLE" if i < 3 else "OK", seconds=0.2)
    m.request(model="scale", version="1", variant="", backend="ts", protocol="v2_rest", code="500", seconds=1)
    m.request(model="other", version="1", variant="canary", backend="ts", protocol="v2_rest", code="500", seconds=1)
    snap = snapshot(m.render()[0].decode(), "scale")
    assert set(snap) == {"stable", "canary"}
    assert (snap["stable"].requests, snap["stable"].errors) == (90, 0)
    assert (snap["canary"].requests, snap["canary"].errors) == (10, 3)
    p99 = snap["stable"].p99()
    assert p99 is not None and 0.001 < p99 <= 0.0025
    p99 = snap["canary"].p99()
    assert p99 is not None and 0.1 < p99 <= 0.25
    delta = snap["canary"].minus(Window(4, 1, ((0.25, 4.0), (math.inf, 4.0))))
    assert (delta.requests, delta.errors, dict(delta.buckets)[0.25]) == (6, 2, 6)


def _w(requests: float, errors: float, seconds: float) -> Window:
    bounds = [0.001, 0.01, 0.1, 1.0, math.inf]
    return Window(requests, errors, tuple((b, requests if seconds <= b else 0.0) for b in bounds))


def test_guard_decisions() -> None:
    g = Guards(max_error_rate=0.05, max_p99_ratio=2.0, max_p99_s=0.5, min_requests=20)
    ok = evaluate(g, _w(100, 0, 0.005), _w(30, 1, 0.005))
    assert ok.breach is None and ok.enough
    assert ok.figures["canary_error_rate"] == pytest.approx(1 / 30)
    few = evaluate(g, _w(100, 0, 0.005), _w(3, 0, 0.005))
    assert few.breach is None and not few.enough
    errors = evaluate(g, _w(100, 0, 0.005), _w(6, 3, 0.005))  # errors count early, before min_requests
    assert errors.breach is not None and "error rate 50.0%" in errors.breach
    slow = evaluate(g, _w(100, 0, 0.005), _w(30, 0, 0.05))
    assert slow.breach is not None and "stable p99" in slow.breach
    very_slow = evaluate(Guards(max_p99_s=0.5, min_requests=20), _w(100, 0, 0.005), _w(30, 0, 0.9))
    assert very_slow.breach is not None and "max_p99_s" in very_slow.breach
    # Latency is not judged on too few canary requests, nor against too few stable ones.
    assert evaluate(g, _w(100, 0, 0.005), _w(10, 0, 0.05)).breach is None
    assert evaluate(g, _w(5, 0, 0.005), _w(30, 0, 0.05)).breach is None
    def guards(**spec: object) -> Guards:
        return RolloutSpec.parse({"model": "m", "to_version": 2, **spec}).guards()

    for bad in ({"max_error_rate": -1}, {"min_requests": 0}, {"max_error_rate": None}, {"max_p99_s": True}):
        with pytest.raises(ControlError) as info:
            guards(**bad)
        assert info.value.http_status == 400 and next(iter(bad)) in info.value.message, info.value.message
    assert guards(max_p99_ratio=3, min_requests=7) == Guards(max_p99_ratio=3.0, min_requests=7)


# --- routes edits and state ----------------------------------------------------------------------------------------

def test_step_routes_are_valid_and_read_back(routes: Path) -> None:
    ro = _rollout(sticky_header="x-user-id")
    raw = yaml.safe_load(ROUTES)
    assert applied_percent(raw, ro) == 0
    for percent in (10.0, 50.0, 100.0, 0.0):
        new = step_routes(raw, ro, percent)
        _, revision = writer.read(routes)
        writer.apply(routes, new, revision)
        model = load_routes(routes).models["scale"]
        assert applied_percent(yaml.safe_load(routes.read_text()), ro) == percent
        if 0 < percent < 100:
            assert model.experiment is not None
            assert [(v.name, v.version, v.weight) for v in model.experiment.variants] == [
                ("stable", "1", 100 - percent), ("canary", "2", percent)]
            assert model.experiment.sticky_key is not None and model.experiment.sticky_key.header == "x-user-id"
        else:
            assert model.experiment is None
            assert model.default_version == ("2" if percent == 100 else "1")
    assert yaml.safe_load(routes.read_text())["models"]["ab"] == raw["models"]["ab"]  # other models untouched
    assert applied_percent(raw, _rollout(from_version="3", to_version="4")) is None
    assert applied_percent(raw, _rollout(model="ab")) is None


def test_state_round_trip_is_atomic(routes: Path) -> None:
    states = StateStore(routes)
    ro = _rollout()
    ro.record("started", "alice", "new weights")
    states.save(ro)
    assert states.dir == routes.with_name("routes.yaml.rollouts")
    assert not [p for p in states.dir.iterdir() if p.name.startswith(".")]  # no temp file left
    back = states.load("scale")
    assert back == ro
    assert [r.model for r in states.load_all()] == ["scale"]
    assert states.load("other") is None


# --- the orchestrator, with fake traffic -------------------------------------------------------------------------

class Traffic:
    """Records requests into a real Metrics as the gateway would: split by the routes file's current weights."""

    def __init__(self, routes: Path, bad_versions: frozenset[str] = frozenset()) -> None:
        self.routes = routes
        self.metrics = Metrics()
        self.bad = bad_versions
        self.rng = random.Random(7)

    def text(self) -> str:
        return self.metrics.render()[0].decode()

    async def run(self) -> None:
        while True:
            model = load_routes(self.routes).models["scale"]
            for _ in range(20):
                if model.experiment is None:
                    version, variant = model.default_version, ""
                else:
                    pick = self.rng.uniform(0, 100)
                    stable, canary = model.experiment.variants
                    version, variant = ((stable.version, stable.name) if pick >= canary.weight
                                        else (canary.version, canary.name))
                code = "503" if version in self.bad else "200"
                self.metrics.request(model="scale", version=version, variant=variant, backend="ts",
                                     protocol="v2_rest", code=code, seconds=0.003)
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _traffic(routes: Path, bad: frozenset[str] = frozenset()) -> AsyncIterator[Traffic]:
    traffic = Traffic(routes, bad)
    task = asyncio.create_task(traffic.run())
    try:
        yield traffic
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(orch: Orchestrator, model: str, timeout: float = 10.0) -> Rollout:
    async with asyncio.timeout(timeout):
        # Ended, and its task done: the end's state file and exported metrics are written after the state changes.
        while (await orch.get(model)).state == "running" or model in orch._tasks:
            await asyncio.sleep(0.02)
    return await orch.get(model)


async def start(orch: Orchestrator, spec: dict[str, object], who: str = "admin-api") -> Rollout:
    return await orch.start(RolloutSpec.parse(spec), who)


SPEC = {"model": "scale", "to_version": 2, "steps": [10, 50], "dwell_s": 0.3, "min_requests": 5}


async def test_canary_goes_to_100(routes: Path) -> None:
    exported = Metrics()
    async with _traffic(routes) as traffic:
        orch = Orchestrator(routes, traffic.text, check_interval_s=0.05, metrics=exported)
        ro = await start(orch, SPEC, "alice")
        assert ro.steps == [10, 50, 100]
        done = await _until(orch, "scale")
    text = exported.render()[0].decode()  # the state and every transition, exported
    for line in ('gateway_rollout_canary_percent{model="scale"} 100.0', 'gateway_rollout_running{model="scale"} 0.0',
                 'gateway_rollout_transitions_total{event="started",model="scale"} 1.0',
                 'gateway_rollout_transitions_total{event="step",model="scale"} 2.0',
                 'gateway_rollout_transitions_total{event="step_passed",model="scale"} 2.0',
                 'gateway_rollout_transitions_total{event="promoted",model="scale"} 1.0'):
        assert line in text, line
    assert done.state == "promoted" and done.percent == 100
    assert [h["event"] for h in done.history] == ["started", "step", "step_passed", "step", "step_passed",
                                                  "promoted"]
    assert done.history[0]["who"] == "alice"
    model = load_routes(routes).models["scale"]
    assert model.experiment is None and model.default_version == "2"
    assert StateStore(routes).load("scale") == done  # persisted as it ended


async def test_bad_canary_is_rolled_back(routes: Path) -> None:
    async with _traffic(routes, frozenset({"2"})) as traffic:
        orch = Orchestrator(routes, traffic.text, check_interval_s=0.05)
        await start(orch, {**SPEC, "dwell_s": 5})
        done = await _until(orch, "scale", timeout=4)  # well within the first step's dwell
    assert done.state == "rolled_back" and done.percent == 0
    assert "error rate" in done.reason and done.history[-1]["who"] == "orchestrator"
    assert done.history[-1]["figures"]["canary_errors"] > 0
    model = load_routes(routes).models["scale"]
    assert model.experiment is None and model.default_version == "1"


async def test_manual_operations_and_refusals(routes: Path) -> None:
    orch = Orchestrator(routes, lambda: "", check_interval_s=0.05)
    with pytest.raises(ControlError) as exc:
        await start(orch, {**SPEC, "model": "ab"})
    assert exc.value.http_status == 409
    for bad, status in (({"from_version": 2}, 409), ({"to_version": 1}, 400), ({"to_version": 7}, 400),
                        ({"model": "nope"}, 404), ({"steps": [50, 10]}, 400), ({"dwell_s": -1}, 400)):
        with pytest.raises(ControlError) as exc:
            await start(orch, {**SPEC, **bad})
        assert exc.value.http_status == status, bad
    await start(orch, {**SPEC, "dwell_s": 60})  # no traffic: stays on its first step
    async with asyncio.timeout(5):
        while (await orch.get("scale")).percent != 10:
            await asyncio.sleep(0.02)
    with pytest.raises(ControlError) as exc:
        await start(orch, SPEC)
    assert exc.value.http_status == 409
    done = await orch.promote("scale", "bob", "looks fine")
    assert (done.state, done.history[-1]["who"], done.history[-1]["why"]) == ("promoted", "bob", "looks fine")
    assert load_routes(routes).models["scale"].default_version == "2"
    with pytest.raises(ControlError):
        await orch.rollback("scale")

    # Back from 2 to 1, then abort: traffic returns to the version it started from.
    await start(orch, {**SPEC, "to_version": 1, "dwell_s": 60})
    async with asyncio.timeout(5):
        while (await orch.get("scale")).percent != 10:
            await asyncio.sleep(0.02)
    aborted = await orch.abort("scale", "carol")
    assert aborted.state == "aborted"
    model = load_routes(routes).models["scale"]
    assert model.experiment is None and model.default_version == "2"
    await orch.close()


async def test_resume_after_restart(routes: Path) -> None:
    # A gateway that stopped mid-rollout: routes at the 50% step, state saying so.
    ro = _rollout(steps=[10.0, 50.0, 100.0], dwell_s=0.2)
    ro.step_index, ro.percent = 1, 50.0
    _, revision = writer.read(routes)
    writer.apply(routes, step_routes(yaml.safe_load(ROUTES), ro, 50.0), revision)
    StateStore(routes).save(ro)
    async with _traffic(routes) as traffic:
        orch = Orchestrator(routes, traffic.text, check_interval_s=0.05)
        resumed = await orch.resume()
        assert [r.model for r in resumed] == ["scale"] and resumed[0].percent == 50
        done = await _until(orch, "scale")
    assert done.state == "promoted"
    assert [h["event"] for h in done.history][-3:] == ["resumed", "step_passed", "promoted"]


async def test_resume_retires_a_rollout_stopped_between_promotion_and_retire(routes: Path) -> None:
    # Promoted (routes on version 2) with retire asked, but the gateway stopped before the retire began: the phase
    # is still "canary". On resume the retire runs (here it fails: the backend has no management_url; recorded).
    ro = _rollout(retire=True)
    ro.state, ro.percent, ro.step_index, ro.phase = "promoted", 100.0, 2, "canary"
    _, revision = writer.read(routes)
    writer.apply(routes, step_routes(yaml.safe_load(ROUTES), ro, 100.0), revision)
    StateStore(routes).save(ro)
    orch = Orchestrator(routes, lambda: "", check_interval_s=0.05)
    await orch.resume()
    for _ in range(100):
        done = StateStore(routes).load("scale")
        if done is not None and done.phase not in ("canary", "retiring"):
            break
        await asyncio.sleep(0.02)
    await orch.close()
    assert done is not None and done.phase == "retire_failed", done
    assert [h["event"] for h in done.history][-2:] == ["resumed", "retire_failed"]
    assert "management_url" in done.history[-1]["why"]
    # Once the retire has ended (failed, skipped or retired), a restart does not try it again.
    orch = Orchestrator(routes, lambda: "", check_interval_s=0.05)
    await orch.resume()
    await asyncio.sleep(0.1)
    await orch.close()
    assert StateStore(routes).load("scale").history == done.history  # type: ignore[union-attr]


async def test_resume_never_reruns_a_rollout_that_was_being_ended(routes: Path) -> None:
    # State at the 50% step, routes already back on version 1 (a rollback wrote them, then the gateway stopped):
    # the rollout ends as aborted, nothing is written, nothing runs.
    ro = _rollout(dwell_s=60)
    ro.step_index, ro.percent = 1, 50.0
    StateStore(routes).save(ro)
    before = routes.read_text()
    orch = Orchestrator(routes, lambda: "", check_interval_s=0.05)
    assert await orch.resume() == []
    await orch.close()
    done = StateStore(routes).load("scale")
    assert done is not None and done.state == "aborted" and "back on version 1" in done.reason, done
    assert routes.read_text() == before


async def test_resume_of_a_promotion_the_state_missed_retires(routes: Path) -> None:
    # Routes promoted (100%), state still at 50%, retire asked: promoted on resume, and the retire starts.
    ro = _rollout(retire=True, dwell_s=60)
    ro.step_index, ro.percent, ro.phase = 1, 50.0, "canary"
    _, revision = writer.read(routes)
    writer.apply(routes, step_routes(yaml.safe_load(ROUTES), ro, 100.0), revision)
    StateStore(routes).save(ro)
    orch = Orchestrator(routes, lambda: "", check_interval_s=0.05)
    await orch.resume()
    async with asyncio.timeout(5):
        while (await orch.get("scale")).phase in ("canary", "retiring"):
            await asyncio.sleep(0.02)
    await orch.close()
    done = (await orch.get("scale"))
    assert done.state == "promoted" and [h["event"] for h in done.history][-2:] == ["promoted", "retire_failed"]


async def test_resume_crash_between_routes_and_state(routes: Path) -> None:
    # The routes got step 2 (50%) but the state file still says step 1 (10%): the routes win.
    ro = _rollout(dwell_s=60)
    ro.step_index, ro.percent = 0, 10.0
    _, revision = writer.read(routes)
    writer.apply(routes, step_routes(yaml.safe_load(ROUTES), ro, 50.0), revision)
    StateStore(routes).save(ro)
    written_at = routes.stat().st_mtime
    orch = Orchestrator(routes, lambda: "", check_interval_s=0.05)
    resumed = await orch.resume()
    assert resumed[0].percent == 50 and resumed[0].step_index == 1
    # The step the previous process wrote but never recorded is in the history, at the time it was written.
    step, again = resumed[0].history[-2:]
    assert (step["event"], step["percent"], step["step"], step["at"]) == ("step", 50.0, 1, written_at), step
    assert again["event"] == "resumed"
    await orch.close()
    assert StateStore(routes).load("scale").state == "running"  # type: ignore[union-attr]  # resumable again


async def test_resume_leaves_foreign_routes_alone(routes: Path) -> None:
    ro = _rollout(to_version="2")
    ro.step_index, ro.percent = 0, 10.0
    StateStore(routes).save(ro)
    # Someone set the model to an experiment this rollout never writes.
    raw = yaml.safe_load(ROUTES)
    raw["models"]["scale"]["experiment"] = raw["models"]["ab"]["experiment"]
    _, revision = writer.read(routes)
    writer.apply(routes, raw, revision)
    before = routes.read_text()
    orch = Orchestrator(routes, lambda: "")
    assert await orch.resume() == []
    assert (await orch.get("scale")).state == "aborted" and "outside" in (await orch.get("scale")).reason
    assert routes.read_text() == before


async def test_resume_at_an_unplanned_share_goes_back_to_old(routes: Path) -> None:
    ro = _rollout()
    ro.step_index, ro.percent = 0, 10.0
    StateStore(routes).save(ro)
    _, revision = writer.read(routes)
    writer.apply(routes, step_routes(yaml.safe_load(ROUTES), ro, 33.0), revision)
    orch = Orchestrator(routes, lambda: "")
    assert await orch.resume() == []
    assert (await orch.get("scale")).state == "aborted"
    model = load_routes(routes).models["scale"]
    assert model.experiment is None and model.default_version == "1"


def test_public_is_json_ready() -> None:
    import orjson

    assert orjson.loads(orjson.dumps(public(_rollout())))["guards"]["min_requests"] == 5
