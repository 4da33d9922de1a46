"""The data plane: resolve -> validate -> backend -> answer. The one place that sees a request whole."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from gateway.backends.base import Backend, Backends
from gateway.codecs.jsonio import dumps
from gateway.deadline import set_deadline
from gateway.errors import InvalidArgument
from gateway.metrics import Metrics
from gateway.routes.store import RouteStore
from gateway.routes.table import NO_HINTS, Hints, Route
from gateway.shadow import Shadows
from gateway.types import InferRequest, InferResponse, ModelRef, ModelSchema, ModelStatus, Tensor, TensorSpec

assignments = logging.getLogger("gateway.assignment")
# The route of the request being handled, for the fronts' per-request metrics (each request runs in its own task).
current_route: ContextVar[Route | None] = ContextVar("gateway_route", default=None)


class InFlight:
    """Backend calls in flight per target (backend, model, version): a version is retired only once its count is
    back to 0 (drain). ``count`` is this process's; ``total`` every worker's (the metrics' livesum gauge)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.metrics = metrics
        self._gauges: dict[tuple[str, str, str], Any] = {}

    @contextmanager
    def calling(self, route: Route) -> Iterator[None]:
        key = (route.target.backend, route.target.model, route.target.version)
        gauge = self._gauges.get(key)
        if gauge is None and self.metrics is not None:
            gauge = self._gauges[key] = self.metrics.inflight_child(*key)
        self.counts[key] += 1
        if gauge is not None:
            gauge.inc()
        try:
            yield
        finally:
            if gauge is not None:
                gauge.dec()
            self.counts[key] -= 1
            if not self.counts[key]:
                del self.counts[key]

    def count(self, backend: str, model: str, version: str) -> int:
        return self.counts.get((backend, model, version), 0)

    def total(self, backend: str, model: str, version: str) -> int:
        """Every worker's calls in flight to that target (this process's alone when it is the only one)."""
        every = self.metrics.inflight_all_workers(backend, model, version) if self.metrics is not None else None
        return self.count(backend, model, version) if every is None else every


class DataPlane:
    """Transport-neutral: every front, REST and gRPC, calls these methods."""

    def __init__(self, store: RouteStore, backends: Backends, metrics: Metrics, shadows: Shadows) -> None:
        self.store = store
        self.backends = backends
        self.metrics = metrics
        self.shadows = shadows
        self.inflight = InFlight(metrics)
        metrics.routes_revision.set(store.current.revision)  # what every worker serves: a retire waits for it
        store.on_swap.append(lambda table: metrics.routes_revision.set(table.revision))
        self.draining = False  # SIGTERM received: not ready, connections closed after their request (lifecycle.py)

    def route(self, ref: ModelRef, hints: Hints = NO_HINTS) -> Route:
        # One read of `current` per request: a routes swap mid-request never mixes tables.
        route = self.store.current.resolve(ref, hints)
        current_route.set(route)
        experiment = route.model.experiment
        if experiment is not None and route.variant:
            self.metrics.assignment(model=route.model.name, experiment=experiment.name, variant=route.variant,
                                    how=route.assigned)
            if experiment.log_assignments:
                assignments.info(dumps({
                    "request_id": hints.request_id, "model": route.model.name, "experiment": experiment.name,
                    "variant": route.variant, "version": route.target.logical_version, "how": route.assigned,
                    "key_hash": route.key_hash}).decode())
        return route

    def backend(self, route: Route) -> Backend:
        return self.backends.get(route.backend)

    async def infer(self, request: InferRequest, route: Route) -> InferResponse:
        schema = await self.input_schema(route, request.signature_name)
        if schema is not None:
            check_inputs(request, schema)
        with self.inflight.calling(route):
            response = await self.backend(route).infer(route.target, request)
        outputs = select_outputs(response.outputs, request.output_names)
        answer = InferResponse(outputs=outputs, model_name=route.target.logical_model,
                               model_version=route.target.logical_version, id=request.id)
        if route.shadow is not None:
            self.mirror(request, route, route.shadow, answer)
        return answer

    def mirror(self, request: InferRequest, route: Route, shadow: Route, primary: InferResponse) -> None:
        """Send the request to the shadow in the background and compare; never waits, never fails the primary."""
        policy = route.model.shadow
        assert policy is not None

        async def call() -> InferResponse:
            set_deadline(None)  # the client's deadline is the primary's, not the shadow's
            with self.inflight.calling(shadow):
                response = await self.backend(shadow).infer(shadow.target, request)
            return InferResponse(outputs=select_outputs(response.outputs, request.output_names))

        self.shadows.submit(model=route.model.name, primary_version=route.target.logical_version,
                            shadow_version=shadow.target.logical_version, call=call, primary=primary,
                            tolerance=policy.tolerance, timeout_s=policy.timeout_s)

    async def input_schema(self, route: Route, signature: str | None) -> ModelSchema | None:
        """What inputs are checked against: TF Serving does not check shapes against the signature itself (a
        wrong width can even "work"), so the declared schema, else the backend's own (cached) signature."""
        return route.model.schema or await self.backend(route).schema(route.target, signature)

    async def forward(self, route: Route, path_suffix: str, body: bytes, content_type: str) -> tuple[bytes, str]:
        """A body already in the backend's protocol goes through unchanged (no decode on this path)."""
        with self.inflight.calling(route):
            return await self.backend(route).forward(route.target, path_suffix, body, content_type)

    async def status(self, route: Route) -> ModelStatus:
        status = await self.backend(route).status(route.target)
        return ModelStatus(version=route.target.logical_version, state=status.state,
                           error_message=status.error_message)

    async def schema(self, route: Route) -> ModelSchema:
        """Declared in the routes file, else as the backend reports it, else empty."""
        if route.model.schema is not None:
            return route.model.schema
        return await self.backend(route).schema(route.target) or ModelSchema()


def check_inputs(request: InferRequest, schema: ModelSchema) -> None:
    """Names, datatypes and shapes against the declared schema, before anything reaches a backend."""
    check_specs(request.model.name, [TensorSpec(t.name, t.datatype, t.shape) for t in request.inputs], schema)


def check_specs(model: str, given: list[TensorSpec], schema: ModelSchema) -> None:
    """The same check for inputs known only by their headers (a forwarded TensorProto is never decoded)."""
    specs = {s.name: s for s in schema.inputs}
    missing = sorted(specs.keys() - {t.name for t in given})
    if missing:
        raise InvalidArgument(f"model '{model}' needs input(s) {', '.join(missing)}")
    for tensor in given:
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidArgument(f"model '{model}' has no input '{tensor.name}' "
                                  f"(inputs: {', '.join(sorted(specs))})")
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(f"input '{tensor.name}': datatype {tensor.datatype} given, model expects "
                                  f"{spec.datatype}")
        shape = tensor.shape
        if len(shape) != len(spec.shape) or any(d not in (-1, s) for s, d in zip(shape, spec.shape, strict=True)):
            raise InvalidArgument(f"input '{tensor.name}': shape {list(shape)} does not match the model's "
                                  f"{list(spec.shape)} (-1 is any size)")


def select_outputs(outputs: tuple[Tensor, ...], names: tuple[str, ...]) -> tuple[Tensor, ...]:
    if not names:
        return outputs
    by_name = {t.name: t for t in outputs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InvalidArgument(f"unknown output(s) {', '.join(unknown)} (outputs: {', '.join(sorted(by_name))})")
    return tuple(by_name[n] for n in names)
