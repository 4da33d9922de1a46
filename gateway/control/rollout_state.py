"""A rollout's state (steps, guards, phase, history of every transition) and where it is kept between restarts."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import orjson

from gateway.control.guards import Guards
from gateway.routes.store import Documents, FileDocuments, rollouts_dir

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


class RolloutStates:
    """Rollout states kept by the route store (gateway/routes/store.py ``rollouts``): files next to the routes
    file, or keys in etcd; one JSON document per model."""

    def __init__(self, documents: Documents) -> None:
        self.documents = documents

    async def save(self, rollout: Rollout) -> None:
        await self.documents.put(rollout.model, orjson.dumps(rollout.to_json(), option=orjson.OPT_INDENT_2))

    async def load(self, model: str) -> Rollout | None:
        data = await self.documents.get(model)
        return None if data is None else Rollout.from_json(orjson.loads(data))

    async def load_all(self) -> list[Rollout]:
        out = []
        for name, data in await self.documents.every():
            try:
                out.append(Rollout.from_json(orjson.loads(data)))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("rollout state %s unreadable, ignored: %s", name, exc)
        return out


class StateStore:
    """``<routes file>.rollouts/<model>.json``, written atomically: the file store's rollout states, read and
    written synchronously (tools and tests; the orchestrator goes through :class:`RolloutStates`)."""

    def __init__(self, routes_path: Path) -> None:
        self.files = FileDocuments(rollouts_dir(routes_path))
        self.dir = self.files.dir

    def path(self, model: str) -> Path:
        return self.files.path(model)

    def save(self, rollout: Rollout) -> None:
        self.files.put_now(rollout.model, orjson.dumps(rollout.to_json(), option=orjson.OPT_INDENT_2))

    def load(self, model: str) -> Rollout | None:
        data = self.files.get_now(model)
        return None if data is None else Rollout.from_json(orjson.loads(data))

    def load_all(self) -> list[Rollout]:
        out = []
        for name, data in self.files.every_now():
            try:
                out.append(Rollout.from_json(orjson.loads(data)))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("rollout state %s unreadable, ignored: %s", name, exc)
        return out


def public(ro: Rollout) -> dict[str, Any]:
    """The rollout as the admin API answers it."""
    return replace(ro).to_json()
