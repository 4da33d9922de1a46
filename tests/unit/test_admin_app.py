"""The admin app in-process (httpx's ASGI transport, no listener): auth, the routes endpoints with their
compare-and-swap, the rollout endpoints' validation, the one error format, the body limit and the OpenAPI
document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.admin.app import MAX_BODY_BYTES, AdminApp
from gateway.control.orchestrator import Orchestrator
from gateway.routes import writer
from gateway.routes.store import FileRouteStore

TOKEN = "s3cret-admin-token"
ROUTES = """\
# the comment stays
revision: 3
backends:
  ts: {kind: torchserve, url: "http://127.0.0.1:9", management_url: "http://127.0.0.1:9"}
models:
  scale:
    default_version: 1
    versions:
      1: {backend: ts, model: scale, version: "1"}
      2: {backend: ts, model: scale, version: "2"}
"""


@pytest.fixture()
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    return path


@pytest.fixture()
async def admin(routes: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = FileRouteStore(routes)
    orchestrator = Orchestrator(routes, lambda: "", store.reload, check_interval_s=0.05)
    app = AdminApp(store, TOKEN.encode(), rollouts=orchestrator)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin",
                                 headers={"authorization": f"Bearer {TOKEN}"}) as client:
        yield client
    await orchestrator.close()


async def test_only_healthz_and_the_docs_open_without_the_token(admin: httpx.AsyncClient) -> None:
    for auth in ("", "Bearer wrong", f"Basic {TOKEN}", TOKEN):
        r = await admin.get("/routes", headers={"authorization": auth})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
        assert r.json() == {"error": "missing or wrong admin token (Authorization: Bearer <token>)"}
        assert TOKEN not in r.text
    anon = {"authorization": ""}
    assert (await admin.get("/healthz", headers=anon)).json() == {"status": "ok"}
    doc = (await admin.get("/openapi.json", headers=anon)).json()
    assert {"/routes", "/models/{model}/default", "/rollouts", "/rollouts/{model}", "/rollouts/{model}/{action}",
            "/healthz"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert (await admin.get("/docs", headers=anon)).status_code == 200


async def test_routes_read_and_compare_and_swap(admin: httpx.AsyncClient, routes: Path) -> None:
    got = await admin.get("/routes")
    tag = writer.etag(ROUTES, 3)
    assert got.status_code == 200 and got.headers["etag"] == f'"{tag}"' and got.headers["cache-control"] == "no-store"
    assert got.json() == {"revision": 3, "etag": tag, "applied_revision": 3, "path": str(routes), "text": ROUTES}
    changed = ROUTES.replace("default_version: 1", "default_version: 2")
    assert (await admin.put("/routes", content=changed)).status_code == 428
    assert (await admin.put("/routes", content=changed, headers={"if-match": "x"})).status_code == 400
    assert (await admin.put("/routes", content=changed, headers={"if-match": '"3-zz"'})).status_code == 400
    stale = await admin.put("/routes", content=changed, headers={"if-match": '"2"'})
    assert stale.status_code == 409 and stale.json()["revision"] == 3, stale.text
    ok = await admin.put("/routes", content=changed, headers={"if-match": f'"{tag}"'})
    written = routes.read_text()
    assert ok.status_code == 200 and ok.json() == {"revision": 4, "etag": writer.etag(written, 4),
                                                   "applied_revision": 4}
    assert ok.headers["etag"] == f'"{writer.etag(written, 4)}"' and "# the comment stays" in written
    plain = await admin.post("/models/scale/default", json={"version": 1, "revision": 4})  # the number only
    assert plain.json() == {"model": "scale", "default_version": "1", "revision": 5,
                            "etag": writer.etag(routes.read_text(), 5), "applied_revision": 5}
    assert yaml.safe_load(routes.read_text())["models"]["scale"]["default_version"] == 1


async def test_a_hand_edit_that_keeps_the_revision_is_never_overwritten(admin: httpx.AsyncClient,
                                                                        routes: Path) -> None:
    """The lost edit: read (ETag), someone edits the file by hand keeping `revision: 3`, the stale write -> 409."""
    read = (await admin.get("/routes")).json()
    by_hand = ROUTES.replace("# the comment stays", "# the comment stays\n# edited by hand, revision kept")
    routes.write_text(by_hand)
    stale = await admin.put("/routes", content=read["text"].replace("default_version: 1", "default_version: 2"),
                            headers={"if-match": f'"{read["etag"]}"'})
    assert stale.status_code == 409 and stale.json()["revision"] == 3, stale.text
    assert "changed since they were read (still revision 3" in stale.json()["error"]
    switch = await admin.post("/models/scale/default", json={"version": 2, "revision": 3, "etag": read["etag"]})
    assert switch.status_code == 409, switch.text
    mismatched = await admin.post("/models/scale/default", json={"version": 2, "revision": 2, "etag": read["etag"]})
    assert mismatched.status_code == 400 and "is not of revision 2" in mismatched.json()["error"]
    assert routes.read_text() == by_hand
    fresh = (await admin.get("/routes")).json()  # re-read: the write goes through, the hand edit kept
    ok = await admin.post("/models/scale/default", json={"version": 2, "revision": 3, "etag": fresh["etag"]})
    assert ok.status_code == 200 and "# edited by hand, revision kept" in routes.read_text()


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/models/nope/default", {"version": "1", "revision": 3}, 404, "'nope' is not defined"),
    ("/models/scale/default", {"version": "7", "revision": 3}, 400, "version 7 is not listed"),
    ("/models/scale/default", {"version": True, "revision": 3}, 400, "version: must be a string or an integer"),
    ("/models/scale/default", {"version": "2"}, 400, "revision: Field required"),
    ("/models/scale/default", {"version": "2", "revision": -1}, 400, "revision: Input should be greater than"),
    ("/models/scale/default", {"version": "2", "revision": 3, "colour": 1}, 400, "colour: Extra inputs"),
    ("/rollouts", {"model": "scale"}, 400, "to_version: Field required"),
    ("/rollouts", {"model": "scale", "to_version": 2, "steps": [50, 10]}, 400, "steps: must increase strictly"),
    ("/rollouts", {"model": "scale", "to_version": 2, "dwell_s": "60"}, 400, "dwell_s: Input should be a valid"),
    ("/rollouts", {"model": "scale", "to_version": 2, "retire": "yes"}, 400, "retire: Input should be a valid"),
    ("/rollouts", {"model": "scale", "to_version": 0}, 400, "to_version: must be a positive integer version"),
    ("/rollouts", {"model": "nope", "to_version": 2}, 404, "'nope' is not defined"),
    ("/rollouts", {"model": "scale", "to_version": 2, "deploy": {"archive": "../../etc/passwd"}}, 400,
     "without '..'"),
    ("/rollouts/scale/promote", {}, 404, "no rollout for model 'scale'"),
    ("/rollouts/scale/explode", {}, 400, "action: Input should be 'promote', 'rollback' or 'abort'"),
])
async def test_refusals_are_one_error_format(admin: httpx.AsyncClient, routes: Path, path: str, body: object,
                                             status: int, message: str) -> None:
    before = routes.read_bytes()
    r = await admin.post(path, json=body)
    assert r.status_code == status and message in r.json()["error"], (r.status_code, r.text)
    assert set(r.json()) == {"error"} and routes.read_bytes() == before


async def test_unknown_paths_methods_and_bodies(admin: httpx.AsyncClient) -> None:
    missing = await admin.get("/v2/health/live")
    assert missing.status_code == 404 and "no admin endpoint at GET /v2/health/live" in missing.json()["error"]
    wrong = await admin.delete("/routes")
    assert wrong.status_code == 405 and "PUT" in wrong.headers["allow"] and "error" in wrong.json()
    assert (await admin.post("/models/scale/default", content=b"not json",
                             headers={"content-type": "application/json"})).status_code == 400
    big = await admin.put("/routes", content=b"x" * (MAX_BODY_BYTES + 1), headers={"if-match": "3"})
    assert big.status_code == 413 and big.json() == {"error": f"body over {MAX_BODY_BYTES} bytes"}


async def test_a_rollout_starts_and_is_listed(admin: httpx.AsyncClient, routes: Path) -> None:
    started = await admin.post("/rollouts", json={"model": "scale", "to_version": 2, "steps": [10], "dwell_s": 60,
                                                  "who": "carol"})
    assert started.status_code == 200, started.text
    view = started.json()
    assert (view["state"], view["from_version"], view["to_version"], view["steps"]) == ("running", "1", "2",
                                                                                         [10.0, 100.0])
    assert view["history"][0]["who"] == "carol"
    listed = (await admin.get("/rollouts")).json()["rollouts"]
    assert [r["model"] for r in listed] == ["scale"]
    again = await admin.post("/rollouts", json={"model": "scale", "to_version": 2})
    assert again.status_code == 409 and "already has a running rollout" in again.json()["error"]
    aborted = await admin.post("/rollouts/scale/abort", json={"why": "test over"})
    assert aborted.status_code == 200 and aborted.json()["state"] == "aborted"
    assert yaml.safe_load(routes.read_text())["models"]["scale"]["default_version"] == 1
