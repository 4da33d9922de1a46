"""What a rollout is asked to do, validated before anything moves: the spec (pydantic: also the admin API's
request model and OpenAPI schema), its steps and guards, the deploy spec per backend kind, the warm-up samples."""

from __future__ import annotations

import math
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from gateway.codecs import v2_json
from gateway.control.backend_lifecycle import lifecycle_class
from gateway.control.guards import Guards
from gateway.control.validation import invalid
from gateway.errors import InvalidChange
from gateway.routes.schema import BackendConfig, RoutesConfig
from gateway.types import ModelRef

DEFAULT_STEPS: tuple[float, ...] = (5, 25, 50, 100)
MAX_WARMUP_SAMPLES = 1000
_DEFAULT_GUARDS = Guards()


def version_number(value: Any) -> str:
    """A positive integer version, given as a number or its digits: "02" and 2 are both "2"."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a version number, got {value!r}")
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise ValueError(f"must be a positive integer version, got {value!r}")
    return str(int(text))


Version = Annotated[str, BeforeValidator(version_number)]
Ratio = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class RolloutSpec(BaseModel):
    """POST /rollouts: move ``model`` to ``to_version`` in canary steps, guarded by the canary's metrics."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, description="the logical model (a key of the routes' models)")
    to_version: Version = Field(description="the version to move to; must be listed under the model's versions")
    from_version: Version | None = Field(None, description="the version it serves now (default: its default)")
    steps: list[float] = Field(list(DEFAULT_STEPS), description="canary percentages, increasing, in (0, 100]; "
                                                               "100 is added when missing")
    dwell_s: float = Field(60.0, ge=0, lt=86400, allow_inf_nan=False, description="seconds per step")
    max_error_rate: Ratio = Field(_DEFAULT_GUARDS.max_error_rate,
                                  description="the canary's server-error share over a step that rolls it back")
    max_p99_ratio: Ratio | None = Field(None, description="canary p99 / stable p99 that rolls back")
    max_p99_s: Ratio | None = Field(None, description="canary p99 in seconds that rolls back")
    min_requests: int = Field(_DEFAULT_GUARDS.min_requests, ge=1,
                              description="canary requests a step needs before it can pass")
    sticky_header: str | None = Field(None, description="header whose value keeps a user on one variant")
    deploy: dict[str, Any] | None = Field(None, description='load the version first: TorchServe {"archive", '
                                          '"workers"?, "timeout_s"?}, TF Serving {"timeout_s"?}')
    warmup: list[dict[str, Any]] | None = Field(None, description='v2 inference bodies sent to the new version '
                                                'before any traffic, or {"body": {...}, "count": N}')
    retire: bool = Field(False, description="after promotion, drain and unload the old version")
    who: str | None = Field(None, description="recorded in the history (default: admin-api)")
    why: str = Field("", description="recorded in the history")

    @field_validator("steps", mode="after")
    @classmethod
    def _steps(cls, steps: list[float]) -> list[float]:
        out: list[float] = []
        for s in steps:
            if not math.isfinite(s) or not 0 < s <= 100:
                raise ValueError(f"each step must be a percentage in (0, 100], got {s!r}")
            if out and s <= out[-1]:
                raise ValueError(f"must increase strictly, got {steps!r}")
            out.append(float(s))
        if not out or out[-1] != 100:
            out.append(100.0)
        return out

    @field_validator("sticky_header", mode="after")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a header name")
        return None if value is None else value.strip().lower()

    @field_validator("warmup", mode="before")
    @classmethod
    def _warmup(cls, value: Any) -> Any:
        if isinstance(value, dict):  # {"body": ..., "count": N}: N copies of one body
            unknown = sorted(set(value) - {"body", "count"})
            if unknown:
                raise ValueError(f'unknown field(s) {", ".join(unknown)} (a list of bodies, or {{"body", "count"}})')
            count = value.get("count", 1)
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_WARMUP_SAMPLES:
                raise ValueError(f"count must be an integer in [1, {MAX_WARMUP_SAMPLES}], got {count!r}")
            return [value.get("body")] * count
        return value

    @field_validator("warmup", mode="after")
    @classmethod
    def _samples(cls, samples: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if samples is None:
            return None
        if len(samples) > MAX_WARMUP_SAMPLES:
            raise ValueError(f"at most {MAX_WARMUP_SAMPLES} samples, got {len(samples)}")
        for i, sample in enumerate(samples):
            if not isinstance(sample.get("inputs"), list):
                raise ValueError(f'sample {i} must be a v2 inference body {{"inputs": [...]}}')
            try:  # decoded now, so that a malformed sample is a 400 here rather than a failed rollout later
                v2_json.decode_request(orjson.dumps(sample), ModelRef("warmup"))
            except Exception as exc:
                raise ValueError(f"sample {i}: {getattr(exc, 'message', exc)}") from None
        return samples

    @classmethod
    def parse(cls, raw: Any) -> RolloutSpec:
        """From a decoded JSON body; InvalidChange (400) naming every problem."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise invalid(exc) from None

    def guards(self) -> Guards:
        return Guards(max_error_rate=self.max_error_rate, max_p99_ratio=self.max_p99_ratio,
                      max_p99_s=self.max_p99_s, min_requests=self.min_requests)


class EndSpec(BaseModel):
    """POST /rollouts/{model}/promote|rollback|abort."""

    model_config = ConfigDict(extra="forbid", strict=True)

    who: str | None = Field(None, description="recorded in the history (default: admin-api)")
    why: str = Field("", description="recorded in the history")


def check_backend(backend: BackendConfig, stage: str, where: str) -> None:
    """InvalidChange when ``stage`` (deploy or retire) of ``where`` cannot run on that backend."""
    missing = lifecycle_class(backend).missing(backend)
    if missing is not None:
        raise InvalidChange(f"{stage} of {where} needs {missing}")


def plan_deploy(value: Any, backend: BackendConfig, where: str = "the new version") -> dict[str, Any] | None:
    """The ``deploy`` spec for a target on ``backend``, checked per kind: TorchServe ``{"archive": "scale-2.mar",
    "workers"?: 1, "timeout_s"?: 120}``, TF Serving ``{"timeout_s"?: 120}``; None without one."""
    if value is None:
        return None
    check_backend(backend, "deploy", where)
    try:
        return lifecycle_class(backend).plan_deploy(value, backend)
    except InvalidChange as exc:
        raise InvalidChange(f"{exc.message} ({where} is on {backend.kind} backend {backend.name!r})") from None


def backend_of(config: RoutesConfig, model: str, version: str) -> BackendConfig:
    try:
        return config.backends[config.models[model].versions[version].backend]
    except KeyError:
        raise InvalidChange(f"version {version} of {model!r} is not in the routes file") from None
