"""A rollout's edits of the routes: each step is one whole write of one model's block (compare-and-swap)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway.control.rollout_state import Rollout
from gateway.errors import Conflict, NotDefined, RevisionConflict
from gateway.routes import writer
from gateway.routes.schema import RoutesConfig, VersionConfig

STABLE, CANARY = "stable", "canary"
EXPERIMENT = "canary"
_WRITE_ATTEMPTS = 8


def _version_value(version: str) -> str | int:
    return int(version) if version.isascii() and version.isdigit() else version


def model_of(raw: Any, model: str) -> dict[str, Any]:
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict) or not isinstance(models.get(model), dict):
        raise NotDefined(f"model {model!r} is not defined in the routes file")
    return models[model]  # type: ignore[no-any-return]


def listed_versions(spec: Mapping[str, Any]) -> set[str]:
    versions = spec.get("versions")
    return {str(int(v)) if str(v).isdigit() else str(v) for v in versions} if isinstance(versions, dict) else set()


def current_default(spec: Mapping[str, Any]) -> str:
    if spec.get("default_version") is not None:
        return str(int(spec["default_version"]))
    return max(listed_versions(spec), key=int)


def step_routes(raw: Mapping[str, Any], rollout: Rollout, percent: float) -> dict[str, Any]:
    """The routes with the model at ``percent`` canary: an experiment for 0 < percent < 100, the model on
    to_version alone at 100, on from_version alone at 0."""
    out = copy.deepcopy(dict(raw))
    spec = model_of(out, rollout.model)
    if percent <= 0 or percent >= 100:
        spec.pop("experiment", None)
        spec["default_version"] = _version_value(rollout.from_version if percent <= 0 else rollout.to_version)
        return out
    experiment: dict[str, Any] = {
        "name": EXPERIMENT, "salt": f"{rollout.model}-{rollout.to_version}", "fallback": "random",
        "variants": [{"name": STABLE, "version": _version_value(rollout.from_version), "weight": 100 - percent},
                     {"name": CANARY, "version": _version_value(rollout.to_version), "weight": percent}]}
    if rollout.sticky_header:
        experiment["sticky_key"] = {"header": rollout.sticky_header}
    spec["experiment"] = experiment
    spec["default_version"] = _version_value(rollout.from_version)
    return out


def applied_percent(raw: Mapping[str, Any], rollout: Rollout) -> float | None:
    """The canary share the routes give the model, when they have the shape this rollout writes; None otherwise."""
    spec = model_of(raw, rollout.model)
    experiment = spec.get("experiment")
    if experiment is None:
        default = current_default(spec)
        return 0.0 if default == rollout.from_version else 100.0 if default == rollout.to_version else None
    if not isinstance(experiment, dict) or experiment.get("name") != EXPERIMENT:
        return None
    variants = {v.get("name"): v for v in experiment.get("variants", []) if isinstance(v, dict)}
    if set(variants) != {STABLE, CANARY} or str(variants[STABLE].get("version")) != rollout.from_version \
            or str(variants[CANARY].get("version")) != rollout.to_version:
        return None
    return float(variants[CANARY].get("weight", -1))


def write_routes(path: Path, edit: Callable[[dict[str, Any]], dict[str, Any]],
                 lock_timeout_s: float = writer.LOCK_TIMEOUT_S) -> int:
    """Read, edit, compare-and-swap write; a conflict (another model's change meanwhile) re-reads and retries."""
    for _ in range(_WRITE_ATTEMPTS):
        text, revision = writer.read(path)
        raw = yaml.safe_load(text)
        try:  # the models the edit changed are re-written; the rest of the file keeps its text and comments
            return writer.apply(path, writer.splice_models(text, edit(raw)), revision,
                                lock_timeout_s=lock_timeout_s)
        except RevisionConflict:
            continue
    raise Conflict(f"{path}: the routes kept changing under the rollout ({_WRITE_ATTEMPTS} conflicts)")


def read_routes(path: Path) -> dict[str, Any]:
    text, _ = writer.read(path)
    raw = yaml.safe_load(text)
    return raw if isinstance(raw, dict) else {}


def backend_target(vc: VersionConfig) -> tuple[str, str, str]:
    return vc.backend, vc.model, vc.version


def traffic_users(config: RoutesConfig, backend: str, model: str, version: str) -> list[str]:
    """Where the routes still send traffic to the backend target (backend, model, version): every model's
    default version, experiment variants, labels and shadow that resolve to it (described, for the reason)."""
    target = (backend, model, version)
    users: list[str] = []
    for m in config.models.values():
        refs: list[tuple[str, str]] = [("default", m.default_version)]
        if m.experiment is not None:
            refs += [(f"experiment variant {v.name}", v.version) for v in m.experiment.variants]
        refs += [(f"label {label}", v) for label, v in m.labels.items()]
        if m.shadow is not None:
            refs.append(("shadow", m.shadow.version))
        for what, logical in refs:
            vc = m.versions.get(logical)
            if vc is not None and backend_target(vc) == target:
                users.append(f"models.{m.name} {what} (version {logical})")
    return users
