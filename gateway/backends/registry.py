"""The backend clients of one process, keyed by their config: created on first use, told which models the routes
send them (their health checks ask for those), retired after a routes change no longer uses them, closed together
on shutdown."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable

from gateway.backends.base import Backend
from gateway.backends.endpoints import PoolObserver
from gateway.events import Storm
from gateway.routes.schema import BackendConfig
from gateway.routes.table import RouteTable


class Backends:
    """Backend clients keyed by their whole config, so a routes change to a URL or timeout gets a new client
    (a client is never reused for a config it was not built for). Closed together on shutdown."""

    def __init__(self, observer: PoolObserver | None = None, not_ejected: Storm | None = None,
                 no_budget: Storm | None = None, http_client: str = "aiohttp") -> None:
        self._clients: dict[BackendConfig, Backend] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._models: dict[str, tuple[str, ...]] = {}  # backend name -> the models the routes send there
        self.observer = observer
        self.storms = (not_ejected, no_budget)
        self.http_client = http_client  # the REST adapters' HTTP client (GATEWAY_HTTP_CLIENT)

    def get(self, config: BackendConfig) -> Backend:
        client = self._clients.get(config)
        if client is None:
            client = self._clients[config] = _create(config, self.http_client)
            pool = client.endpoints
            pool.observer, (pool.not_ejected, pool.no_budget) = self.observer, self.storms
            pool.models = self._models.get(config.name, ())
            pool.start()
        return client

    def sync(self, table: RouteTable) -> None:
        """A new routes table: every backend learns the models it serves; clients no longer used retire."""
        served: dict[str, set[str]] = {}
        for model in table.models.values():
            for version in model.versions.values():
                served.setdefault(version.backend, set()).add(version.model)
        self._models = {name: tuple(sorted(models)) for name, models in served.items()}
        for config, client in self._clients.items():
            client.endpoints.models = self._models.get(config.name, ())
        self.retire_unused(table.backends.values())

    def available(self, config: BackendConfig) -> bool:
        """Whether a call to that backend can go anywhere now (an endpoint neither ejected nor failing its checks)."""
        return self.get(config).endpoints.available()

    def endpoint_states(self) -> dict[str, dict[str, int]]:
        return {config.name: client.endpoints.states() for config, client in self._clients.items()}

    def retire_unused(self, active: Iterable[BackendConfig]) -> None:
        """After a routes change: clients built for configs the new table no longer uses are closed once the
        calls they may still carry have had their full timeout to finish."""
        keep = set(active)
        for config in [c for c in self._clients if c not in keep]:
            task = asyncio.create_task(self._close_later(self._clients.pop(config), config.timeout_s + 1))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_later(client: Backend, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await client.close()

    def channel_states(self) -> Counter[tuple[str, str]]:
        """The gRPC channels of the backend clients per (backend, connectivity state), for the metrics. Adapters
        hold their channels as attributes (one for inference, one for management); channels never opened are not
        counted. Inference channels are one per endpoint, in the adapter's GrpcEndpoints."""
        from gateway.backends.grpc_channel import GrpcChannel, GrpcEndpoints

        states: Counter[tuple[str, str]] = Counter()
        for config, client in self._clients.items():
            for part in vars(client).values():
                channels = part.channels() if isinstance(part, GrpcEndpoints) else [part]
                for channel in channels:
                    if isinstance(channel, GrpcChannel) and (state := channel.state()) is not None:
                        states[(config.name, state)] += 1
        return states

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


def _create(config: BackendConfig, http_client: str) -> Backend:
    # Imported here so the registry does not depend on every adapter module at import time.
    if config.kind == "tfserving":
        if config.transport == "grpc":
            from gateway.backends.tfserving_grpc import TFServingGrpcBackend

            return TFServingGrpcBackend(config)
        from gateway.backends.tfserving import TFServingBackend

        return TFServingBackend(config, http_client)
    if config.transport == "grpc":
        from gateway.backends.torchserve_grpc import TorchServeGrpcBackend

        return TorchServeGrpcBackend(config, http_client)
    from gateway.backends.torchserve import TorchServeBackend

    return TorchServeBackend(config, http_client)
