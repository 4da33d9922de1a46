"""Schemathesis (the real tool, its CLI) against both OpenAPI documents of real gateway processes in front of real
TorchServe and TF Serving: every operation, generated cases inside and outside the schema (examples, coverage and
fuzzing phases), and every check but positive_data_acceptance (a body the schema allows can still name the wrong
input or shape). Nothing may answer a 5xx but what the stack answers on purpose (tests/schemathesis_hooks.py: 503
from models whose backend is down, 501 for :classify/:regress on models TF Serving does not serve), nor anything
outside the documented statuses, content types and schemas.

The public document runs against the session's gateway; the admin document against a gateway of its own (its own
routes file, backends without management URLs), so that the routes and rollouts it writes touch no other test.

Cases: at most PUBLIC_EXAMPLES (admin: ADMIN_EXAMPLES) per operation in the fuzzing phase, plus the examples and
coverage phases' own; GATEWAY_SCHEMATHESIS_EXAMPLES sets both, for a longer run by hand.
"""

from __future__ import annotations

import collections
import json
import os
import re
import resource
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.api import openapi
from gateway.dev import localstack
from gateway.dev.devstack import EXAMPLE_ROUTES

from .stack import Gateway

REPO = Path(__file__).resolve().parents[2]
PUBLIC_EXAMPLES = int(os.environ.get("GATEWAY_SCHEMATHESIS_EXAMPLES", "50"))  # ~2,900 requests over 33 operations
ADMIN_EXAMPLES = int(os.environ.get("GATEWAY_SCHEMATHESIS_EXAMPLES", "100"))  # ~800 requests over 8
# Models the generated paths name: every backend kind and transport, an experiment, a model refusing overrides, and
# two whose backend is down or does not load them (their 503 is expected). Cases outside the schema name others.
PUBLIC_MODELS = ("scale", "affine", "multi", "mlp_torch", "scale_grpc", "affine_grpc", "mlp_ab", "mlp_locked",
                 "ghost", "unloaded")
DOWN_MODELS = ("ghost", "unloaded")
# Operations no generated case can get a 2xx from: TF Serving's answer to a path without a model, and :classify /
# :regress, as no model of the stack has a classification or regression signature.
NEVER_2XX = {"GET /v1/models", *(f"POST /v1/models/{{tf_model_name}}{form}:{verb}" for verb in ("classify", "regress")
                                  for form in ("", "/versions/{version}", "/labels/{label}"))}


def schemathesis(url: str, workdir: Path, examples: int, models: tuple[str, ...], down: tuple[str, ...] = (),
                 headers: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One `schemathesis run` with the project's schemathesis.toml; its JSON report and the requests it sent."""
    workdir.mkdir(parents=True, exist_ok=True)  # the CLI's cache goes here, not into the repository
    env = {**os.environ, "PYTHONPATH": str(REPO), "GATEWAY_ST_MODELS": ",".join(models),
           "GATEWAY_ST_DOWN_MODELS": ",".join(down)}
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(REPO / "schemathesis.toml"), "--no-color",
           "run", url, "--max-examples", str(examples), "--seed", "1", "--report", "json,har",
           "--report-json-path", str(workdir / "report.json"), "--report-har-path", str(workdir / "requests.har"),
           *(arg for header in headers for arg in ("-H", header))]
    cpu = _children_cpu_s()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=1400)
    print(proc.stdout[-3000:])
    print(f"schemathesis itself: {_children_cpu_s() - cpu:.0f} s of CPU")
    assert proc.returncode == 0, f"schemathesis failed (exit {proc.returncode}):\n{proc.stdout[-20000:]}\n{proc.stderr}"
    report = json.loads((workdir / "report.json").read_text())
    entries = json.loads((workdir / "requests.har").read_text())["log"]["entries"]
    return report, entries


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def by_operation(document: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, collections.Counter[int]]:
    """Statuses per documented operation ("GET /v2/models/{model_name}"), from the requests sent."""
    operations = [(method.upper(), path, re.compile("^" + re.sub(r"\\{\w+\\}", "[^/]+", re.escape(path)) + "$"))
                  for path, item in document["paths"].items() for method in item]
    seen: dict[str, collections.Counter[int]] = {f"{m} {p}": collections.Counter() for m, p, _ in operations}
    for entry in entries:
        method, target = entry["request"]["method"], httpx.URL(entry["request"]["url"]).path
        for m, p, pattern in operations:
            if m == method and pattern.match(target):
                seen[f"{m} {p}"][entry["response"]["status"]] += 1
                break
    return seen


def without_2xx(seen: dict[str, collections.Counter[int]]) -> set[str]:
    return {op for op, statuses in seen.items() if not any(200 <= s < 300 for s in statuses)}


def summary(seen: dict[str, collections.Counter[int]]) -> str:
    return "\n".join(f"  {sum(c.values()):5}  {op}  {dict(sorted(c.items()))}" for op, c in seen.items())


def check_report(report: dict[str, Any], document: dict[str, Any], seen: dict[str, collections.Counter[int]],
                 untested: frozenset[str] = frozenset()) -> None:
    """Every operation tested (but ``untested``), nothing failed; an operation that takes input got 20 cases at
    least (one without any has few to generate)."""
    assert report["complete"] and report["exit_code"] == 0, report
    assert report["operations"]["tested"] == len(seen) - len(untested), report["operations"]
    assert report["failures"] == [] and report["errors"] == [], report
    for path, item in document["paths"].items():
        for method, op in item.items():
            name = f"{method.upper()} {path}"
            takes_input = op.get("parameters") or "requestBody" in op
            assert name in untested or sum(seen[name].values()) >= (20 if takes_input else 1), summary(seen)


@pytest.mark.timeout(1500)  # ~1.5 min on an idle 2-core machine; much more when it is shared
def test_public_document(gateway: Gateway, tmp_path: Path) -> None:
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    assert document == json.loads(json.dumps(openapi.build()))  # what the gateway serves is what the tests read
    report, entries = schemathesis(f"{gateway.url}/openapi.json", tmp_path / "public", PUBLIC_EXAMPLES, PUBLIC_MODELS,
                                   DOWN_MODELS)
    seen = by_operation(document, entries)
    print(f"{report['test_cases']['generated']} cases, {len(entries)} requests in {report['running_time']:.0f} s:\n"
          + summary(seen))
    check_report(report, document, seen, untested=frozenset({"GET /openapi.json"}))  # the CLI read it, and skips it
    # Generated cases reach the real backends: every operation but those that cannot answer 2xx got one.
    assert without_2xx(seen) == NEVER_2XX | {"GET /openapi.json"}, summary(seen)


# --- the admin document, against a gateway of its own ------------------------------------------------------------

@pytest.fixture(scope="module")
def admin_gateway(tmp_path_factory: pytest.TempPathFactory, gateway: Gateway) -> Iterator[tuple[str, str]]:
    """Its own routes file: the session's backends for inference, none of their management APIs (a generated
    rollout cannot deploy or retire anything), so what schemathesis writes stays here."""
    workdir = tmp_path_factory.mktemp("admin-gateway")
    shared = yaml.safe_load(gateway.routes_file.read_text())
    examples = yaml.safe_load(EXAMPLE_ROUTES.read_text())
    backends = {name: {k: v for k, v in shared["backends"][name].items()
                       if k in ("kind", "url", "token_file", "timeout_s")} for name in ("tfserving", "torchserve")}
    routes = {"revision": 1, "backends": backends,
              "models": {name: examples["models"][name] for name in ("scale", "affine")}}
    routes_file = workdir / "routes.yaml"
    routes_file.write_text(yaml.safe_dump(routes))
    admin_port, token = localstack.free_port(), secrets.token_urlsafe(24)
    proc, _ = localstack.start_gateway(workdir / "gateway", routes_file, env={
        "GATEWAY_GRPC_PORT": "0", "GATEWAY_ADMIN_PORT": str(admin_port), "GATEWAY_ADMIN_TOKEN": token,
        "GATEWAY_ROUTES_POLL_S": "0.2"})
    try:
        yield f"http://127.0.0.1:{admin_port}", token
    finally:
        proc.stop()


@pytest.mark.timeout(900)
def test_admin_document(admin_gateway: tuple[str, str], tmp_path: Path) -> None:
    url, token = admin_gateway
    auth = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=30, headers=auth) as admin:
        document = admin.get("/openapi.json").json()
        # A running rollout, so that the operations on one reach it (a long dwell: it moves no further by itself).
        started = admin.post("/rollouts", json={"model": "scale", "to_version": "1", "steps": [50], "dwell_s": 3600})
        assert started.status_code == 200, started.text
    report, entries = schemathesis(f"{url}/openapi.json", tmp_path / "admin", ADMIN_EXAMPLES,
                                   ("scale", "affine", "nope"), headers=(f"Authorization: Bearer {token}",))
    seen = by_operation(document, entries)
    print(f"{report['test_cases']['generated']} cases, {len(entries)} requests in {report['running_time']:.0f} s:\n"
          + summary(seen))
    check_report(report, document, seen)
    # Writes need the current revision and a valid document, which generated cases do not hit.
    assert without_2xx(seen) == {"PUT /routes", "POST /models/{model}/default"}, summary(seen)
    assert all(401 in statuses for op, statuses in seen.items() if op != "GET /healthz"), summary(seen)
