"""The data plane: resolve -> validate -> backend -> answer. The one place that sees a request whole.

Every front (REST and gRPC) decodes its client's request, then calls this module: ``route`` (an inference) or
``lookup`` (metadata, status) picks the target; ``infer`` validates, calls the backend, mirrors to the shadow;
``passthrough`` hands a front the backend as a capability (gateway/backends/base.py) when the body can go to it
unchanged, and ``forward`` makes that call; ``measure`` records the request once the front has answered. What is
measured is decided here: a request that was routed as an inference, whatever its front, method or outcome.
Every backend call goes through ``calling``: refused at once when the backend has no endpoint to call (or moved to
its experiment's failover variant when routed), admitted or shed (gateway/admission.py), counted in flight.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from gateway import tracing
from gateway.admission import Admission
from gateway.backends.base import Backend
from gateway.backends.endpoints import NoEndpoint
from gateway.backends.registry import Backends
from gateway.codecs.jsonio import dumps
from gateway.deadline import set_deadline
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidArgument,
    Overloaded,
)
from gateway.metrics import Metrics
from gateway.routes.store import RouteStore
from gateway.routes.table import NO_HINTS, Hints, Route, RouteTable
from gateway.shadow import Shadows
from gateway.telemetry import Exchange, Header, Telemetry, current
from gateway.types import InferRequest, InferResponse, ModelRef, ModelSchema, ModelStatus, Tensor, TensorSpec

if TYPE_CHECKING:
    from gateway.auth.gate import AuthGate

assignments = logging.getLogger("gateway.assignment")
C = TypeVar("C")
T = TypeVar("T")


__all__ = ["DataPlane", "Exchange", "InFlight", "current"]


class InFlight:
    """Every backend call goes through ``calling``: counted in flight per target (backend, model, version; a
    version is retired only once its count is back to 0), timed (the request's backend time, and the backend call
    histogram), its failure classified (connect, timeout, status), and traced when tracing is on. ``count`` is this
    process's calls in flight; ``total`` every worker's (the metrics' livesum gauge)."""

    def __init__(self, metrics: Metrics | None = None, telemetry: Telemetry | None = None) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.metrics = metrics
        self.telemetry = telemetry
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
        exchange = current.get()
        traced = (self.telemetry.backend_span(exchange, route)
                  if self.telemetry is not None and exchange is not None else None)
        span = traced[0] if traced is not None else None
        trace_token = tracing.outgoing.set(traced[1]) if traced is not None else None
        start = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            failure = backend_failure(exc)
            if failure is not None and self.metrics is not None:
                t = route.target
                self.metrics.backend_error(backend=t.backend, model=t.logical_model, version=t.logical_version,
                                           kind=failure[0], code=failure[1])
            if span is not None:
                span.set_attribute("gateway.failure", ":".join(failure or (type(exc).__name__,)))
            raise
        finally:
            elapsed = time.perf_counter() - start
            if exchange is not None:
                exchange.backend_s += elapsed
            if self.metrics is not None:
                t = route.target
                self.metrics.backend_call_child(t.backend, t.logical_model, t.logical_version,
                                                route.backend.transport).observe(elapsed)
            if trace_token is not None:
                tracing.outgoing.reset(trace_token)
            if span is not None:
                span.end()
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

    def __init__(self, store: RouteStore, backends: Backends, metrics: Metrics, shadows: Shadows,
                 telemetry: Telemetry | None = None, auth: AuthGate | None = None,
                 admission: Admission | None = None) -> None:
        self.store = store
        self.backends = backends
        self.metrics = metrics
        self.shadows = shadows
        self.telemetry = telemetry or Telemetry(metrics)
        self.inflight = InFlight(metrics, self.telemetry)
        self.auth = auth  # client authentication on: the fronts authenticate, resolve checks grants and rates
        self.admission = admission or Admission(metrics)  # gateway/admission.py
        self._routes_applied(store.current)  # the revision every worker serves: a retire waits for it
        store.on_swap.append(self._routes_applied)
        self.admission.sync(store.current)
        store.on_swap.append(self.admission.sync)
        store.on_refused.append(lambda _: metrics.routes_reloaded(False))
        self.draining = False  # SIGTERM received: not ready, connections closed after their request (lifecycle.py)

    # --- one request's exchange: begun by its front, measured when the front has answered ------------------------

    def begin(self, operation: str = "", header: Header | None = None) -> Exchange:
        """A front took a request: ``operation`` names its trace span, ``header`` reads its headers or metadata
        (the client's trace context); both used only while tracing is on."""
        return self.telemetry.begin(operation, header)

    def measure(self, exchange: Exchange, protocol: str, code: str, *, received: int | None = None,
                sent: int | None = None, request_id: str | None = None, detail: str = "") -> None:
        """The front has answered: record an inference request (routed by ``route``) with the answer's code and
        sizes in the metrics; nothing else is counted, so model names a client invents never become label values.
        Every request gets its access log line (sampled), its warning when it is a server error, its span's end
        (gateway/telemetry.py)."""
        self.telemetry.end(exchange, protocol, code, received=received, sent=sent, request_id=request_id,
                           detail=detail)

    def _routes_applied(self, table: RouteTable) -> None:
        self.metrics.routes_reloaded(True, table.revision)
        self.metrics.experiment_weights({
            (name, model.experiment.name, v.name): v.weight / 100
            for name, model in table.models.items() if model.experiment is not None
            for v in model.experiment.variants})

    # --- routing ------------------------------------------------------------------------------------------------

    def route(self, ref: ModelRef, hints: Hints = NO_HINTS) -> Route:
        """The target of an inference request (measured as one, and held to the caller's rate limits)."""
        route = self._resolve(ref, hints, inference=True)
        exchange = current.get()
        if exchange is not None:
            exchange.inference = True
        return route

    def lookup(self, ref: ModelRef, hints: Hints = NO_HINTS) -> Route:
        """The target of a metadata or status request (not measured as an inference)."""
        return self._resolve(ref, hints)

    def permitted_versions(self, ref: ModelRef) -> frozenset[str] | None:
        """For answers that read the routes without resolving (TF's model status): the caller may see this model
        (and version; 403 otherwise); the versions it may see, None for all."""
        exchange = current.get()
        if self.auth is None or exchange is None:
            return None
        return self.auth.permit(exchange.caller, ref, NO_HINTS).grant.versions

    def _resolve(self, ref: ModelRef, hints: Hints, inference: bool = False) -> Route:
        exchange = current.get()
        permit = None
        if self.auth is not None and exchange is not None:  # the control plane's own calls have no exchange
            permit = self.auth.permit(exchange.caller, ref, hints)
        # One read of `current` per request: a routes swap mid-request never mixes tables.
        table = self.store.current
        if self.telemetry.tracing is None:
            route = table.resolve(ref, hints)
        else:
            with self.telemetry.routing():
                route = table.resolve(ref, hints)
        if route.variant:
            route = self._failover(table, route)
        if permit is not None:  # on the route that serves it (a failover variant's too)
            permit.admit(route, inference)
        if exchange is not None:
            exchange.route = route
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

    def _failover(self, table: RouteTable, route: Route) -> Route:
        """While the variant's backend has no endpoint to call, its experiment's failover variant (when it has one
        that can take the call)."""
        failover = table.failover(route)
        if failover is None or self.backends.available(route.backend) or not self.backends.available(
                failover.backend):
            return route
        return failover

    def backend(self, route: Route) -> Backend:
        return self.backends.get(route.backend)

    @contextlib.asynccontextmanager
    async def calling(self, route: Route) -> AsyncIterator[Backend]:
        """The route's backend, for one call: refused at once while it has no endpoint to call, then admitted
        (gateway/admission.py) and counted in flight."""
        backend = self.backend(route)
        try:
            if not backend.endpoints.available():
                raise NoEndpoint(f"backend '{route.backend.name}' has no endpoint to call: "
                                 f"{backend.endpoints.why_none()}")
            async with self.admission.admit(route):
                with self.inflight.calling(route):
                    yield backend
        except GatewayError as exc:
            exchange = current.get()
            if exchange is not None and exchange.route is route:  # not a shadow's call
                # The error log counts storms by it, the access log shows it (gateway/telemetry.py).
                exchange.cause = type(exc).__name__ + (f":{exc.reason}" if isinstance(exc, Overloaded) else "")
            raise

    async def infer(self, request: InferRequest, route: Route) -> InferResponse:
        schema = await self.input_schema(route, request.signature_name)
        if schema is not None:
            check_inputs(request, schema)
        async with self.calling(route) as backend:
            response = await backend.infer(route.target, request)
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
        parent = current.get() if self.telemetry.tracing is not None else None

        async def call() -> InferResponse:
            set_deadline(None)  # the client's deadline is the primary's, not the shadow's
            with self.telemetry.shadow(parent, shadow):
                async with self.calling(shadow) as backend:
                    response = await backend.infer(shadow.target, request)
            return InferResponse(outputs=select_outputs(response.outputs, request.output_names))

        self.shadows.submit(model=route.model.name, primary_version=route.target.logical_version,
                            shadow_version=shadow.target.logical_version, call=call, primary=primary,
                            tolerance=policy.tolerance, timeout_s=policy.timeout_s)

    async def input_schema(self, route: Route, signature: str | None) -> ModelSchema | None:
        """What inputs are checked against: TF Serving does not check shapes against the signature itself (a
        wrong width can even "work"), so the declared schema, else the backend's own (cached) signature."""
        return route.model.schema or await self.backend(route).schema(route.target, signature)

    def passthrough(self, route: Route, capability: type[C]) -> C | None:
        """The route's backend as ``capability`` (e.g. PassesTFRest) when it has it and nothing needs the decoded
        tensors (a shadow does); None: decode and ``infer`` instead."""
        if route.shadow is not None:
            return None
        return self.capability(route, capability)

    def capability(self, route: Route, capability: type[C]) -> C | None:
        backend = self.backend(route)
        return backend if isinstance(backend, capability) else None

    async def forward(self, route: Route, call: Callable[[], Awaitable[T]]) -> T:
        """A pass-through call (a body already in the backend's protocol, never decoded), admitted and counted in
        flight as ``infer``'s."""
        async with self.calling(route):
            return await call()

    async def status(self, route: Route) -> ModelStatus:
        status = await self.backend(route).status(route.target)
        return ModelStatus(version=route.target.logical_version, state=status.state,
                           error_message=status.error_message)

    async def schema(self, route: Route) -> ModelSchema:
        """Declared in the routes file, else as the backend reports it, else empty."""
        if route.model.schema is not None:
            return route.model.schema
        return await self.backend(route).schema(route.target) or ModelSchema()


def backend_failure(exc: BaseException) -> tuple[str, str] | None:
    """(kind, code) of a failed backend call, as the adapters tagged it; an error the gateway raised itself before
    sending (a request it could not encode, no endpoint to send it to, a call it shed) or a cancelled call is not
    the backend's failure: None."""
    if not isinstance(exc, GatewayError) or isinstance(exc, NoEndpoint | Overloaded):
        return None
    if exc.backend_failure is not None:
        return exc.backend_failure
    if isinstance(exc, BackendTimeout):
        return ("timeout", "")
    if isinstance(exc, BackendError | BackendUnavailable):
        return ("status", "")  # an answer it could not use
    return None


def longest_call_s(table: RouteTable) -> float:
    """The longest a client can wait for one inference with these routes: a model's queue, its backend's queue and
    call (gateway/admission.py; retries stay inside the call's timeout)."""
    longest = max((b.longest_call_s for b in table.backends.values()), default=0.0)
    models = (m.admission.max_wait_s for m in table.models.values() if m.admission is not None)
    return longest + max(models, default=0.0)


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
