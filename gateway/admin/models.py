"""The admin API's request and response bodies (pydantic): its validation and its OpenAPI schema in one place.
The rollout request bodies are the control plane's own spec (gateway/control/rollout_spec.py)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class ErrorBody(BaseModel):
    """Every refusal: the reason, for a person. A revision conflict also carries the current revision."""

    error: str
    revision: int | None = Field(None, description="the current revision (409 revision conflicts only)")


class Health(BaseModel):
    status: str = "ok"


class RoutesDocument(BaseModel):
    """GET /routes: the document as stored, its revision and its ETag (also the ETag header)."""

    revision: int = Field(description="the stored document's revision")
    etag: str = Field(description="<revision>-<digest of the text>: send it back as If-Match (PUT /routes) or "
                                  "`etag` (set-default) so that a write also checks the content you read")
    applied_revision: int = Field(description="the revision this process serves")
    path: str = Field(description="where the document is stored")
    text: str = Field(description="the document (YAML), comments included")


class Replicas(BaseModel):
    """GET /replicas: what every live serving process reports (etcd: its lease-bound key)."""

    store: str = Field(description="where the routes live")
    revision: int = Field(description="the revision this process serves")
    written_at: float | None = Field(description="when the routes were last written (epoch seconds)")
    leader: dict[str, Any] | None = Field(description="the replica that drives the rollouts (etcd store), or null")
    replicas: list[dict[str, Any]] = Field(description="id, applied_revision, applied_at, inflight "
                                                       "{backend/model/version: n}, admin_url (its admin worker)")


class Written(BaseModel):
    revision: int = Field(description="the new revision")
    etag: str | None = Field(None, description="the new document's ETag (null when another write came since)")
    applied_revision: int = Field(description="the revision this process serves now (the new one)")


def _version(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a string or an integer, got {value!r}")
    text = str(value).strip()
    return str(int(text)) if text.isascii() and text.isdigit() else text  # as the routes parser reads it: "02" is 2


class SetDefault(BaseModel):
    """POST /models/{model}/default: the instant switch."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Annotated[str, BeforeValidator(_version)] = Field(description="a version listed under the model")
    revision: int = Field(ge=0, description="the revision you read (compare-and-swap)")
    etag: str | None = Field(None, description="the ETag you read (GET /routes): the content is checked too, so a "
                                               "hand edit since your read answers 409")


class DefaultSet(Written):
    model: str
    default_version: str


class RolloutView(BaseModel):
    """A rollout's state and every transition (who, what, when, why)."""

    model: str
    from_version: str
    to_version: str
    steps: list[float]
    dwell_s: float
    guards: dict[str, Any]
    sticky_header: str | None
    state: str = Field(description="running | promoted | rolled_back | aborted | failed")
    step_index: int = Field(description="the last applied step (-1: none)")
    percent: float = Field(description="the canary share in the routes now")
    routes_revision: int | None
    reason: str = Field(description="why it ended")
    started_at: float
    updated_at: float
    history: list[dict[str, Any]]
    deploy: dict[str, Any] | None
    warmup: list[dict[str, Any]]
    retire: bool
    phase: str = Field(description="deploying | warming_up | canary | retiring | retired | retire_failed | "
                                   "retire_skipped")


class RolloutList(BaseModel):
    rollouts: list[RolloutView]
