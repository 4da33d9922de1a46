"""Routing: an immutable route table built from the routes file, and resolve() from a ModelRef (plus the
request's routing hints) to a Target: explicit version or label, QA override, A/B variant, default; and whether
this request is also mirrored to a shadow."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gateway.errors import InvalidArgument, ModelNotFound, PermissionDenied, UnknownLabel, VersionNotFound
from gateway.routes.schema import BackendConfig, Experiment, ModelConfig, RoutesConfig, Variant
from gateway.types import ModelRef, Target

BUCKETS = 10_000  # sticky keys hash into this many buckets; a variant owns a contiguous range of them
OVERRIDE_VARIANT = "x-model-variant"
OVERRIDE_VERSION = "x-model-version"


def _no_header(name: str) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Hints:
    """What a request carries for routing besides the model reference: its headers (gRPC metadata) and, for v2
    requests, its parameters. `header` takes a lower-case name."""

    header: Callable[[str], str | None] = _no_header
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    request_id: str | None = None


NO_HINTS = Hints()


@dataclass(frozen=True, slots=True)
class Route:
    """A resolved request: where it goes, the logical model it belongs to, and how it was chosen."""

    target: Target
    model: ModelConfig
    backend: BackendConfig
    variant: str = ""  # the experiment's variant; "" outside an experiment
    assigned: str = "default"  # version | label | override | sticky | random | default | failover
    key_hash: str = ""  # sticky key digest (never the key itself), for assignment logs
    shadow: Route | None = None  # also send this request here, in the background


@dataclass(frozen=True, slots=True)
class RouteTable:
    revision: int
    backends: Mapping[str, BackendConfig]
    models: Mapping[str, ModelConfig]
    # Routes without a per-request part (sticky key digest, shadow), built once per table on first use.
    _built: dict[tuple[str, str, str, str], Route] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: RoutesConfig) -> RouteTable:
        return cls(revision=config.revision, backends=config.backends, models=config.models)

    def model(self, name: str) -> ModelConfig:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFound(f"Model '{name}' is not served by this gateway") from None

    def resolve(self, ref: ModelRef, hints: Hints = NO_HINTS, rand: Callable[[], float] = random.random) -> Route:
        """Version or label from the request, else a QA override header, else the experiment's assignment,
        else the model's default version."""
        model = self.model(ref.name)
        if ref.version is not None and ref.label is not None:
            raise InvalidArgument("A request may name a version or a label, not both")
        variant, key_hash = "", ""
        if ref.label is not None:
            version, assigned = self._label(model, ref.label), "label"
        elif ref.version is not None:
            version, assigned = self._version(model, ref.version), "version"
        elif (override := _override(model, hints)) is not None:
            version, variant, assigned = *override, "override"
        elif model.experiment is not None:
            chosen, assigned, key_hash = assign(model, model.experiment, hints, rand)
            version, variant = chosen.version, chosen.name
        else:
            version, assigned = model.default_version, "default"
        shadow = None
        if model.shadow is not None and version != model.shadow.version and rand() * 100 < model.shadow.percent:
            shadow = self._route(model, model.shadow.version)
        return self._route(model, version, variant, assigned, key_hash, shadow)

    def failover(self, route: Route) -> Route | None:
        """The experiment's failover variant for a request assigned to another variant (not one that named its
        version, label or variant); None when there is none."""
        experiment = route.model.experiment
        if (experiment is None or experiment.failover is None or route.variant in ("", experiment.failover)
                or route.assigned not in ("sticky", "random", "default")):
            return None
        chosen = next(v for v in experiment.variants if v.name == experiment.failover)
        return self._route(route.model, chosen.version, chosen.name, "failover")

    def _route(self, model: ModelConfig, version: str, variant: str = "", assigned: str = "shadow",
               key_hash: str = "", shadow: Route | None = None) -> Route:
        if key_hash or shadow is not None:
            return self._build(model, version, variant, assigned, key_hash, shadow)
        key = (model.name, version, variant, assigned)
        route = self._built.get(key)
        if route is None:
            route = self._built[key] = self._build(model, version, variant, assigned, "", None)
        return route

    def _build(self, model: ModelConfig, version: str, variant: str, assigned: str, key_hash: str,
               shadow: Route | None) -> Route:
        spec = model.versions[version]
        target = Target(backend=spec.backend, model=spec.model, version=spec.version,
                        logical_model=model.name, logical_version=version)
        return Route(target=target, model=model, backend=self.backends[spec.backend], variant=variant,
                     assigned=assigned, key_hash=key_hash, shadow=shadow)

    @staticmethod
    def _label(model: ModelConfig, label: str) -> str:
        version = model.labels.get(label)
        if version is None:
            raise UnknownLabel(f"Unrecognized servable version label: {label}")
        return version

    @staticmethod
    def _version(model: ModelConfig, version: str) -> str:
        if version not in model.versions:
            raise VersionNotFound(f"Model '{model.name}' has no version {version}")
        return version


def _override(model: ModelConfig, hints: Hints) -> tuple[str, str] | None:
    """(version, variant) forced by the x-model-version / x-model-variant headers, when the model allows it."""
    forced_version, forced_variant = hints.header(OVERRIDE_VERSION), hints.header(OVERRIDE_VARIANT)
    if forced_version is None and forced_variant is None:
        return None
    if not model.allow_overrides:
        raise PermissionDenied(f"model '{model.name}' does not allow {OVERRIDE_VERSION}/{OVERRIDE_VARIANT} overrides")
    if forced_version is not None:
        return RouteTable._version(model, forced_version.strip()), ""
    variants = {v.name: v for v in model.experiment.variants} if model.experiment else {}
    chosen = variants.get(str(forced_variant).strip())
    if chosen is None:
        known = ", ".join(variants) or "none: the model runs no experiment"
        raise InvalidArgument(f"model '{model.name}' has no variant {forced_variant!r} (variants: {known})")
    return chosen.version, chosen.name


def assign(model: ModelConfig, experiment: Experiment, hints: Hints,
           rand: Callable[[], float]) -> tuple[Variant, str, str]:
    """(variant, how, key digest). A sticky key always lands in the same bucket; variants own contiguous bucket
    ranges in their listed order, so moving weight between two variants moves only the keys that must move."""
    key = sticky_key(experiment, hints)
    if key is not None:
        digest = hashlib.blake2b(f"{experiment.salt}\x00{key}".encode(), digest_size=8).digest()
        return pick(experiment.variants, int.from_bytes(digest, "big") % BUCKETS), "sticky", digest.hex()
    if experiment.sticky_key is not None and experiment.fallback == "default":
        default = next((v for v in experiment.variants if v.version == model.default_version),
                       experiment.variants[0])
        return default, "default", ""
    return pick(experiment.variants, int(rand() * BUCKETS)), "random", ""


def sticky_key(experiment: Experiment, hints: Hints) -> str | None:
    source = experiment.sticky_key
    if source is None:
        return None
    if source.header is not None:
        return hints.header(source.header) or None
    value = hints.parameters.get(source.parameter or "")
    return None if value is None or value == "" else str(value)


def pick(variants: tuple[Variant, ...], bucket: int) -> Variant:
    upper = 0.0
    for variant in variants:
        upper += variant.weight * (BUCKETS / 100)
        if bucket < upper:
            return variant
    return next(v for v in reversed(variants) if v.weight > 0)
