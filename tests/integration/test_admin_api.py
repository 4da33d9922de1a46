"""The admin API against the real gateway process: its own port and token, compare-and-swap writes of the routes
file, invalid routes refused while the old table keeps serving, the instant switch, nothing of it on the public
port, `gateway routes ...` end to end, no admin port without a token, one admin listener for several workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.dev import localstack
from gateway.routes import writer

from .stack import Gateway

X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
POLL_S = 0.2  # GATEWAY_ROUTES_POLL_S of the gateway fixture


@pytest.fixture()
def admin(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.admin_url, timeout=30,
                      headers={"authorization": f"Bearer {gateway.admin_token}"}) as c:
        yield c


@pytest.fixture()
def restore_routes(gateway: Gateway) -> Iterator[None]:
    """Put the fixture's routes back (with a higher revision) after a test that changed them."""
    original = yaml.safe_load(gateway.routes_file.read_text())
    yield
    _, revision = writer.read(gateway.routes_file)
    restored = writer.apply(gateway.routes_file, original, revision)
    with httpx.Client(base_url=gateway.admin_url, timeout=10,
                      headers={"authorization": f"Bearer {gateway.admin_token}"}) as admin:  # applied, then on
        assert wait_until(lambda: admin.get("/routes").json()["applied_revision"] == restored) is not None


def routes(admin: httpx.Client) -> dict:  # type: ignore[type-arg]
    r = admin.get("/routes")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def served_version(client: httpx.Client, model: str) -> str:
    r = client.post(f"/v2/models/{model}/infer", json=X3)
    assert r.status_code == 200, r.text
    return r.headers["x-model-version"]


def wait_until(check, timeout: float = 10.0, interval: float = 0.01) -> float | None:  # type: ignore[no-untyped-def]
    """Seconds until check() was true, or None after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(interval)
    return None


def test_every_endpoint_but_healthz_needs_the_token(gateway: Gateway) -> None:
    token = gateway.admin_token
    with httpx.Client(base_url=gateway.admin_url, timeout=10) as anon:
        assert anon.get("/healthz").json() == {"status": "ok"}
        before = gateway.routes_file.read_bytes()
        for auth in (None, "Bearer wrong", f"Bearer {token[:-1]}", f"Bearer {token}x", f"Basic {token}", token,
                     "Bearer"):
            headers = {} if auth is None else {"authorization": auth}
            for method, path, body in (("GET", "/routes", None), ("PUT", "/routes", "revision: 1"),
                                       ("POST", "/models/scale/default", '{"version": "1", "revision": 1}')):
                r = anon.request(method, path, headers={**headers, "if-match": "1"}, content=body)
                assert r.status_code == 401, (auth, method, path, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "admin token" in r.json()["error"]
        assert gateway.routes_file.read_bytes() == before
        # The public token scheme does not matter; only this one: the right token opens it.
        assert anon.get("/routes", headers={"authorization": f"Bearer {token}"}).status_code == 200
        assert anon.get("/routes", headers={"authorization": f"bearer {token}"}).status_code == 200


def test_get_routes_is_the_file_and_its_revision(gateway: Gateway, admin: httpx.Client) -> None:
    got = routes(admin)
    text = gateway.routes_file.read_text()
    assert got["text"] == text
    assert got["revision"] == yaml.safe_load(text).get("revision", 0) == got["applied_revision"]
    assert got["path"] == str(gateway.routes_file.resolve())
    assert admin.get("/routes").headers["etag"] == f'"{writer.etag(text, got["revision"])}"' == f'"{got["etag"]}"'
    assert admin.get("/v2/health/live").status_code == 404  # the public API is not on the admin port
    assert admin.delete("/routes").status_code == 405


def test_put_routes_compare_and_swap(gateway: Gateway, admin: httpx.Client, client: httpx.Client,
                                     restore_routes: None) -> None:
    got = routes(admin)
    text, rev = got["text"], got["revision"]
    changed = text + "# changed through the admin API\n"
    missing = admin.put("/routes", content=changed)
    assert missing.status_code == 428 and "If-Match" in missing.json()["error"]
    assert admin.put("/routes", content=changed, headers={"if-match": "soon"}).status_code == 400
    stale = admin.put("/routes", content=changed, headers={"if-match": str(rev + 7)})
    assert stale.status_code == 409, stale.text
    assert stale.json()["revision"] == rev and f"the routes are at revision {rev}" in stale.json()["error"]
    assert gateway.routes_file.read_text() == text  # nothing written

    ok = admin.put("/routes", content=changed, headers={"if-match": f'"{rev}"'})
    assert ok.status_code == 200, ok.text
    written = gateway.routes_file.read_text()
    new_tag = writer.etag(written, rev + 1)
    assert ok.json() == {"revision": rev + 1, "etag": new_tag, "applied_revision": rev + 1}  # applied at once
    assert ok.headers["etag"] == f'"{new_tag}"'
    assert written.endswith("# changed through the admin API\n") and writer.read(gateway.routes_file)[1] == rev + 1
    # The writer that read the old revision loses now.
    again = admin.put("/routes", content=changed, headers={"if-match": str(rev)})
    assert again.status_code == 409 and again.json()["revision"] == rev + 1
    # JSON works too.
    as_json = admin.put("/routes", json=yaml.safe_load(written), headers={"if-match": str(rev + 1)})
    assert as_json.status_code == 200 and as_json.json()["revision"] == rev + 2
    assert routes(admin)["applied_revision"] == rev + 2
    assert served_version(client, "scale") == "2"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r["models"]["scale"].__setitem__("default_version", 9),
     "models.scale.default_version: version 9 is not listed under versions"),
    (lambda r: r["models"]["scale"]["versions"][1].__setitem__("backend", "nowhere"),
     "models.scale.versions.1.backend: unknown backend 'nowhere'"),
    (lambda r: r["backends"]["torchserve"].__setitem__("url", "ftp://x"), "backends.torchserve.url"),
])
def test_invalid_routes_are_refused_and_the_old_table_keeps_serving(  # type: ignore[no-untyped-def]
        gateway: Gateway, admin: httpx.Client, client: httpx.Client, edit, message) -> None:
    got = routes(admin)
    before = gateway.routes_file.read_bytes()
    raw = yaml.safe_load(got["text"])
    edit(raw)
    r = admin.put("/routes", content=yaml.safe_dump(raw), headers={"if-match": str(got["revision"])})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"] and str(gateway.routes_file.resolve()) in r.json()["error"]
    bad_yaml = admin.put("/routes", content="models: [unclosed", headers={"if-match": str(got["revision"])})
    assert bad_yaml.status_code == 400 and "not valid YAML" in bad_yaml.json()["error"]
    assert gateway.routes_file.read_bytes() == before
    assert routes(admin)["applied_revision"] == got["revision"]
    assert served_version(client, "scale") == "2"


def test_set_default_switches_at_once(gateway: Gateway, admin: httpx.Client, client: httpx.Client,
                                      restore_routes: None) -> None:
    rev = routes(admin)["revision"]
    assert served_version(client, "switch_affine") == "1"
    r = admin.post("/models/switch_affine/default", json={"version": "2", "revision": rev})
    assert r.status_code == 200, r.text
    assert r.json() == {"model": "switch_affine", "default_version": "2", "revision": rev + 1,
                        "etag": writer.etag(gateway.routes_file.read_text(), rev + 1), "applied_revision": rev + 1}
    # The process that took the call applied it before answering: the next request is served by version 2.
    assert served_version(client, "switch_affine") == "2"
    # Refusals: each leaves the file as it is.
    before = gateway.routes_file.read_bytes()
    cases = [
        ("switch_affine", {"version": "1", "revision": rev}, 409, "expected revision"),
        ("switch_affine", {"version": "7", "revision": rev + 1}, 400, "version 7 is not listed under versions"),
        ("nope", {"version": "1", "revision": rev + 1}, 404, "'nope' is not defined"),
        ("mlp_ab", {"version": "1", "revision": rev + 1}, 400, "has an experiment"),
        ("switch_affine", {"version": "1"}, 400, "revision"),
        ("switch_affine", {"version": True, "revision": rev + 1}, 400, "version: must be"),
    ]
    for model, body, status, message in cases:
        refused = admin.post(f"/models/{model}/default", json=body)
        assert refused.status_code == status and message in refused.json()["error"], (model, body, refused.text)
    assert admin.post("/models/switch_affine/default", content=b"not json").status_code == 400
    assert gateway.routes_file.read_bytes() == before


def test_a_write_by_another_process_is_applied_within_the_poll_interval(gateway: Gateway, admin: httpx.Client,
                                                                        client: httpx.Client,
                                                                        restore_routes: None) -> None:
    """A write the admin endpoint did not see (another worker, or the writer used directly) reaches this worker
    through the file watcher."""
    _, rev = writer.read(gateway.routes_file)
    assert served_version(client, "switch_affine") == "1"
    writer.set_default_version(gateway.routes_file, "switch_affine", "2", rev)
    took = wait_until(lambda: served_version(client, "switch_affine") == "2", timeout=10)
    assert took is not None and took < POLL_S + 1.0, took
    assert routes(admin)["applied_revision"] == rev + 1
    print(f"file write -> first version-2 answer: {took * 1000:.0f} ms (poll interval {POLL_S * 1000:.0f} ms)")


@pytest.mark.parametrize(("method", "path", "allow"), [("DELETE", "/routes", "GET, PUT"),
                                                       ("PATCH", "/rollouts", "GET, POST"),
                                                       ("PUT", "/models/scale/default", "POST")])
def test_a_wrong_method_is_405_naming_every_method_of_the_path(admin: httpx.Client, method: str, path: str,
                                                              allow: str) -> None:
    """Found by schemathesis: Allow named the first matching route's methods only (GET /routes, not PUT)."""
    r = admin.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert f"{method} not allowed on {path}" in r.json()["error"]


def test_the_document_says_what_refusals_look_like(admin: httpx.Client) -> None:
    """Every 4xx documented is the ErrorBody the API sends: no FastAPI 422 (invalid input is a 400 here)."""
    doc = admin.get("/openapi.json").json()
    refusals = [(path, status, answer) for path, item in doc["paths"].items() for op in item.values()
                for status, answer in op["responses"].items() if status.startswith("4")]
    assert refusals and "HTTPValidationError" not in doc["components"]["schemas"]
    for path, status, answer in refusals:
        assert status != "422", path
        assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, path
    assert admin.post("/models/scale/default", json={"version": 1}).status_code == 400


def test_admin_paths_are_not_on_the_public_port(gateway: Gateway, client: httpx.Client) -> None:
    before = gateway.routes_file.read_bytes()
    auth = {"authorization": f"Bearer {gateway.admin_token}", "if-match": "1"}
    for method, path in (("GET", "/routes"), ("PUT", "/routes"), ("POST", "/models/scale/default"),
                         ("GET", "/healthz")):
        r = client.request(method, path, headers=auth, content=b'{"version": "1", "revision": 1}')
        assert r.status_code == 404, (method, path, r.status_code)
    assert gateway.routes_file.read_bytes() == before


# --- the CLI -------------------------------------------------------------------------------------------------

def cli(gateway: Gateway, *args: str, token: str | None = None, url: str | None = None, command: str = "routes"
        ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_ADMIN_URL": url or gateway.admin_url,
           "GATEWAY_ADMIN_TOKEN": gateway.admin_token if token is None else token}
    env.pop("GATEWAY_ADMIN_TOKEN_FILE", None)
    return subprocess.run([sys.executable, "-m", "gateway", command, *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=Path(__file__).resolve().parents[2])


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_cli_rollout_start_status_abort(gateway: Gateway, client: httpx.Client, tmp_path: Path,
                                        restore_routes: None) -> None:
    warm = tmp_path / "warm.json"
    warm.write_text(json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}))
    bad = cli(gateway, "start", "switch_affine", "2", "--warmup-count", "2", command="rollout")
    assert bad.returncode == 1 and "--warmup-count needs --warmup FILE" in bad.stderr, bad.stderr
    started = cli(gateway, "start", "switch_affine", "2", "--steps", "50,100", "--dwell", "60", "--min-requests",
                  "100000", "--warmup", str(warm), "--warmup-count", "2", "--why", "cli test", command="rollout")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["warmup"] and "switch_affine: running" in started.stderr
    assert wait_for(lambda: json.loads(cli(gateway, "status", "switch_affine", command="rollout").stdout)
                    ["percent"] == 50)
    again = cli(gateway, "start", "switch_affine", "2", command="rollout")
    assert again.returncode == 1 and "refused (409)" in again.stderr, again.stderr
    assert "already has a running rollout" in again.stderr, again.stderr
    aborted = cli(gateway, "abort", "switch_affine", "--why", "cli test over", command="rollout")
    assert aborted.returncode == 0, aborted.stderr
    done = json.loads(aborted.stdout)
    assert done["state"] == "aborted" and done["history"][-1]["why"] == "cli test over", done["history"][-1]
    assert [h["event"] for h in done["history"]][:4] == ["started", "warming_up", "warmed_up", "step"]
    assert served_version(client, "switch_affine") == "1"
    twice = cli(gateway, "abort", "switch_affine", command="rollout")
    assert twice.returncode == 1 and "aborted already" in twice.stderr, twice.stderr


def test_cli_show_apply_set_default(gateway: Gateway, client: httpx.Client, tmp_path: Path,
                                    restore_routes: None) -> None:
    shown = cli(gateway, "show")
    assert shown.returncode == 0, shown.stderr
    _, rev = writer.read(gateway.routes_file)
    assert shown.stdout == gateway.routes_file.read_text()
    etag = writer.etag(shown.stdout, rev)
    assert f"revision {rev}, etag {etag}" in shown.stderr

    # The lost edit: someone edits the file by hand (revision kept) after `show`; an apply based on what `show`
    # printed is refused (exit 3) and the hand edit stays.
    by_hand = shown.stdout + "# edited by hand, revision kept\n"
    gateway.routes_file.write_text(by_hand)
    stale = tmp_path / "stale.yaml"
    stale.write_text(shown.stdout + "# based on the stale read\n")
    refused = cli(gateway, "apply", str(stale), "--etag", etag)
    assert refused.returncode == 3, refused.stderr
    assert "changed since they were read" in refused.stderr and gateway.routes_file.read_text() == by_hand
    assert cli(gateway, "set-default", "switch_affine", "2", "--etag", etag).returncode == 3
    shown = cli(gateway, "show")
    assert shown.stdout == by_hand

    edited = tmp_path / "routes.yaml"
    edited.write_text(shown.stdout + "# applied by the CLI test\n")
    applied = cli(gateway, "apply", str(edited))
    assert applied.returncode == 0, applied.stderr
    assert f"revision {rev} -> {rev + 1}" in applied.stdout
    assert gateway.routes_file.read_text().endswith("# applied by the CLI test\n")

    switched = cli(gateway, "set-default", "switch_affine", "2")
    assert switched.returncode == 0, switched.stderr
    assert f"switch_affine: default version 2 (revision {rev + 1} -> {rev + 2})" in switched.stdout
    assert served_version(client, "switch_affine") == "2"
    back = cli(gateway, "set-default", "switch_affine", "1", "--revision", str(rev + 2))
    assert back.returncode == 0, back.stderr
    assert served_version(client, "switch_affine") == "1"

    token_file = tmp_path / "admin.token"
    token_file.write_text(gateway.admin_token + "\n")
    by_file = cli(gateway, "--token-file", str(token_file), "show", token="")
    assert by_file.returncode == 0, by_file.stderr


def test_cli_errors_are_clear(gateway: Gateway, tmp_path: Path) -> None:
    before = gateway.routes_file.read_bytes()
    _, rev = writer.read(gateway.routes_file)
    wrong = cli(gateway, "show", token="not-the-token")
    assert wrong.returncode == 1 and "refused the token (401 Unauthorized)" in wrong.stderr, wrong.stderr
    conflict = cli(gateway, "set-default", "switch_affine", "2", "--revision", str(rev + 5))
    assert conflict.returncode == 3, conflict.stderr
    assert "revision conflict, nothing was written" in conflict.stderr and f"at revision {rev}" in conflict.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(gateway.routes_file.read_text().replace("kind: torchserve", "kind: triton", 1))
    invalid = cli(gateway, "apply", str(bad))
    assert invalid.returncode == 1 and "refused, nothing was written" in invalid.stderr, invalid.stderr
    assert "'triton' is not one of tfserving, torchserve" in invalid.stderr
    unknown = cli(gateway, "set-default", "nope", "1")
    assert unknown.returncode == 1 and "'nope' is not defined" in unknown.stderr
    down = cli(gateway, "show", url=f"http://127.0.0.1:{localstack.free_port()}")
    assert down.returncode == 1 and "cannot reach the admin API" in down.stderr, down.stderr
    no_token = cli(gateway, "show", token="")
    assert no_token.returncode == 1 and "no admin token" in no_token.stderr
    assert gateway.routes_file.read_bytes() == before


# --- startup rules: no token, no port; one listener for several workers ---------------------------------------

def _start(tmp_path: Path, gateway: Gateway, env: dict[str, str]) -> tuple[localstack.ManagedProcess, str]:
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(gateway.routes_file.read_text())
    clean = {k: "" for k in ("GATEWAY_ADMIN_TOKEN", "GATEWAY_ADMIN_TOKEN_FILE")}
    return localstack.start_gateway(tmp_path / "gw", routes_file, env={**clean, **env})


def _admin_reachable(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.TransportError:
        return False
    return True


def test_no_admin_port_without_a_token(gateway: Gateway, tmp_path: Path) -> None:
    port = localstack.free_port()
    proc, url = _start(tmp_path, gateway, {"GATEWAY_ADMIN_PORT": str(port)})
    try:
        assert httpx.get(f"{url}/v2/health/live", timeout=10).status_code == 200  # the gateway serves
        assert not _admin_reachable(port)
        log = proc.log_path.read_text()
        assert "admin API not started: neither GATEWAY_ADMIN_TOKEN nor GATEWAY_ADMIN_TOKEN_FILE is set" in log
    finally:
        proc.stop()


def _listeners(port: int) -> int:
    """Listening TCP sockets on this port (one per process that bound it; SO_REUSEPORT would show several)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    count += 1
    return count


def test_one_of_several_workers_serves_the_admin_port(gateway: Gateway, tmp_path: Path) -> None:
    port = localstack.free_port()
    token_file = tmp_path / "admin.token"
    token_file.write_text("a-token-in-a-file\n")
    proc, url = _start(tmp_path, gateway, {"GATEWAY_ADMIN_PORT": str(port), "GATEWAY_WORKERS": "3",
                                           "GATEWAY_ADMIN_TOKEN_FILE": str(token_file)})
    try:
        assert wait_until(lambda: proc.log_path.read_text().count("Application startup complete") == 3,
                          timeout=60, interval=0.2) is not None, proc.log_tail()
        assert _listeners(port) == 1  # three workers started; one of them listens on the admin port
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                          headers={"authorization": "Bearer a-token-in-a-file"}) as admin:
            got = routes(admin)
            r = admin.post("/models/switch_affine/default", json={"version": "2", "revision": got["revision"]})
            assert r.status_code == 200, r.text
        # Every worker (whichever answers) reaches version 2 through its own file watcher.
        with httpx.Client(base_url=url, timeout=10) as public:
            assert wait_until(lambda: all(served_version(public, "switch_affine") == "2" for _ in range(30)),
                              timeout=10) is not None
        log = proc.log_path.read_text()
        assert "Traceback" not in log and "admin API not started" not in log, log
    finally:
        proc.stop()
