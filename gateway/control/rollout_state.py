"""A rollout's state (steps, guards, phase, history of every transition) and where it is kept between restarts."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import orjson

from gateway.control.guards import Guards
from gateway.routes import writer

log = logging.getLogger("gateway.rollout")

State = Literal["running", "promoted", "rolled_back", "aborted", "failed"]


@dataclass
class Rollout:
    model: str
    from_version: str
    to_version: str
    steps: list[float]
    dwell_s: float
    guards: Guards
    sticky_header: str | None = None
    state: State = "running"
    step_index: int = -1  # the last applied step (-1: none, all traffic on from_version)
    percent: float = 0.0  # the canary share now in the routes
    routes_revision: int | None = None  # the revision of the last routes write of this rollout
    reason: str = ""  # why it ended
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    history: list[dict[str, Any]] = field(default_factory=list)
    # Lifecycle: deploy + wait until it serves before the first step, warm-up, drain + unload after.
    deploy: dict[str, Any] | None = None  # TorchServe {"archive", "workers", "timeout_s"}; TF Serving {"timeout_s"}
    warmup: list[dict[str, Any]] = field(default_factory=list)  # v2 JSON inference bodies
    retire: bool = False
    phase: str = ""  # deploying | warming_up | canary | retiring | retired | retire_failed | retire_skipped

    def record(self, event: str, who: str, why: str = "", **what: Any) -> None:
        self.updated_at = time.time()
        self.history.append({"at": self.updated_at, "event": event, "who": who, "why": why,
                             "percent": self.percent, "step": self.step_index, **what})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Rollout:
        data = dict(raw)
        data["guards"] = Guards(**data.get("guards", {}))
        data["steps"] = [float(s) for s in data["steps"]]
        return cls(**data)


class StateStore:
    """``<routes file>.rollouts/<model>.json``, written atomically."""

    def __init__(self, routes_path: Path) -> None:
        real = Path(os.path.realpath(routes_path))
        self.dir = real.with_name(f"{real.name}.rollouts")

    def path(self, model: str) -> Path:
        return self.dir / f"{model}.json"

    def save(self, rollout: Rollout) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        text = orjson.dumps(rollout.to_json(), option=orjson.OPT_INDENT_2).decode()
        writer.atomic_write(self.path(rollout.model), text)

    def load(self, model: str) -> Rollout | None:
        try:
            return Rollout.from_json(orjson.loads(self.path(model).read_bytes()))
        except FileNotFoundError:
            return None

    def load_all(self) -> list[Rollout]:
        out = []
        for p in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                out.append(Rollout.from_json(orjson.loads(p.read_bytes())))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.error("rollout state %s unreadable, ignored: %s", p, exc)
        return out


def public(ro: Rollout) -> dict[str, Any]:
    """The rollout as the admin API answers it."""
    return replace(ro).to_json()
