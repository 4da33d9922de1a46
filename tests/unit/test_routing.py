"""resolve(): explicit version, label, default; errors with the status codes clients rely on."""

import asyncio
import dataclasses

import pytest

from gateway.backends.registry import Backends
from gateway.dataplane import InFlight
from gateway.errors import InvalidArgument, ModelNotFound, VersionNotFound
from gateway.routes.schema import parse_routes
from gateway.routes.table import RouteTable
from gateway.types import ModelRef

from .test_config import BASE

TABLE = RouteTable.from_config(parse_routes(BASE, "routes.yaml", {}))


def test_default_version() -> None:
    route = TABLE.resolve(ModelRef("m"))
    assert (route.target.backend, route.target.version, route.target.logical_version) == ("tf", "1", "1")


def test_explicit_version_reaches_its_backend() -> None:
    route = TABLE.resolve(ModelRef("m", version="2"))
    assert (route.target.backend, route.target.model, route.target.version) == ("ts", "m", "2.0")
    assert route.backend.kind == "torchserve"


def test_label() -> None:
    assert TABLE.resolve(ModelRef("m", label="stable")).target.logical_version == "1"


@pytest.mark.parametrize(("ref", "error", "status", "message"), [
    (ModelRef("nope"), ModelNotFound, 404, "Model 'nope' is not served"),
    (ModelRef("m", version="9"), VersionNotFound, 404, "Model 'm' has no version 9"),
    (ModelRef("m", label="gold"), InvalidArgument, 400, "Unrecognized servable version label: gold"),
    (ModelRef("m", version="1", label="stable"), InvalidArgument, 400, "a version or a label, not both"),
])
def test_resolution_errors(ref: ModelRef, error: type, status: int, message: str) -> None:
    with pytest.raises(error) as info:
        TABLE.resolve(ref)
    assert info.value.http_status == status
    assert message in info.value.message


def test_inflight_counts_per_target_and_forgets_idle_ones() -> None:
    inflight = InFlight()
    route = TABLE.resolve(ModelRef("m", version="2"))
    with inflight.calling(route), inflight.calling(route):
        assert inflight.count("ts", "m", "2.0") == 2
    assert inflight.count("ts", "m", "2.0") == 0 and not inflight.counts
    with pytest.raises(RuntimeError), inflight.calling(route):
        raise RuntimeError("backend failed")
    assert not inflight.counts


async def test_backends_of_a_replaced_config_are_closed_after_their_timeout() -> None:
    old_config = dataclasses.replace(TABLE.backends["tf"], timeout_s=0.2)
    new_config = dataclasses.replace(old_config, timeout_s=0.3)
    backends = Backends()
    old = backends.get(old_config)
    closed = asyncio.Event()
    real_close = old.close

    async def close() -> None:
        closed.set()
        await real_close()  # its health checks stop, its connections close

    old.close = close  # type: ignore[method-assign]
    backends.retire_unused([new_config])
    assert backends.get(new_config) is not old
    await asyncio.sleep(0.1)
    assert not closed.is_set()  # calls still in flight on the old client get its whole timeout first
    await asyncio.wait_for(closed.wait(), timeout=5)
    await backends.close()
