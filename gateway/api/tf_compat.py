"""TF Serving semantics shared by the TF-compatible REST and gRPC fronts: resolution and status wording."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.codecs.tf_json import DEFAULT_SIGNATURE
from gateway.dataplane import DataPlane
from gateway.errors import InvalidArgument, ModelNotFound, NotFound, VersionNotFound
from gateway.routes.table import Hints, Route
from gateway.types import ModelRef, ModelStatus


def resolve(resolver: Callable[[ModelRef, Hints], Route], ref: ModelRef, hints: Hints) -> Route:
    """Route the request with ``resolver`` (``DataPlane.route`` for an inference, ``lookup`` otherwise), with TF
    Serving's wording for servables it cannot find."""
    try:
        return resolver(ref, hints)
    except ModelNotFound:
        spec = f"Specific({ref.name}, {ref.version})" if ref.version else f"Latest({ref.name})"
        raise NotFound(f"Servable not found for request: {spec}") from None
    except VersionNotFound:
        raise NotFound(f"Servable not found for request: Specific({ref.name}, {ref.version})") from None


async def statuses(plane: DataPlane, name: str, version: str | None) -> list[ModelStatus]:
    """Every version's state (highest first), or one version's; labels are ignored, as TF Serving does."""
    visible = plane.permitted_versions(ModelRef(name=name, version=version))
    table = plane.store.current
    try:
        model = table.model(name)
    except ModelNotFound:
        raise NotFound(f"Could not find any versions of model {name}") from None
    versions = [version] if version else sorted((v for v in model.versions if visible is None or v in visible),
                                                key=int, reverse=True)
    if version and version not in model.versions:
        raise NotFound(f"Could not find version {version} of model {name}")
    routes = [table.resolve(ModelRef(name=name, version=v)) for v in versions]
    return list(await asyncio.gather(*(plane.status(r) for r in routes)))


def check_signature(signature: str | None, route: Route) -> None:
    """Backends other than TF Serving have exactly one signature, serving_default."""
    if route.backend.kind != "tfserving" and signature not in (None, "", DEFAULT_SIGNATURE):
        raise InvalidArgument(f"Serving signature name: \"{signature}\" not found in signature def")
