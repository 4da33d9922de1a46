"""What the admin endpoints work on: the route store, the rollouts and the token, shared through the app's state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from gateway.admin.auth import BearerToken
from gateway.routes.store import RouteStore

if TYPE_CHECKING:
    from gateway.control.orchestrator import Orchestrator


@dataclass(frozen=True)
class AdminState:
    store: RouteStore
    token: BearerToken
    rollouts: Orchestrator | None


def admin_state(request: Request) -> AdminState:
    state: AdminState = request.app.state.admin
    return state


State = Annotated[AdminState, Depends(admin_state)]
