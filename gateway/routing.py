"""Routing: an immutable route table built from the routes file, and resolve() from a ModelRef to a Target."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import BackendConfig, ModelConfig, RoutesConfig
from gateway.errors import InvalidArgument, ModelNotFound, VersionNotFound
from gateway.types import ModelRef, Target


@dataclass(frozen=True, slots=True)
class Route:
    """A resolved request: where it goes and the logical model it belongs to."""

    target: Target
    model: ModelConfig
    backend: BackendConfig


class UnknownLabel(InvalidArgument):
    """TF Serving answers an unknown label with INVALID_ARGUMENT, not NOT_FOUND; so do we."""


@dataclass(frozen=True, slots=True)
class RouteTable:
    revision: int
    backends: Mapping[str, BackendConfig]
    models: Mapping[str, ModelConfig]

    @classmethod
    def from_config(cls, config: RoutesConfig) -> RouteTable:
        return cls(revision=config.revision, backends=config.backends, models=config.models)

    def model(self, name: str) -> ModelConfig:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFound(f"Model '{name}' is not served by this gateway") from None

    def resolve(self, ref: ModelRef) -> Route:
        """The version asked for, else the label's version, else the model's default version."""
        model = self.model(ref.name)
        if ref.version is not None and ref.label is not None:
            raise InvalidArgument("A request may name a version or a label, not both")
        if ref.label is not None:
            version = model.labels.get(ref.label)
            if version is None:
                raise UnknownLabel(f"Unrecognized servable version label: {ref.label}")
        elif ref.version is not None:
            version = ref.version
            if version not in model.versions:
                raise VersionNotFound(f"Model '{ref.name}' has no version {version}")
        else:
            version = model.default_version
        spec = model.versions[version]
        target = Target(
            backend=spec.backend, model=spec.model, version=spec.version,
            logical_model=model.name, logical_version=version,
        )
        return Route(target=target, model=model, backend=self.backends[spec.backend])
