"""Canary rollouts over the routes: deploy, warm up, shift traffic in guarded steps, promote or roll back, retire.

A rollout moves a model from ``from_version`` to ``to_version`` through canary steps (e.g. 5, 25, 50, 100 percent).
Each step is one routes write (:mod:`gateway.control.routes_edit`: validated, compare-and-swap, atomic): the model
gets an experiment ``canary`` with variants ``stable`` (from_version, weight 100-p) and ``canary`` (to_version,
weight p); at 100 the experiment goes and ``default_version`` becomes to_version (promoted). A rollback
(automatic or asked for) and an abort write the model back to from_version only, in one write.

During each step's dwell the orchestrator reads the gateway's own metrics every ``check_interval_s`` and judges
the canary against the stable variant over the step's window (:mod:`gateway.control.guards`). A breach rolls back
at once; a step passes when its dwell is over and the canary answered at least ``min_requests`` requests (else
the step waits for traffic).

The routes and the states live in the route store (gateway/routes/store.py: the routes file, or etcd); the
orchestrator talks only to its interface. State (:mod:`gateway.control.rollout_state`): written after every
routes write. The routes are always written
first, each write whole: after a crash the routes are all-old, a step, or promoted, never a mix. On start the
orchestrator reconciles each running rollout with the routes (the applied step is read back from the routes,
which win over the state) and resumes its dwell; routes that match none of the rollout's steps (someone edited
them) end the rollout as ``aborted`` without touching the routes.

Lifecycle: with ``deploy`` the new version is first loaded on its backend and waited for; with ``warmup`` (v2 JSON
inference bodies) each sample then goes straight to the new target through the data plane. Either failing ends
the rollout as ``failed`` with the reason, before any traffic step (the routes are not written). With ``retire`` a
promoted rollout drains the old version and unloads it; a version the routes still send traffic to (a default,
experiment variant, label or shadow of any model) is never unloaded. What deploy and retire do depends on the
backend's kind (:mod:`gateway.control.backend_lifecycle`), checked at start (400).

History events of the lifecycle, in order: ``deploying``, ``deployed`` (or ``failed``), ``warming_up``,
``warmed_up``, then after ``promoted``: ``backend_default`` (TorchServe, when the old and new versions are one
TorchServe model), ``draining``, ``drained``, then ``unregistered`` (TorchServe) or ``unloaded`` (TF Serving);
``retire_skipped`` or ``retire_failed`` instead when the old version stays. Every transition is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gateway.backends.registry import Backends
from gateway.codecs import v2_json
from gateway.control.backend_lifecycle import (
    BackendLifecycle,
    ConfigFiles,
    Note,
    RetireSkipped,
    describe,
    lifecycle_for,
)
from gateway.control.fleet import Fleet, LocalFleet
from gateway.control.guards import GuardSource, LocalGuards, Verdict, Window, evaluate
from gateway.control.rollout_spec import RolloutSpec, backend_of, check_backend, plan_deploy
from gateway.control.rollout_state import Rollout, RolloutStates, State
from gateway.control.routes_edit import (
    CANARY,
    STABLE,
    applied_percent,
    backend_target,
    current_default,
    listed_versions,
    model_of,
    step_routes,
    traffic_users,
)
from gateway.errors import Conflict, ControlError, ControlUnavailable, InvalidChange, NotDefined
from gateway.routes.schema import RoutesConfig, VersionConfig
from gateway.routes.store import FileRouteStore, RouteStore
from gateway.routes.table import RouteTable
from gateway.types import ModelRef

if TYPE_CHECKING:
    from gateway.dataplane import DataPlane
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.rollout")

RETIRE_DONE = frozenset({"retired", "retire_failed", "retire_skipped"})  # phases after which no retire resumes
WARMUP_TIMEOUT_S = 30.0
APPLY_TIMEOUT_S = 15.0  # every worker polls the routes every GATEWAY_ROUTES_POLL_S (0.5 s by default)


class Orchestrator:
    """Runs rollouts as tasks on the running event loop (the admin worker's, the leader's with etcd).

    ``store``: the route store (a path: the routes file). ``guards``: where the canary's figures come from
    (a callable: this process's metrics exposition). ``fleet``: what a retire waits for (default: this host's
    workers, from ``plane``)."""

    def __init__(self, store: RouteStore | Path, guards: GuardSource | Callable[[], str],
                 reload: Callable[[], Awaitable[Any]] | None = None,
                 *, check_interval_s: float = 0.2, plane: DataPlane | None = None,
                 drain_timeout_s: float = 60.0, metrics: Metrics | None = None, fleet: Fleet | None = None) -> None:
        self.store = FileRouteStore(store) if isinstance(store, Path) else store
        self.fleet = fleet if fleet is not None or plane is None else LocalFleet(plane)
        self.metrics = metrics  # exports each rollout's state and transitions (gateway_rollout_*)
        self._exported: dict[str, int] = {}  # per model: history entries already counted
        self.plane = plane  # warm-up goes through it, drain reads its in-flight counts; None: own adapters
        self.drain_timeout_s = drain_timeout_s
        self._backends: Backends | None = None
        self._config_files = ConfigFiles()  # models.config edits of TF Serving backends, one at a time per file
        self.states = RolloutStates(self.store.rollouts)
        self.guards = LocalGuards(guards) if callable(guards) else guards
        self.reload = reload  # applies a write in another store object of this process at once
        self.check_interval_s = check_interval_s
        self.rollouts: dict[str, Rollout] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _save(self, ro: Rollout) -> None:
        """Persist the rollout (in the route store) and export what changed since the last save."""
        await self.states.save(ro)
        self._export(ro)

    def _export(self, ro: Rollout) -> None:
        if self.metrics is None:
            return
        seen = self._exported.get(ro.model, len(ro.history))
        self.metrics.rollout(model=ro.model, percent=ro.percent, running=ro.state == "running",
                             events=[h["event"] for h in ro.history[seen:]],
                             guards={"max_error_ratio": ro.guards.max_error_rate,
                                     "max_p99_seconds": ro.guards.max_p99_s, "max_p99_ratio": ro.guards.max_p99_ratio})
        self._exported[ro.model] = len(ro.history)

    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    # -- lifecycle

    async def resume(self) -> list[Rollout]:
        """Load saved rollouts; reconcile running ones with the routes file and restart their dwell."""
        resumed = []
        for ro in await self.states.load_all():
            self.rollouts[ro.model] = ro
            self._exported[ro.model] = len(ro.history)  # counted by the process that recorded them
            self._export(ro)
            if ro.state == "promoted" and ro.retire and ro.phase not in RETIRE_DONE:
                # Promoted but not retired yet (stopped between the promotion's write and the end of the retire).
                ro.record("resumed", "orchestrator", "gateway restarted: retiring the old version again")
                self._spawn_retire(ro)
                continue
            if ro.state != "running":
                continue
            try:
                percent = applied_percent(await self.store.raw(), ro)
                written_at = await self.store.written_at() or time.time()
            except (ControlError, OSError):
                percent, written_at = None, time.time()
            if percent is None:
                ro.state, ro.reason = "aborted", "on resume the routes matched none of the rollout's steps " \
                                                 "(changed outside it); routes left as they are"
                ro.record("aborted", "orchestrator", ro.reason)
            elif percent >= 100:
                ro.percent, ro.step_index, ro.state = 100.0, len(ro.steps) - 1, "promoted"
                ro.reason = "the routes were already promoted when the gateway restarted"
                ro.record("promoted", "orchestrator", ro.reason, at=written_at)
                if ro.retire:
                    await self._save(ro)
                    self._spawn_retire(ro)
                    continue
            elif percent <= 0 and ro.percent > 0:
                # Traffic is back on from_version although a step had been applied: the rollout was being rolled
                # back or aborted when the gateway stopped (or someone moved it back by hand). Never re-run it.
                ro.state, ro.percent, ro.step_index = "aborted", 0.0, -1
                ro.reason = (f"on resume the routes were back on version {ro.from_version} (the rollout was being "
                             "ended when the gateway stopped, or was moved back by hand); ended, routes left as "
                             "they are")
                ro.record("aborted", "orchestrator", ro.reason, at=written_at)
            else:
                unrecorded = percent > ro.percent  # lower: moved back by hand, nothing of ours to record
                ro.percent = percent
                ro.step_index = ro.steps.index(percent) if percent in ro.steps else -1
                if percent > 0 and unrecorded and ro.step_index >= 0:
                    # The previous process wrote this step and stopped before recording it: record it now, at
                    # the time of the write (the routes file's mtime), so that the history misses no transition.
                    ro.record("step", "orchestrator", f"canary at {percent:g}% (written just before the gateway "
                              "stopped; recorded on resume)", at=written_at)
                if percent > 0 and ro.step_index < 0:  # a share the plan does not have: go back to safety
                    await self._end(ro, "aborted", "orchestrator", f"on resume the canary share {percent:g}% is "
                                    "none of the steps; traffic back on the old version")
                    continue
                ro.record("resumed", "orchestrator", "gateway restarted: dwell of the applied step restarts")
                self._spawn(ro)
                resumed.append(ro)
            await self._save(ro)
        return resumed

    def fence(self, fence: Any) -> None:
        """Every state write compares ``fence`` (etcd: the leader key's creation revision) while this process
        leads; None: unfenced (the file store, or no longer leading)."""
        if hasattr(self.store.rollouts, "fence"):
            self.store.rollouts.fence = fence

    def forget(self) -> None:
        """No longer leading: rollouts are read back from the store from now on (another replica drives them)."""
        self.rollouts.clear()

    async def every(self) -> list[Rollout]:
        """Every rollout: the ones this process runs, and the ones the store keeps (another replica leads)."""
        kept = {ro.model: ro for ro in await self.states.load_all()}
        return list({**kept, **self.rollouts}.values())

    async def close(self) -> None:
        """Stop the tasks; the routes stay at the last applied step and the state says running (resumed later, by
        this process or by the next rollout leader)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._backends is not None:
            await self._backends.close()
            self._backends = None

    def _spawn(self, ro: Rollout) -> None:
        self._tasks[ro.model] = asyncio.create_task(self._run(ro), name=f"rollout-{ro.model}")

    def _spawn_retire(self, ro: Rollout) -> None:
        self._tasks[ro.model] = asyncio.create_task(self._retire_task(ro), name=f"rollout-retire-{ro.model}")

    # -- operations

    async def get(self, model: str) -> Rollout:
        """The rollout this process runs, else the one the store keeps (another replica leads, or it ended)."""
        ro = self.rollouts.get(model) or await self.states.load(model)
        if ro is None:
            raise NotDefined(f"no rollout for model {model!r}")
        return ro

    async def start(self, spec: RolloutSpec, who: str = "admin-api") -> Rollout:
        """Start a rollout (validated spec: :class:`RolloutSpec`); InvalidChange, NotDefined or Conflict when it
        cannot start now, nothing written then."""
        model, to_version, retire = spec.model, spec.to_version, spec.retire
        async with self._lock(model):
            existing = self.rollouts.get(model)
            task = self._tasks.get(model)
            if existing is not None and existing.state != "running" and task is not None and not task.done():
                raise Conflict(f"the previous rollout of {model!r} is still {existing.phase or 'ending'} "
                                        "(retiring the old version); start the next one when it is done")
            if existing is not None and existing.state == "running":
                raise Conflict(f"model {model!r} already has a running rollout "
                                        f"({existing.from_version} -> {existing.to_version})")
            mspec = model_of(await self.store.raw(), model)
            if mspec.get("experiment") is not None:
                raise Conflict(f"model {model!r} runs an experiment already; a canary needs the model on "
                                        "one version (remove the experiment first)")
            default = current_default(mspec)
            from_version = spec.from_version or default
            if from_version != default:
                raise Conflict(f"model {model!r} serves version {default}, not from_version {from_version}")
            if to_version == from_version:
                raise InvalidChange(f"to_version {to_version} is the version the model serves already")
            if to_version not in listed_versions(mspec):
                raise InvalidChange(f"version {to_version} is not listed under models.{model}.versions "
                                        "(add it to the routes first)")
            deploy = None
            if spec.deploy is not None or retire:
                config = await self.store.config()
                deploy = plan_deploy(spec.deploy, backend_of(config, model, to_version),
                                     f"version {to_version} of {model!r}")
                if retire:
                    check_backend(backend_of(config, model, from_version), "retire",
                                  f"version {from_version} of {model!r}")
            guards, warmup = spec.guards(), spec.warmup or []
            ro = Rollout(model=model, from_version=from_version, to_version=to_version, steps=list(spec.steps),
                         dwell_s=spec.dwell_s, guards=guards, sticky_header=spec.sticky_header, deploy=deploy,
                         warmup=warmup, retire=retire)
            ro.record("started", who, spec.why, steps=ro.steps, dwell_s=ro.dwell_s, guards=asdict(guards),
                      deploy=deploy, warmup_samples=len(warmup), retire=retire)
            self.rollouts[model] = ro
            self._exported[model] = 0
            await self._save(ro)
            self._spawn(ro)
            return ro

    async def promote(self, model: str, who: str = "admin-api", why: str = "") -> Rollout:
        return await self._manual(model, "promoted", who, why or "promoted by hand")

    async def rollback(self, model: str, who: str = "admin-api", why: str = "") -> Rollout:
        return await self._manual(model, "rolled_back", who, why or "rolled back by hand")

    async def abort(self, model: str, who: str = "admin-api", why: str = "") -> Rollout:
        """Cancel the rollout: traffic back on from_version (as a rollback), recorded as aborted rather than as a
        verdict on the new version."""
        return await self._manual(model, "aborted", who, why or "aborted by hand")

    async def _manual(self, model: str, state: State, who: str, why: str) -> Rollout:
        async with self._lock(model):
            ro = await self.get(model)
            if ro.state != "running":
                raise Conflict(f"the rollout of {model!r} is {ro.state} already")
            if state == "promoted" and ro.step_index < 0 and (ro.deploy is not None or ro.warmup):
                raise Conflict(f"the rollout of {model!r} is still {ro.phase or 'preparing'}: version "
                                        f"{ro.to_version} is not deployed and warmed up yet; promote it after that "
                                        "(or abort)")
            task = self._tasks.pop(model, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._end(ro, state, who, why)
            if state == "promoted" and ro.retire:
                self._spawn_retire(ro)
            return ro

    # -- the loop

    async def _run(self, ro: Rollout) -> None:
        try:
            if ro.step_index < 0 and ro.phase in ("", "deploying", "warming_up"):
                failure = await self._prepare(ro)
                async with self._lock(ro.model):
                    if ro.state != "running":
                        return
                    if failure is not None:
                        await self._fail(ro, failure)
                        return
                    ro.phase = "canary"
                    await self._save(ro)
            while ro.state == "running":
                nxt = ro.step_index + 1
                if ro.step_index >= 0:  # a step is applied: dwell on it
                    verdict = await self._dwell(ro)
                    if verdict.breach is not None:
                        async with self._lock(ro.model):
                            if ro.state == "running":
                                await self._end(ro, "rolled_back", "orchestrator", verdict.breach,
                                                figures=verdict.figures)
                        return
                    ro.record("step_passed", "orchestrator", "dwell over, no guard breached",
                              figures=verdict.figures)
                async with self._lock(ro.model):
                    if ro.state != "running":
                        return
                    if ro.steps[nxt] >= 100:
                        await self._end(ro, "promoted", "orchestrator", "every step passed its guards")
                        promoted = True
                    else:
                        await self._apply(ro, nxt)
                        promoted = False
                if promoted:
                    if ro.retire:
                        await self._retire(ro)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("rollout of %s failed", ro.model)
            async with self._lock(ro.model):
                if ro.state == "running":
                    with contextlib.suppress(Exception):
                        await self._end(ro, "aborted", "orchestrator", f"orchestrator error: {exc}")
        finally:
            if self._tasks.get(ro.model) is asyncio.current_task():
                self._tasks.pop(ro.model, None)

    # -- lifecycle: deploy, warm-up, retire

    async def _config(self) -> RoutesConfig:
        return await self.store.config()

    async def _prepare(self, ro: Rollout) -> str | None:
        """Deploy and warm up the new version; the reason it failed, or None. Writes no routes."""
        config = await self._config()
        if ro.deploy is not None:
            ro.phase = "deploying"
            try:
                vc = config.models[ro.model].versions[ro.to_version]
                lifecycle = self._lifecycle(config, vc)
            except Exception as exc:
                return f"deploy of version {ro.to_version} of {ro.model!r} failed: {describe(exc)}"
            try:
                await lifecycle.deploy(vc, ro.deploy, self._note(ro))  # notes deploying, deployed
            except Exception as exc:
                return describe(exc)
            finally:
                await lifecycle.close()
        if ro.warmup:
            ro.phase = "warming_up"
            ro.record("warming_up", "orchestrator", f"{len(ro.warmup)} sample(s) to version {ro.to_version}")
            await self._save(ro)
            began = time.monotonic()
            route = RouteTable.from_config(config).resolve(ModelRef(ro.model, ro.to_version))
            for i, sample in enumerate(ro.warmup):
                try:
                    request = v2_json.decode_request(orjson.dumps(sample), ModelRef(ro.model, ro.to_version))
                    if self.plane is not None:
                        await asyncio.wait_for(self.plane.infer(request, route), WARMUP_TIMEOUT_S)
                    else:
                        if self._backends is None:
                            self._backends = Backends()
                        await asyncio.wait_for(self._backends.get(route.backend).infer(route.target, request),
                                               WARMUP_TIMEOUT_S)
                except Exception as exc:
                    return f"warm-up sample {i} of {len(ro.warmup)} to version {ro.to_version} failed: " \
                           f"{describe(exc)}"
            ro.record("warmed_up", "orchestrator", f"{len(ro.warmup)} sample(s) answered",
                      seconds=round(time.monotonic() - began, 3))
        return None

    async def _fail(self, ro: Rollout, why: str) -> None:
        """Ends a rollout that never moved traffic: the routes are not written (all traffic on from_version)."""
        ro.state, ro.reason, ro.percent = "failed", why, 0.0
        ro.record("failed", "orchestrator", why)
        await self._save(ro)
        log.warning("rollout %s: failed before any traffic moved (%s -> %s): %s", ro.model, ro.from_version,
                    ro.to_version, why)

    async def _retire_task(self, ro: Rollout) -> None:
        try:
            await self._retire(ro)
        finally:
            if self._tasks.get(ro.model) is asyncio.current_task():
                self._tasks.pop(ro.model, None)

    async def _retire(self, ro: Rollout) -> None:
        """Drain then unload from_version on its backend, once the routes send it no traffic."""
        ro.phase = "retiring"
        await self._save(ro)
        try:
            config = await self._config()
            vc = config.models[ro.model].versions[ro.from_version]
            new = config.models[ro.model].versions[ro.to_version]
            users = traffic_users(config, *backend_target(vc))
            if users:
                raise RetireSkipped(f"{vc.model} version {vc.version} on {vc.backend!r} still gets traffic from "
                                    f"the routes: {'; '.join(users)}")
            # Every worker must serve the promotion's routes first: one that has not polled them yet would still
            # send new requests to the old version with none in flight at the moment the drain looks.
            await self._wait_applied(ro.routes_revision)
            lifecycle = self._lifecycle(config, vc)
            fleet = self.fleet

            async def still_used() -> list[str]:
                return traffic_users(await self._config(), *backend_target(vc))

            try:
                event, why = await lifecycle.retire(
                    vc, new, self._note(ro), still_used=still_used, drain_timeout_s=self.drain_timeout_s,
                    inflight=(lambda: fleet.inflight(*backend_target(vc))) if fleet is not None
                    else _none_inflight)
            finally:
                await lifecycle.close()
            ro.phase = "retired"
            ro.record(event, "orchestrator", why)
        except asyncio.CancelledError:
            raise
        except RetireSkipped as exc:
            ro.phase = "retire_skipped"
            ro.record("retire_skipped", "orchestrator", str(exc))
        except Exception as exc:
            ro.phase = "retire_failed"
            why = describe(exc)
            ro.record("retire_failed", "orchestrator", f"retiring version {ro.from_version} failed: {why}")
            log.warning("rollout %s: retiring version %s failed: %s", ro.model, ro.from_version, why)
        finally:
            await self._save(ro)

    def _lifecycle(self, config: RoutesConfig, vc: VersionConfig) -> BackendLifecycle:
        return lifecycle_for(config.backends[vc.backend], self._config_files)

    def _note(self, ro: Rollout) -> Note:
        async def note(event: str, why: str, **what: Any) -> None:
            ro.record(event, "orchestrator", why, **what)
            await self._save(ro)
        return note

    async def _wait_applied(self, revision: int | None) -> None:
        """Until every worker (every replica) serves routes ``revision`` or a later one. ControlUnavailable after
        APPLY_TIMEOUT_S."""
        fleet = self.fleet
        if revision is None or fleet is None:
            return
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while True:
            applied = await fleet.applied_revision()
            if applied is not None and applied >= revision:
                return
            if time.monotonic() > deadline:
                raise ControlUnavailable(f"a worker still serves routes revision {applied}, not {revision}, after "
                                        f"{APPLY_TIMEOUT_S:g} s; the old version is kept")
            await asyncio.sleep(0.05)

    async def _dwell(self, ro: Rollout) -> Verdict:
        start = await self.guards.begin(ro.model)
        began = time.monotonic()
        waiting_noted = False
        while True:
            await asyncio.sleep(self.check_interval_s)
            now = await self.guards.window(ro.model, start)
            stable, canary = now.get(STABLE, Window()), now.get(CANARY, Window())
            verdict = evaluate(ro.guards, stable, canary)
            if verdict.breach is not None:
                return verdict
            if time.monotonic() - began >= ro.dwell_s:
                if verdict.enough:
                    return verdict
                if not waiting_noted:
                    waiting_noted = True
                    ro.record("waiting", "orchestrator", f"dwell over but the canary answered "
                              f"{canary.requests:g} of min_requests {ro.guards.min_requests}; the step goes on")

    async def _write(self, ro: Rollout, percent: float) -> int:
        revision = await self.store.edit_models(lambda raw: step_routes(raw, ro, percent))
        if self.reload is not None:
            await self.reload()
        return revision

    async def _apply(self, ro: Rollout, index: int) -> None:
        percent = ro.steps[index]
        revision = await self._write(ro, percent)  # the routes first: the state never runs ahead of them
        ro.step_index, ro.percent, ro.routes_revision = index, percent, revision
        ro.record("step", "orchestrator", f"canary at {percent:g}%", revision=revision)
        await self._save(ro)
        log.info("rollout %s: %s -> %s at %g%% (routes revision %d)", ro.model, ro.from_version, ro.to_version,
                 percent, revision)

    async def _end(self, ro: Rollout, state: State, who: str, why: str, **what: Any) -> None:
        percent = 100.0 if state == "promoted" else 0.0
        revision = await self._write(ro, percent)
        ro.state, ro.percent, ro.routes_revision, ro.reason = state, percent, revision, why
        if state == "promoted":
            ro.step_index = len(ro.steps) - 1
        ro.record(state, who, why, revision=revision, **what)
        await self._save(ro)
        log.log(logging.WARNING if state != "promoted" else logging.INFO, "rollout %s: %s (%s -> %s): %s",
                ro.model, state, ro.from_version, ro.to_version, why)


async def _none_inflight() -> int:
    return 0
