"""What the admin endpoints work on (the route store, the rollouts, the token, shared through the app's state), and
the token check every endpoint but /healthz depends on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.admin.auth import REALM, BearerToken
from gateway.errors import Unauthenticated
from gateway.routes.store import RouteStore

if TYPE_CHECKING:
    from gateway.control.fleet import Fleet
    from gateway.control.orchestrator import Orchestrator
    from gateway.etcd.election import Election


@dataclass(frozen=True)
class AdminState:
    store: RouteStore
    token: BearerToken
    rollouts: Orchestrator | None
    fleet: Fleet | None = None  # GET /replicas
    election: Election | None = None  # etcd: who drives the rollouts (the others forward rollout writes there)


def admin_state(request: Request) -> AdminState:
    state: AdminState = request.app.state.admin
    return state


State = Annotated[AdminState, Depends(admin_state)]


_SCHEME = HTTPBearer(auto_error=False, description="the admin token (GATEWAY_ADMIN_TOKEN or GATEWAY_ADMIN_TOKEN_FILE)")


def require_token(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_SCHEME)]) -> None:
    """FastAPI dependency of every admin endpoint but /healthz (and the docs): 401 without the right token."""
    token = admin_state(request).token
    raw = request.headers.get("authorization")
    if not token.accepts(None if raw is None else raw.encode("latin-1")):
        raise Unauthenticated("missing or wrong admin token (Authorization: Bearer <token>)", REALM)
