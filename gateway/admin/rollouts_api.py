"""Admin endpoints of canary rollouts (gateway/control/orchestrator.py): start, inspect, end by hand.

With the etcd store exactly one replica (the elected leader) drives the rollouts. Any replica answers reads from
the shared state; a write (start, promote, rollback, abort) that reaches another replica is validated there, then
forwarded to the leader's admin API with the same token, and the leader's answer is returned as it is. When no
replica leads (an election within GATEWAY_ETCD_LEASE_TTL_S of the leader's death) or the leader cannot be reached,
the answer is 503 naming the leader: retry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Body, Depends, Request, Response

from gateway.admin.models import ErrorBody, RolloutList, RolloutView
from gateway.admin.state import AdminState, State, require_token
from gateway.control.orchestrator import Orchestrator
from gateway.control.rollout_spec import EndSpec, RolloutSpec
from gateway.control.rollout_state import Rollout, public
from gateway.errors import ControlUnavailable, StoreUnavailable
from gateway.etcd.client import EtcdUnavailable

router = APIRouter(prefix="/rollouts", tags=["rollouts"], dependencies=[Depends(require_token)])
REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why} for status, why in (
        (400, "invalid spec, or the target's backend cannot deploy or retire"),
        (401, "missing or wrong admin token"),
        (404, "no such model or rollout"),
        (409, "a rollout runs already, the model runs an experiment, or the rollout has ended"),
        (413, "body too large"),
        (503, "rollouts are not available in this process, the routes could not be written now, or no replica "
              "leads the rollouts right now (etcd store)"))}
FORWARDED = "x-gateway-forwarded-by"
FORWARD_TIMEOUT_S = 30.0


async def _forwarded(request: Request, state: AdminState) -> Response | None:
    """The leader's answer when another replica leads the rollouts; None when this one acts."""
    election = state.election
    if election is None or election.leading:
        return None
    if request.headers.get(FORWARDED):
        raise ControlUnavailable(f"forwarded by {request.headers[FORWARDED]} to a replica that does not lead the "
                                 "rollouts (the leadership moved meanwhile); retry")
    try:
        leader = await election.leader()
    except EtcdUnavailable as exc:
        raise StoreUnavailable(f"cannot tell which replica leads the rollouts: {exc}") from exc
    if leader is None or not leader.get("admin_url"):
        raise ControlUnavailable("no replica leads the rollouts right now (an election is under way, within "
                                 "GATEWAY_ETCD_LEASE_TTL_S of the last leader's end); retry")
    url = f"{leader['admin_url']}{request.url.path}"
    headers = {k: v for k, v in request.headers.items() if k in ("authorization", "content-type")}
    try:
        async with httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S) as client:
            answer = await client.request(request.method, url, content=await request.body(),
                                          headers={**headers, FORWARDED: election.presence.id})
    except httpx.HTTPError as exc:
        raise ControlUnavailable(f"the rollout leader {leader.get('id')} at {leader['admin_url']} cannot be "
                                 f"reached ({type(exc).__name__}); retry") from exc
    return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"),
                    headers={"x-gateway-rollout-leader": str(leader.get("id"))})


def _orchestrator(state: AdminState) -> Orchestrator:
    if state.rollouts is None:
        raise ControlUnavailable("rollouts are not available in this process (no metrics to guard them with)")
    return state.rollouts


def _view(ro: Rollout) -> RolloutView:
    return RolloutView.model_validate(public(ro))


@router.post("", response_model=RolloutView, responses=REFUSALS,
             summary="Start a canary rollout (optionally deploy, warm up, and retire the old version)")
async def start(spec: RolloutSpec, state: State, request: Request) -> RolloutView | Response:
    orchestrator = _orchestrator(state)
    return await _forwarded(request, state) or _view(await orchestrator.start(spec, spec.who or "admin-api"))


@router.get("", response_model=RolloutList, responses=REFUSALS, summary="Every known rollout")
async def every(state: State) -> RolloutList:
    return RolloutList(rollouts=[_view(r) for r in await _orchestrator(state).every()])


@router.get("/{model}", response_model=RolloutView, responses=REFUSALS,
            summary="One rollout: its step, observed figures and every transition")
async def one(model: str, state: State) -> RolloutView:
    return _view(await _orchestrator(state).get(model))


@router.post("/{model}/{action}", response_model=RolloutView, responses=REFUSALS,
             summary="End a running rollout by hand: promote, roll back, or abort")
async def end(model: str, action: Literal["promote", "rollback", "abort"], state: State, request: Request,
              spec: Annotated[EndSpec | None, Body()] = None) -> RolloutView | Response:
    spec = spec or EndSpec()
    orchestrator = _orchestrator(state)
    forwarded = await _forwarded(request, state)
    if forwarded is not None:
        return forwarded
    ended = {"promote": orchestrator.promote, "rollback": orchestrator.rollback, "abort": orchestrator.abort}
    return _view(await ended[action](model, spec.who or "admin-api", spec.why))
