"""Smoke test of load_tests/bench_overhead.py: it starts its whole stack, measures every scenario (REST and gRPC,
each direct and through the gateway, with --auth the fast ones through a gateway with client authentication, with
--pyreqwest the REST ones through a gateway calling its backends with pyreqwest)
and cleans up; and of load_tests/bench_auth.py.

No timing thresholds: speed targets are not unit tests. This only checks that every path is measured, that
each one served requests, and that none of them answered an error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH = REPO_ROOT / "load_tests" / "bench_overhead.py"
REST_SCENARIOS = {"fast_tf_predict", "fast_v2_translate", "tfserving_affine", "torchserve_scale", "fastapi_vs_raw"}
GRPC_SCENARIOS = {"grpc_fast_tf_predict", "grpc_fast_v2_translate", "grpc_tfserving_affine", "grpc_torchserve_scale"}


@pytest.mark.timeout(300)
def test_bench_overhead_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--auth", "--pyreqwest", "--json", str(out), "--workdir",
         str(tmp_path / "work")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=270,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    doc = json.loads(out.read_text())

    scenarios = {s["key"]: s for s in doc["scenarios"]}
    assert set(scenarios) == REST_SCENARIOS | GRPC_SCENARIOS
    for key, scenario in scenarios.items():
        assert not scenario["skipped"], f"{key}: {scenario['skipped']}"
        assert scenario["protocol"] == ("grpc" if key in GRPC_SCENARIOS else "rest"), key
        measurements = scenario["measurements"]
        roles = {m["role"] for m in measurements}
        assert roles == {"direct", "gateway"}, f"{key}: measured {roles}"
        assert {m["concurrency"] for m in measurements} == {doc["meta"]["connections"]}, key
        for m in measurements:
            if key in GRPC_SCENARIOS:
                assert m["url"].startswith("grpc://"), f"{key}: {m['url']}"
            where = f"{key} / {m['target']} c={m['concurrency']}"
            assert m["requests"] > 0 and m["rps"] > 0, f"{where}: no requests served"
            assert m["non_2xx"] == 0, f"{where}: {m['non_2xx']} non-2xx answers"
            assert sum(m["errors"].values()) == 0, f"{where}: errors {m['errors']}"
            if m["role"] == "gateway":
                assert m["ratio_rps"] is not None and m["ratio_rps"] > 0, where
                assert m["gateway_cpu_us_per_req"] is not None, where
    authenticated = {(m["scenario"], m["target"].rsplit(" + ", 1)[1]) for s in doc["scenarios"]
                     for m in s["measurements"] if m["target"].endswith((" + API key", " + JWT"))}
    assert authenticated == {(key, what) for key in ("fast_tf_predict", "fast_v2_translate", "grpc_fast_tf_predict")
                             for what in ("API key", "JWT")}, authenticated
    pyreqwest = {m["scenario"] for s in doc["scenarios"] for m in s["measurements"]
                 if m["target"].endswith(" [pyreqwest]")}
    assert pyreqwest == REST_SCENARIOS - {"fastapi_vs_raw"}, pyreqwest
    assert doc["gateway"]["rss_kb_after_warmup"] > 0
    assert doc["gateway"]["rss_kb_end"] > 0
    # Every process group the benchmark started is gone.
    assert set(doc["process_groups"]) == {"gateway", "gateway_auth", "gateway_pyreqwest", "fast", "fast_grpc",
                                          "torchserve", "tfserving", "raw_proxy", "raw_pyreqwest_proxy",
                                          "fastapi_proxy", "nginx"}  # nginx: scripts/bootstrap installs it
    reference = {m["target"] for m in scenarios["fastapi_vs_raw"]["measurements"]}
    assert {"nginx (1 worker, keep-alive upstream)", "raw ASGI + pyreqwest", "raw ASGI + aiohttp",
            "FastAPI route + aiohttp", "gateway /v1 (pass-through)"} <= reference, reference
    for name, pgid in doc["process_groups"].items():
        assert not _live_members(pgid), f"{name}: process group {pgid} still has live processes"
    assert not _alive(doc["meta"]["grpc_load_generator_pid"]), "the gRPC load generator is still running"


def _alive(pid: int) -> bool:
    """True while a (non-zombie) process has this pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def _live_members(pgid: int) -> list[int]:
    """Pids of the non-zombie processes in a process group."""
    live = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            live.append(int(entry.name))
    return live


def test_bench_auth_runs(tmp_path: Path) -> None:
    out = tmp_path / "auth.json"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "load_tests" / "bench_auth.py"), "--seconds", "0.05",
                           "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {r["case"]: r["us_per_call"] for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 11 and all(us > 0 for us in rows.values()), rows
