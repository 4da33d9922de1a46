"""The observability artifacts as the tests read them: dashboards' panel queries with Grafana's variables filled
in, alert rules, promtool. Shared by the offline checks here and the live one against a real Prometheus."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO_ROOT / "deploy" / "grafana" / "dashboards"
RULES = REPO_ROOT / "deploy" / "prometheus" / "rules"
RULE_TESTS = REPO_ROOT / "deploy" / "prometheus" / "tests"
PROVISIONING = REPO_ROOT / "deploy" / "grafana" / "provisioning"
GENERATOR = REPO_ROOT / "deploy" / "grafana" / "dashboards.py"
SCHEMA_TOOL = REPO_ROOT / "tools" / "grafana-schema"

# Grafana's built-in variables as a dashboard over the last hour would fill them; every template variable as
# "All" (the dashboards' default, allValue ".*").
BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
ALL = ".*"


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str  # as written in the dashboard
    gpu: bool

    @property
    def promql(self) -> str:
        """The query as Grafana sends it with every variable at "All"."""
        text = self.expr
        for name, value in BUILTINS.items():
            text = text.replace(name, value)
        return re.sub(r"\$\{?(\w+)\}?", ALL, text)

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}"


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())


def queries() -> list[Query]:
    """Every panel's and annotation's query of every dashboard."""
    out = []
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", ()):
                gpu = "GPU" in panel["title"]
                out.append(Query(name, panel["title"], target["refId"], target["expr"], gpu))
        for annotation in dashboard["annotations"]["list"]:
            if "target" in annotation:
                out.append(Query(name, f"annotation {annotation['name']}", "Anno", annotation["target"]["expr"],
                                 False))
    return out


def variable_queries() -> list[tuple[str, str, str]]:
    """(dashboard, variable, PromQL): each query variable's label_values(selector, label) as `group by (label)`."""
    out = []
    for name, dashboard in dashboards().items():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
            assert match, f"{name}: variable {variable['name']}: {variable['query']!r} is not label_values(m, l)"
            selector = re.sub(r"\$\{?(\w+)\}?", ALL, match.group(1))
            out.append((name, variable["name"], f"group by ({match.group(2)}) ({selector})"))
    return out


def alerts() -> list[dict[str, Any]]:
    out = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(rule for rule in group["rules"] if "alert" in rule)
    return out


def promtool() -> str | None:
    return shutil.which("promtool")
