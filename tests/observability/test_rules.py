"""Recording rules and alerts (deploy/prometheus/rules/): promtool accepts them, every alert carries what an
on-call needs and has a runbook section, and promtool's unit tests (deploy/prometheus/tests/) pass with a firing
and a not-firing case for every alert."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from tests.observability.artifacts import REPO_ROOT, RULE_TESTS, RULES, alerts, promtool

PROMTOOL = promtool()
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (scripts/bootstrap installs "
                                    "Debian's prometheus package)")
RECORDING_NAME = re.compile(r"^[a-z_]+:[a-zA-Z0-9_]+:[a-z0-9_]+$")  # level:metric:operations


def run_promtool(*args: str) -> str:
    assert PROMTOOL is not None
    proc = subprocess.run([PROMTOOL, *args], cwd=RULE_TESTS, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    # promtool has exited 0 on a failing test run: its output is checked too.
    assert proc.returncode == 0 and "FAILED" not in output, output
    return output


@needs_promtool
def test_promtool_accepts_every_rules_file() -> None:
    files = sorted(RULES.glob("*.yml"))
    assert files
    output = run_promtool("check", "rules", *map(str, files))
    assert output.count("SUCCESS") == len(files), output


@needs_promtool
@pytest.mark.parametrize("test_file", sorted(p.name for p in RULE_TESTS.glob("*.test.yml")))
def test_promtool_unit_tests_pass(test_file: str) -> None:
    assert "SUCCESS" in run_promtool("test", "rules", test_file)


def test_every_rules_file_is_under_test() -> None:
    tested = {(RULE_TESTS / f).resolve() for p in RULE_TESTS.glob("*.test.yml")
              for f in yaml.safe_load(p.read_text())["rule_files"]}
    assert tested == {p.resolve() for p in RULES.glob("*.yml")}


def test_recording_rules_are_named_level_metric_operations() -> None:
    for path in RULES.glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    assert RECORDING_NAME.match(rule["record"]), f"{path.name}: {rule['record']}"


def test_every_alert_has_severity_summary_description_and_an_existing_runbook_section() -> None:
    rules = alerts()
    assert len({r["alert"] for r in rules}) >= 10
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        doc, _, anchor = annotations["runbook_url"].partition("#")
        assert anchor == name.lower(), f"{name}: runbook anchor {anchor!r}"
        assert anchor in _anchors(REPO_ROOT / doc), f"{name}: no section #{anchor} in {doc}"


def test_every_alert_has_a_firing_and_a_not_firing_case() -> None:
    cases: dict[str, set[bool]] = defaultdict(set)
    for path in RULE_TESTS.glob("*.test.yml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", ()):
                cases[case["alertname"]].add(bool(case.get("exp_alerts")))
    for name in {r["alert"] for r in alerts()}:
        assert cases[name] == {True, False}, f"{name}: firing/not-firing cases {sorted(cases[name])}"


def test_the_slo_alerts_use_the_multiwindow_burn_rates() -> None:
    """Windows, factors and `for` of the reference (kubernetes-mixin / SRE workbook), for both SLOs."""
    expected = {("1h", "5m", "14.4", "2m", "critical"), ("6h", "30m", "6", "15m", "critical"),
                ("1d", "2h", "3", "1h", "warning"), ("3d", "6h", "1", "3h", "warning")}
    for name in ("GatewayErrorBudgetBurn", "GatewayLatencyBudgetBurn"):
        found = set()
        for rule in (r for r in alerts() if r["alert"] == name):
            long_, short = rule["labels"]["long"], rule["labels"]["short"]
            factors = set(re.findall(r"> \(([\d.]+) \* [\d.]+\)", rule["expr"]))
            windows = set(re.findall(r"ratio_rate(\w+)", rule["expr"]))
            assert windows == {long_, short} and len(factors) == 1, rule
            found.add((long_, short, factors.pop(), rule["for"], rule["labels"]["severity"]))
        assert found == expected, name


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for a markdown file's headings."""
    out = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out
