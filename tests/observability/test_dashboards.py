"""Grafana dashboards (deploy/grafana/dashboards/): generated from deploy/grafana/dashboards.py and committed
(no drift), valid against Grafana's own schema (@grafana/schema + tsc), every query parsed by promtool, unique
panel ids, every panel on the provisioned data source and saying what is missing when it has no data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.observability.artifacts import (
    GENERATOR,
    PROVISIONING,
    REPO_ROOT,
    SCHEMA_TOOL,
    dashboards,
    panels,
    promtool,
    queries,
    variable_queries,
)

EXPECTED = {"gateway-overview.json", "gateway-experiments.json", "gateway-rollouts.json", "gateway-backends.json"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_the_committed_json_is_what_the_generator_writes() -> None:
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert set(dashboards()) == EXPECTED


def test_panel_ids_are_unique_and_every_panel_has_a_place() -> None:
    for name, dashboard in dashboards().items():
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels(dashboard):
            pos = panel["gridPos"]
            assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, f"{name}: {panel['title']}"


def test_every_query_uses_the_datasource_variable_and_every_panel_says_no_data() -> None:
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == DATASOURCE, f"{name}: {panel['title']}"
            assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), f"{name}: {panel['title']}"
            no_value = panel["fieldConfig"]["defaults"].get("noValue", "")
            assert no_value.startswith(("No data", "No ")), f"{name}: {panel['title']}: noValue {no_value!r}"
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert {"datasource", "namespace", "job", "model"} <= variables.keys(), name
        assert variables["datasource"]["query"] == "prometheus"
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"] == DATASOURCE
                assert variable["includeAll"] and variable["allValue"] == ".*", f"{name}: {variable['name']}"


def test_the_default_datasource_is_the_provisioned_one() -> None:
    files = sorted((PROVISIONING / "datasources").glob("*.y*ml")) if PROVISIONING.exists() else []
    if not files:
        pytest.skip("no Grafana provisioning in this tree (deploy/grafana/provisioning/datasources/, issue 9)")
    provisioned = {ds.get("uid") for f in files for ds in yaml.safe_load(f.read_text()).get("datasources", ())
                   if ds.get("type") == "prometheus"}
    for name, dashboard in dashboards().items():
        default = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")["current"]["value"]
        assert default in provisioned, f"{name}: default data source {default!r}, provisioned {provisioned}"


@pytest.mark.skipif(promtool() is None, reason="promtool not installed (scripts/bootstrap installs Debian's "
                    "prometheus package)")
def test_promtool_parses_every_panel_annotation_and_variable_query(tmp_path: Path) -> None:
    exprs = [q.promql for q in queries()] + [expr for _, _, expr in variable_queries()]
    assert len(exprs) > 60
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query_{i}:check", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([promtool() or "promtool", "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "FAILED" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_dashboards_type_check_against_grafanas_schema(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: Grafana's schema (@grafana/schema) is checked with TypeScript")
    tsc = SCHEMA_TOOL / "node_modules" / "typescript" / "bin" / "tsc"
    assert tsc.exists(), "tools/grafana-schema/node_modules missing: run scripts/bootstrap (npm ci there)"
    (tmp_path / "node_modules").symlink_to(SCHEMA_TOOL / "node_modules")
    shutil.copy(SCHEMA_TOOL / "dashboard.ts", tmp_path)
    shutil.copy(SCHEMA_TOOL / "tsconfig.json", tmp_path)
    for name in EXPECTED:
        module = tmp_path / ("check_" + name.removesuffix(".json").replace("-", "_") + ".ts")
        text = (REPO_ROOT / "deploy" / "grafana" / "dashboards" / name).read_text()
        module.write_text(f"import type {{ GatewayDashboard }} from './dashboard';\n"
                          f"export const dashboard: GatewayDashboard = {text};\n")
    proc = subprocess.run([node, str(tsc), "-p", str(tmp_path / "tsconfig.json")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
