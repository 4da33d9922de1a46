"""Admin endpoints of the routes: read the document, replace it, switch a model's default version.

Every change is validated by the routes parser (400 with its message; nothing written), compare-and-swap on the
revision and the content read (409 with the current revision), written atomically under a lock, and applied by
this process before the answer; every other worker applies it within GATEWAY_ROUTES_POLL_S.

The ETag is ``"<revision>-<digest of the text>"`` (gateway/routes/writer.py): quoted back in If-Match (or as
``etag`` in a set-default body) it makes the write check the content too, so a hand edit that kept ``revision:``
answers 409 instead of being overwritten. A plain revision number is still accepted and checks the number only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Request, Response

from gateway.admin.models import DefaultSet, ErrorBody, Replicas, RoutesDocument, SetDefault, Written
from gateway.admin.state import State, require_token
from gateway.errors import ControlUnavailable, InvalidChange, StoreUnavailable
from gateway.etcd.client import EtcdUnavailable
from gateway.routes import writer
from gateway.routes.store import RouteStore

router = APIRouter(tags=["routes"], dependencies=[Depends(require_token)])
REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why} for status, why in (
        (400, "invalid: the routes parser's message, nothing written"),
        (401, "missing or wrong admin token"),
        (404, "no such model"),
        (409, "revision conflict: someone wrote the routes meanwhile, or edited them by hand (re-read, apply "
              "again)"),
        (413, "body too large"),
        (503, "another writer held the routes' lock too long, or the store (etcd) cannot be reached"))}


@router.get("/routes", response_model=RoutesDocument, responses=REFUSALS,
            summary="The routes document, its revision, its ETag (revision and content) and the revision this "
                    "process serves")
async def get_routes(response: Response, state: State) -> RoutesDocument:
    text, revision = await state.store.read()
    tag = writer.etag(text, revision)
    response.headers["etag"] = f'"{tag}"'
    return RoutesDocument(revision=revision, etag=tag, applied_revision=state.store.current.revision,
                          path=state.store.location, text=text)


@router.get("/replicas", response_model=Replicas, responses=REFUSALS,
            summary="Every live serving process: the routes revision it applied, its calls in flight per target; "
                    "and which replica leads the rollouts (etcd store)")
async def replicas(state: State) -> Replicas:
    if state.fleet is None:
        raise ControlUnavailable("no replica view in this process")
    try:
        every = await state.fleet.replicas()
        leader = await state.election.leader() if state.election is not None else None
    except EtcdUnavailable as exc:
        raise StoreUnavailable(f"cannot read the replicas from {state.store.location}: {exc}") from exc
    return Replicas(store=state.store.location, revision=state.store.current.revision,
                    written_at=await state.store.written_at(), leader=leader, replicas=every)


_ROUTES_BODY = {"requestBody": {"required": True, "content": {
    "application/yaml": {"schema": {"type": "string", "description": "the routes document (YAML)"}},
    "application/json": {"schema": {"type": "object", "description": "the routes document as JSON"}}}}}


@router.put("/routes", response_model=Written, openapi_extra=_ROUTES_BODY,
            responses={**REFUSALS, 428: {"model": ErrorBody, "description": "If-Match is missing"}},
            summary="Replace the routes (compare-and-swap on If-Match: the ETag you read)")
async def put_routes(request: Request, response: Response, state: State,
                     if_match: Annotated[str | None, Header()] = None) -> Written:
    if if_match is None:
        raise PreconditionRequired("If-Match: <ETag> is required (the ETag you read with GET /routes)")
    expected, digest = parse_etag(if_match, "If-Match")
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    routes: str | Mapping[str, Any]
    try:
        if content_type == "application/json" or content_type.endswith("+json"):
            routes = orjson.loads(body)
        else:
            routes = body.decode("utf-8")
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidChange(f"unreadable body: {exc}") from None
    revision = await state.store.replace(routes, expected, digest)
    return Written(revision=revision, etag=await _written_etag(state.store, revision, response),
                   applied_revision=state.store.current.revision)


@router.post("/models/{model}/default", response_model=DefaultSet, responses=REFUSALS,
             summary="The instant switch: every new request for the model goes to this version")
async def set_default(model: str, spec: SetDefault, response: Response,
                      state: State) -> DefaultSet:
    expected, digest = spec.revision, None
    if spec.etag is not None:
        expected, digest = parse_etag(spec.etag, "etag")
        if expected != spec.revision:
            raise InvalidChange(f"etag {spec.etag!r} is not of revision {spec.revision}")
    revision = await state.store.set_default(model, spec.version, expected, digest)
    return DefaultSet(model=model, default_version=spec.version, revision=revision,
                      etag=await _written_etag(state.store, revision, response),
                      applied_revision=state.store.current.revision)


async def _written_etag(store: RouteStore, revision: int, response: Response) -> str | None:
    """The ETag of what a write stored: re-read (the store rewrote ``revision:``), sent when it is still that
    revision (a later write's would mislead; None then, and a stale one only ever earns a 409)."""
    try:
        text, now = await store.read()
    except Exception:  # the write is done; its answer must not fail over an informational header
        return None
    if now != revision:
        return None
    tag = writer.etag(text, revision)
    response.headers["etag"] = f'"{tag}"'
    return tag


class PreconditionRequired(InvalidChange):
    http_status = 428


def parse_etag(value: str, what: str) -> tuple[int, str | None]:
    """``"<revision>-<digest>"`` (GET /routes' ETag: revision and content checked) or a plain ``<revision>``
    (the number only), quoted or not, weak or not."""
    text = value.strip().removeprefix("W/").strip('"')
    number, sep, digest = text.partition("-")
    if sep and not (len(digest) == 16 and all(c in "0123456789abcdef" for c in digest)):
        raise InvalidChange(f"{what} must be the ETag of GET /routes (\"<revision>-<digest>\") or a revision number, "
                            f"got {value[:80]!r}")
    return revision_number(number, what), digest or None


def revision_number(value: Any, what: str) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidChange(f"{what} must be a revision number (an integer >= 0), got {value!r}")
    return value
