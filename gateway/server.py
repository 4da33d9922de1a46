"""The composition root: one gateway process assembled (route store, backend clients, metrics, shadows, data plane,
REST, gRPC and admin listeners) and run through its lifecycle (startup, SIGTERM drain, shutdown).

:func:`serve` runs uvicorn (``gateway serve``); uvicorn runs :func:`create_app` in every worker, whose lifespan
builds a :class:`GatewayProcess` there, after the fork, so no socket, pool or task crosses a process boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import math
import os
import signal
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import tracing
from gateway.admin.listener import AdminSeat
from gateway.admission import Admission
from gateway.api.asgi import Receive, Scope, Send
from gateway.api.connections import STATE_KEY, ConnectionGuard, raise_fd_limit
from gateway.api.rest import RestApp
from gateway.backends.registry import Backends
from gateway.dataplane import DataPlane
from gateway.events import Storms
from gateway.lifecycle import install_sigterm_drain
from gateway.metrics import Metrics
from gateway.routes.schema import load_routes
from gateway.routes.store import RouteStore, open_store
from gateway.settings import Settings
from gateway.shadow import Shadows
from gateway.telemetry import Telemetry
from gateway.tls import UvicornContext

if TYPE_CHECKING:
    from gateway.admin.app import Admin
    from gateway.api.grpc import GrpcFront
    from gateway.auth.gate import AuthGate
    from gateway.etcd.replicas import Presence
    from gateway.routes.etcd_store import EtcdRouteStore

log = logging.getLogger("gateway")
TICK_S = 5.0  # process and endpoint metrics, the descriptor budget, the summaries of log storms


class GatewayProcess:
    """Everything one worker process serves with, built in :meth:`start` and torn down in :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.plane: DataPlane | None = None
        self.rest: RestApp | None = None
        self.grpc: GrpcFront | None = None
        self.admin: AdminSeat | None = None
        self.store: RouteStore | None = None
        self.presence: Presence | None = None  # this process's lease-bound key (etcd store only)
        self.auth: AuthGate | None = None  # client authentication (GATEWAY_AUTH_FILE)
        self.storms = Storms()  # operational log lines that come in storms (gateway/events.py)
        self.connections: ConnectionGuard | None = None  # the REST listener's limits (gateway/api/connections.py)
        self._drain_task: asyncio.Task[None] | None = None
        self._ticks: asyncio.Task[None] | None = None
        self._replicas_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        store = self.store = open_store(settings)
        await store.open()
        metrics = Metrics()
        storms = self.storms
        backends = Backends(metrics, not_ejected=storms.storm(logging.getLogger("gateway.backends"),
                                                              "endpoints not ejected (max_ejected_percent)"),
                            no_budget=storms.storm(logging.getLogger("gateway.backends"), "retries over budget"),
                            http_client=settings.http_client)
        backends.sync(store.current)
        for config in store.current.backends.values():
            backends.get(config)
        telemetry = Telemetry(metrics, access_log_sample=settings.access_log_sample, tracing=tracing.from_env())
        if settings.auth_file is not None:
            from gateway.auth.gate import AuthGate  # only when authentication is on

            self.auth = AuthGate(settings, metrics)
            await self.auth.start()
        admission = Admission(metrics, storms.storm(logging.getLogger("gateway.admission"), "calls refused"))
        plane = self.plane = DataPlane(store, backends, metrics,
                                       Shadows(metrics, max_pending=settings.shadow_max_pending), telemetry,
                                       auth=self.auth, admission=admission)
        store.on_swap.append(backends.sync)
        await store.start(settings.routes_poll_s)
        self.connections = ConnectionGuard(settings, storms, metrics, listeners=2 if settings.grpc_port else 1)
        self._ticks = asyncio.create_task(self._tick(plane, self.connections))
        if settings.etcd is not None:
            await self._present(store)  # type: ignore[arg-type]  # open_store built the etcd store
            if self.auth is not None and self.auth.policy.limited:
                self._replicas_task = asyncio.create_task(self._share_rates(store))  # type: ignore[arg-type]
        self.rest = RestApp(plane, settings.max_body_bytes)
        if settings.grpc_port:
            from gateway.api.grpc import GrpcFront  # grpc servicers load only when the listener is on

            self.grpc = GrpcFront(plane, settings)
            await self.grpc.start()
        if settings.admin_port:  # its own port and token; one worker serves it (gateway/admin/listener.py)
            self.admin = AdminSeat(settings, self._admin_service)
            await self.admin.start()
        log.info("routes revision %s loaded from %s: %d models on %d backends", store.current.revision,
                 store.location, len(store.current.models), len(store.current.backends))
        install_sigterm_drain(settings.drain_s, self.begin_drain)

    async def _present(self, store: EtcdRouteStore) -> None:
        """Publish this process's applied revision and calls in flight under its lease (gateway/etcd/replicas.py)."""
        from gateway.etcd.replicas import Presence, target_key

        plane = self.plane
        assert plane is not None and self.settings.etcd is not None

        def state() -> dict[str, Any]:
            serving = self.admin is not None and self.admin.server is not None
            return {"applied_revision": plane.store.current.revision, "applied_at": store.applied_at,
                    "store_up": store.up, "inflight": {target_key(*k): n for k, n in plane.inflight.counts.items()},
                    **({"admin_url": self.advertise_url()} if serving else {})}

        self.presence = Presence(store.client, store.prefix, self.settings.etcd.lease_ttl_s, state)
        store.on_swap.append(lambda table: self.presence.changed() if self.presence is not None else None)
        await self.presence.start()

    async def _share_rates(self, store: EtcdRouteStore, every_s: float = 5.0) -> None:
        """Rate limits over several replicas: each takes 1/N of every rate, N the live hosts (gateway/auth/
        ratelimit.py), re-counted from the presence keys every few seconds; an unreachable etcd keeps the last N."""
        from gateway.auth.ratelimit import live_hosts
        from gateway.etcd.client import EtcdUnavailable
        from gateway.etcd.replicas import EtcdFleet

        fleet = EtcdFleet(store.client, store.prefix)
        while True:
            with contextlib.suppress(EtcdUnavailable):
                replicas = await fleet.replicas()
                if self.auth is not None:
                    self.auth.buckets.set_replicas(live_hosts(replicas))
            await asyncio.sleep(every_s)

    def advertise_url(self) -> str:
        """Where the other replicas reach this one's admin API (they forward rollout writes to the leader)."""
        settings = self.settings
        if settings.admin_advertise_url:
            return settings.admin_advertise_url.rstrip("/")
        host = settings.admin_host
        if host in ("", "0.0.0.0", "::"):
            try:
                host = socket.gethostbyname(socket.gethostname())  # the pod's IP on Kubernetes
            except OSError:
                host = "127.0.0.1"
        scheme = "https" if settings.admin_tls_cert_file is not None else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{settings.admin_port}"

    async def _tick(self, plane: DataPlane, connections: ConnectionGuard) -> None:
        """Every few seconds in every worker: this process's CPU and memory into the metrics (a scrape reads one
        worker), the state of the gRPC backend channels and of the backends' endpoints, the open connections and
        the descriptor budget, the summaries of log storms (errors, refusals)."""
        while True:
            metrics = plane.metrics
            metrics.sample_process()
            metrics.channel_states(plane.backends.channel_states())
            metrics.endpoint_states(plane.backends.endpoint_states())
            metrics.connections_open.labels("rest").set(connections.open)
            connections.tick()
            plane.telemetry.tick()
            self.storms.flush()
            await asyncio.sleep(TICK_S)

    def _admin_service(self, token: bytes) -> Admin:
        """Built by the worker that wins the admin port: the admin app and the rollouts it drives, which run in
        this worker's loop (with etcd: once this replica is elected), guarded by every worker's metrics or by
        Prometheus over every replica."""
        from gateway.admin.app import Admin, AdminApp  # only the admin worker loads the control plane
        from gateway.control.fleet import Fleet, LocalFleet
        from gateway.control.guards import GuardSource, LocalGuards, PrometheusGuards
        from gateway.control.orchestrator import Orchestrator

        plane, settings = self.plane, self.settings
        assert plane is not None
        metrics = plane.metrics
        guards: GuardSource = LocalGuards(lambda: metrics.render()[0].decode("utf-8"))
        if settings.guards_prometheus_url:
            guards = PrometheusGuards(settings.guards_prometheus_url, timeout_s=settings.guards_prometheus_timeout_s)
        fleet: Fleet = LocalFleet(plane)
        election = None
        if self.presence is not None:
            from gateway.etcd.election import Election
            from gateway.etcd.replicas import EtcdFleet

            etcd_store: Any = plane.store
            fleet = EtcdFleet(etcd_store.client, etcd_store.prefix)
            election = Election(etcd_store.client, etcd_store.prefix, self.presence, self.advertise_url())
        orchestrator = Orchestrator(plane.store, guards, plane=plane, metrics=metrics, fleet=fleet)
        return Admin(AdminApp(plane.store, token, rollouts=orchestrator, fleet=fleet, election=election),
                     election=election, metrics=metrics)

    def begin_drain(self) -> None:
        """The first SIGTERM (gateway/lifecycle.py): not ready, ``Connection: close`` on every answer, gRPC health
        NOT_SERVING; requests are still served until the listener closes ``drain_s`` later."""
        log.info("SIGTERM: draining for %g s (not ready; connections closed after their current request), then "
                 "stopping (pid %d)", self.settings.drain_s, os.getpid())
        if self.plane is not None:
            self.plane.draining = True
        if self.admin is not None:
            self.admin.stand_down()
        if self.grpc is not None:
            self._drain_task = asyncio.create_task(self.grpc.begin_drain())

    async def stop(self) -> None:
        if self._replicas_task is not None:
            self._replicas_task.cancel()
        if self.admin is not None:
            await self.admin.stop()
        if self.grpc is not None:
            await self.grpc.stop()
        if self.presence is not None:
            await self.presence.stop()
        if self.store is not None:
            await self.store.stop()
        if self._ticks is not None:
            self._ticks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticks
        if self.auth is not None:
            await self.auth.stop()
        self.storms.flush(force=True)
        if self.plane is not None:
            await self.plane.shadows.close()
            await self.plane.backends.close()
            self.plane.telemetry.close()
            self.plane.metrics.process_exiting()


class GatewayApp:
    """The ASGI app uvicorn runs: its lifespan starts and stops the process; HTTP goes to the REST fronts."""

    def __init__(self, settings: Settings) -> None:
        self.process = GatewayProcess(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            rest = self.process.rest
            assert rest is not None, "the ASGI server must run the lifespan"
            await rest(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)

    async def lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.process.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                if "state" in scope:  # uvicorn's app state: every REST connection's protocol reads its guard there
                    scope["state"][STATE_KEY] = self.process.connections
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.process.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app() -> GatewayApp:
    """uvicorn factory: settings from the environment, everything else built in the lifespan."""
    return GatewayApp(Settings.from_env())


def serve(settings: Settings) -> None:
    import uvicorn

    # Fail before forking workers when the routes file is invalid, with the validator's message.
    if settings.etcd is None or settings.routes_file.exists():  # with etcd the file only seeds an empty store
        load_routes(settings.routes_file)
    settings = _check_security(settings)
    soft, _ = raise_fd_limit()  # inherited by the workers; their connection limits stay below it
    log.info("open file limit %d", soft)
    os.environ.update(settings.to_env())  # uvicorn's factory (in every worker) rebuilds Settings from these
    if settings.workers > 1:
        _multiprocess_metrics_dir()
    else:  # SIGHUP's default action would kill the only worker at once, requests in flight included
        signal.signal(signal.SIGHUP, _sighup_single_worker)
    uvicorn.run(
        "gateway.server:create_app", factory=True, host=settings.host, port=settings.port,
        workers=settings.workers, loop="uvloop", lifespan="on",
        # uvicorn's httptools protocol plus read timeouts and a connection limit (gateway/api/connections.py).
        http="gateway.api.connections:GuardedHttpToolsProtocol",
        timeout_keep_alive=math.ceil(settings.keepalive_timeout_s),
        log_level=settings.log_level, access_log=False, timeout_graceful_shutdown=30,
        # SIGHUP to this (master) process restarts the workers one by one; a new worker must finish its startup
        # (routes, backend clients, gRPC listener) within this before the old one is stopped, else the restart
        # is abandoned and the old workers keep serving. Also how long a hung worker may miss its health pings.
        timeout_worker_healthcheck=30,
        log_config=_log_config(settings.log_level),
        # No X-Forwarded-* rewriting (a per-request middleware): the gateway does not use client addresses.
        proxy_headers=False, server_header=False,
        # TLS: every worker builds its own context from the files and reloads them on change (gateway/tls.py).
        ssl_context_factory=None if settings.tls_cert_file is None or settings.tls_key_file is None
        else UvicornContext(settings.tls_cert_file, settings.tls_key_file, settings.tls_reload_s),
    )


def _check_security(settings: Settings) -> Settings:
    """Before any worker starts: the auth policy, the keys and the certificates must be usable (with their own
    messages); several workers share one rate-limit table, created empty here."""
    from gateway.tls import read_pair

    for cert, key in ((settings.tls_cert_file, settings.tls_key_file),
                      (settings.admin_tls_cert_file, settings.admin_tls_key_file)):
        if cert is not None and key is not None:
            read_pair(cert, key)
    if settings.auth_file is None:
        return settings
    from gateway.auth.keys import load_keys
    from gateway.auth.ratelimit import create_table
    from gateway.auth.tenants import load_policy

    policy = load_policy(settings.auth_file)
    if settings.auth_keys_file is not None:
        load_keys(settings.auth_keys_file, policy.tenants)
    if settings.workers > 1 and settings.ratelimit_file is None:
        fd, name = tempfile.mkstemp(prefix="gateway-ratelimit-")
        os.close(fd)
        create_table(Path(name))
        settings = dataclasses.replace(settings, ratelimit_file=Path(name))
    return settings


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _sighup_single_worker(sig: int, frame: object) -> None:
    logging.getLogger("gateway").warning(
        "SIGHUP ignored: a rolling restart needs --workers 2 or more (one process cannot hand its requests over); "
        "SIGTERM drains and stops it")


def _log_config(level: str) -> dict[str, object]:
    """uvicorn applies this in every worker process, so the gateway's own loggers (assignments, route reloads)
    reach the output from workers too, not only from a process that called logging.basicConfig."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["gateway"] = {"format": LOG_FORMAT}
    config["handlers"]["gateway"] = {"formatter": "gateway", "class": "logging.StreamHandler",
                                     "stream": "ext://sys.stderr"}
    config["loggers"]["gateway"] = {"handlers": ["gateway"], "level": level.upper(), "propagate": False}
    return config


def _multiprocess_metrics_dir() -> None:
    """Several workers share one set of Prometheus metrics through files in PROMETHEUS_MULTIPROC_DIR (any worker's
    /metrics shows all). The directory must exist and be empty before the workers start."""
    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="gateway-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
