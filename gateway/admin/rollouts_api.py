"""Admin endpoints of canary rollouts (gateway/control/orchestrator.py): start, inspect, end by hand."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends

from gateway.admin.models import ErrorBody, RolloutList, RolloutView
from gateway.admin.state import AdminState, State, require_token
from gateway.control.orchestrator import Orchestrator
from gateway.control.rollout_spec import EndSpec, RolloutSpec
from gateway.control.rollout_state import Rollout, public
from gateway.errors import ControlUnavailable

router = APIRouter(prefix="/rollouts", tags=["rollouts"], dependencies=[Depends(require_token)])
REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why} for status, why in (
        (400, "invalid spec, or the target's backend cannot deploy or retire"),
        (401, "missing or wrong admin token"),
        (404, "no such model or rollout"),
        (409, "a rollout runs already, the model runs an experiment, or the rollout has ended"),
        (413, "body too large"),
        (503, "rollouts are not available in this process, or the routes could not be written now"))}


def _orchestrator(state: AdminState) -> Orchestrator:
    if state.rollouts is None:
        raise ControlUnavailable("rollouts are not available in this process (no metrics to guard them with)")
    return state.rollouts


def _view(ro: Rollout) -> RolloutView:
    return RolloutView.model_validate(public(ro))


@router.post("", response_model=RolloutView, responses=REFUSALS,
             summary="Start a canary rollout (optionally deploy, warm up, and retire the old version)")
async def start(spec: RolloutSpec, state: State) -> RolloutView:
    return _view(await _orchestrator(state).start(spec, spec.who or "admin-api"))


@router.get("", response_model=RolloutList, responses=REFUSALS, summary="Every known rollout")
async def every(state: State) -> RolloutList:
    return RolloutList(rollouts=[_view(r) for r in _orchestrator(state).rollouts.values()])


@router.get("/{model}", response_model=RolloutView, responses=REFUSALS,
            summary="One rollout: its step, observed figures and every transition")
async def one(model: str, state: State) -> RolloutView:
    return _view(_orchestrator(state).get(model))


@router.post("/{model}/{action}", response_model=RolloutView, responses=REFUSALS,
             summary="End a running rollout by hand: promote, roll back, or abort")
async def end(model: str, action: Literal["promote", "rollback", "abort"],
              state: State, spec: Annotated[EndSpec | None, Body()] = None) -> RolloutView:
    spec = spec or EndSpec()
    orchestrator = _orchestrator(state)
    ended = {"promote": orchestrator.promote, "rollback": orchestrator.rollback, "abort": orchestrator.abort}
    return _view(await ended[action](model, spec.who or "admin-api", spec.why))
