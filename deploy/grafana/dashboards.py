"""Grafana dashboards as code: writes deploy/grafana/dashboards/*.json (the files Grafana is provisioned with).

    python deploy/grafana/dashboards.py           # rewrite the JSON after editing this file
    python deploy/grafana/dashboards.py --check   # exit 1 when the committed JSON differs (a test runs this)

Four dashboards: the gateway overview, experiments (A/B variants and shadows), rollouts, and the backends (TorchServe
and TF Serving in the same units, GPUs from the DCGM exporter). Every panel queries the data source chosen in the
`datasource` variable (the provisioned Prometheus, uid "prometheus", by default) and says what is missing when it
has no data. Metric names and labels: the README's metrics table; recording rules: deploy/prometheus/rules/.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE_UID = "prometheus"  # the provisioned data source's uid (deploy/grafana/provisioning/)
SCHEMA_VERSION = 39
TAG = "model-gateway"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"

# The gateway's selectors: every variable defaults to All (".*"), which also matches a label that is absent
# (compose has no namespace).
GW = 'namespace=~"$namespace", job=~"$job"'
M = GW + ', model=~"$model"'
MV = M + ', version=~"$version"'
# Server errors: HTTP 5xx and the gRPC codes the canary guards count (gateway/control/rollout.py).
SERVER_ERROR = 'code=~"5..|UNKNOWN|INTERNAL|UNAVAILABLE|DEADLINE_EXCEEDED|DATA_LOSS|UNIMPLEMENTED"'

NO_TRAFFIC = "No data: no inference request in this range (or the gateway is not scraped)"
NO_BACKEND_ERRORS = "No failed backend call in this range"
NO_TS = "No data: TorchServe is not scraped (it needs metrics_mode=prometheus)"
NO_TF = "No data: TF Serving is not scraped (it needs --monitoring_config_file with prometheus_config)"
NO_GPU = "No data: no DCGM exporter is scraped (GPU nodes only)"
NO_RECORDING = "No data: the recording rules of deploy/prometheus/rules/ are not loaded, or no traffic"

Json = dict[str, Any]


def target(expr: str, legend: str = "", *, instant: bool = False, ref: str = "") -> Json:
    out: Json = {"refId": ref, "datasource": DS, "expr": " ".join(expr.split()), "editorMode": "code",
                 "range": not instant, "instant": instant}
    if legend:
        out["legendFormat"] = legend
    if instant:
        out["format"] = "table"
    return out


def _refs(targets: Iterable[Json]) -> list[Json]:
    return [{**t, "refId": t["refId"] or chr(ord("A") + i)} for i, t in enumerate(targets)]


def _thresholds(steps: Iterable[tuple[str, float | None]]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def _dashed(regex: str) -> Json:
    """Lines whose name matches are drawn dashed: configured values and guard thresholds beside observed ones."""
    return {"matcher": {"id": "byRegexp", "options": regex},
            "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                           {"id": "custom.fillOpacity", "value": 0}]}


def timeseries(title: str, description: str, targets: list[Json], *, unit: str, no_value: str = NO_TRAFFIC,
               w: int = 12, h: int = 8, stepped: bool = False, dashed: str = "", max_value: float | None = None,
               threshold_lines: Iterable[tuple[str, float]] = ()) -> Json:
    custom: Json = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                    "spanNulls": False, "lineInterpolation": "stepAfter" if stepped else "linear"}
    defaults: Json = {"unit": unit, "noValue": no_value, "color": {"mode": "palette-classic"}, "custom": custom}
    lines = list(threshold_lines)
    if lines:
        custom["thresholdsStyle"] = {"mode": "line+area"}
        defaults["thresholds"] = _thresholds([("transparent", None), *lines])
    if max_value is not None:
        defaults["max"] = max_value
    overrides = [_dashed(dashed)] if dashed else []
    return {"type": "timeseries", "title": title, "description": description, "datasource": DS,
            "fieldConfig": {"defaults": defaults, "overrides": overrides},
            "options": {"legend": {"showLegend": True, "displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": _refs(targets), "_size": (w, h)}


def stat(title: str, description: str, targets: list[Json], *, unit: str, no_value: str = NO_TRAFFIC,
         w: int = 4, h: int = 4, thresholds: Iterable[tuple[str, float | None]] = (("green", None),),
         decimals: int | None = None) -> Json:
    defaults: Json = {"unit": unit, "noValue": no_value, "color": {"mode": "thresholds"},
                      "thresholds": _thresholds(thresholds)}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {"type": "stat", "title": title, "description": description, "datasource": DS,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "orientation": "auto", "textMode": "value_and_name", "colorMode": "value",
                        "graphMode": "area", "justifyMode": "auto", "wideLayout": True, "showPercentChange": False,
                        "percentChangeColorMode": "standard"},
            "targets": _refs(targets), "_size": (w, h)}


def table(title: str, description: str, targets: list[Json], *, columns: dict[str, str], units: dict[str, str],
          no_value: str = NO_TRAFFIC, w: int = 24, h: int = 8) -> Json:
    """Instant queries joined into one row per label set; ``columns`` renames "Value #A" etc."""
    overrides = [{"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}
                 for name, unit in units.items()]
    return {"type": "table", "title": title, "description": description, "datasource": DS,
            "fieldConfig": {"defaults": {"noValue": no_value}, "overrides": overrides},
            "options": {"showHeader": True, "frameIndex": 0, "cellHeight": "sm"},
            "transformations": [{"id": "merge", "options": {}},
                                {"id": "organize", "options": {"excludeByName": {"Time": True},
                                                               "renameByName": columns}}],
            "targets": _refs(targets), "_size": (w, h)}


def row(title: str) -> Json:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def _layout(panels: list[Json]) -> list[Json]:
    """Left to right, wrapping at 24 columns; a row starts a new line. Ids are the panels' positions."""
    x = y = line_h = 0
    out = []
    for number, panel in enumerate(panels, start=1):
        w, h = panel.pop("_size")
        if panel["type"] == "row" or x + w > 24:
            x, y, line_h = 0, y + line_h, 0
        panel = {"id": number, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **panel}
        out.append(panel)
        x += w
        line_h = max(line_h, h)
        if panel["type"] == "row":
            x, y, line_h = 0, y + h, 0
    return out


def datasource_variable() -> Json:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {"text": "Prometheus", "value": DATASOURCE_UID}, "hide": 0, "refresh": 1, "regex": "",
            "options": []}


def query_variable(name: str, label: str, metric: str, label_name: str) -> Json:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": f"label_values({metric}, {label_name})",
            "includeAll": True, "allValue": ".*", "multi": True, "current": {"text": "All", "value": "$__all"},
            "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": []}


def gateway_variables(model_metric: str = "gateway_requests_total", model_matchers: str = "") -> list[Json]:
    return [datasource_variable(),
            query_variable("namespace", "Namespace", "gateway_routes_revision", "namespace"),
            query_variable("job", "Job", 'gateway_routes_revision{namespace=~"$namespace"}', "job"),
            query_variable("model", "Model", f"{model_metric}{{{GW}{model_matchers}}}", "model"),
            query_variable("version", "Version", f'gateway_requests_total{{{M}}}', "version")]


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Json]
    variables: list[Json] = field(default_factory=gateway_variables)
    annotations: list[Json] = field(default_factory=list)

    def to_json(self) -> Json:
        builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                   "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                   "type": "dashboard"}
        return {
            "uid": self.uid, "title": self.title, "description": self.description, "tags": [TAG],
            "editable": True, "graphTooltip": 1, "schemaVersion": SCHEMA_VERSION, "version": 1,
            "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "timezone": "browser",
            "fiscalYearStartMonth": 0, "liveNow": False,
            "links": [{"title": "Model gateway", "type": "dashboards", "tags": [TAG], "asDropdown": True,
                       "icon": "external link", "includeVars": True, "keepTime": True, "targetBlank": False,
                       "tooltip": "", "url": ""}],
            "annotations": {"list": [builtin, *self.annotations]},
            "templating": {"list": self.variables},
            "panels": _layout([dict(p) for p in self.panels]),
        }


def _sum(by: str) -> str:
    return f"sum by ({by})" if by else "sum"


def _quantiles(metric: str, sel: str, by: str, legend: str, qs: Iterable[float]) -> list[Json]:
    """p50/p99... of a histogram, per ``by`` group ("" for one line)."""
    by_le = f"{by}, le" if by else "le"
    return [target(f"histogram_quantile({q}, sum by ({by_le}) (rate({metric}_bucket{{{sel}}}[{RATE}])))",
                   f"{legend} p{round(q * 100)}") for q in qs]


def _ratio(bad: str, all_: str, by: str) -> str:
    """bad / all per group, 0 (not "no data") for a group with traffic and nothing bad."""
    return (f"({_sum(by)} (rate({bad}[{RATE}])) or 0 * {_sum(by)} (rate({all_}[{RATE}])))"
            f" / {_sum(by)} (rate({all_}[{RATE}]))")


def _mean(metric: str, sel: str, by: str) -> str:
    return (f"{_sum(by)} (rate({metric}_sum{{{sel}}}[{RATE}]))"
            f" / {_sum(by)} (rate({metric}_count{{{sel}}}[{RATE}]))")


# --- gateway overview ----------------------------------------------------------------------------------------------

def overview() -> Dashboard:
    requests = f"gateway_requests_total{{{MV}}}"
    errors = f"gateway_requests_total{{{MV}, {SERVER_ERROR}}}"
    backend_mean = _mean("gateway_backend_request_duration_seconds", MV, "model, version")
    request_mean = _mean("gateway_request_duration_seconds", MV, "model, version")
    # Backend calls of versions that answered requests: a shadow version's calls are not part of any answer.
    primary_backend_mean = f"({backend_mean}) and on (model, version) ({request_mean})"
    panels = [
        row("Now"),
        stat("Requests/s", "Inference requests answered per second (every front, every code).",
             [target(f"sum(rate({requests}[{RATE}]))", "requests/s")], unit="reqps"),
        stat("Server errors", "Share of answers that are server errors (HTTP 5xx, gRPC UNAVAILABLE, INTERNAL, "
             "DEADLINE_EXCEEDED, UNKNOWN, DATA_LOSS, UNIMPLEMENTED).",
             [target(_ratio(errors, requests, ""), "server errors")],
             unit="percentunit", thresholds=(("green", None), ("orange", 0.001), ("red", 0.01)), decimals=2),
        stat("p99 latency", "99th percentile of the time from decoded request to answer.",
             _quantiles("gateway_request_duration_seconds", MV, "", "request", (0.99,)), unit="s",
             thresholds=(("green", None), ("orange", 0.25), ("red", 1.0))),
        stat("Gateway overhead (mean)", "Mean time a request spends in the gateway itself: request time minus "
             "the backend call's time, averaged over the models' versions that answered.",
             [target(f"avg(({request_mean}) - ({primary_backend_mean}))", "overhead")], unit="s"),
        stat("Backend calls in flight", "Calls the gateway is waiting on right now, every worker and target.",
             [target(f"sum(gateway_inflight_requests{{{GW}}})", "in flight")], unit="short",
             no_value="No data: the gateway is not scraped"),
        stat("Routes revision", "The routes revision served: oldest and newest over every worker and replica "
             "(they differ for a moment after a change).",
             [target(f"min(gateway_routes_revision{{{GW}}})", "oldest"),
              target(f"max(gateway_routes_revision{{{GW}}})", "newest")], unit="none",
             no_value="No data: the gateway is not scraped", decimals=0),

        row("Traffic"),
        timeseries("Requests/s by model, version and protocol", "Answered inference requests per second; "
                   "protocol is the front (v2_rest, v2_grpc, tf_rest, tf_grpc, torchserve_rest).",
                   [target(f"sum by (model, version, protocol) (rate({requests}[{RATE}]))",
                           "{{model}} v{{version}} {{protocol}}")], unit="reqps"),
        timeseries("Answers by status code", "HTTP status (REST fronts) or gRPC code (gRPC fronts) per second.",
                   [target(f"sum by (code) (rate({requests}[{RATE}]))", "{{code}}")], unit="reqps"),
        timeseries("Server error ratio by model, version and protocol", "Share of answers that are server "
                   "errors; 0 while there is traffic and no error.",
                   [target(_ratio(errors, requests, "model, version, protocol"),
                           "{{model}} v{{version}} {{protocol}}")], unit="percentunit"),
        timeseries("Requests/s by backend", "Which backend served the answers.",
                   [target(f"sum by (backend) (rate({requests}[{RATE}]))", "{{backend}}")], unit="reqps"),

        row("Latency: gateway and backend"),
        timeseries("Request latency by model", "p50, p95 and p99 of the time from decoded request to answer.",
                   _quantiles("gateway_request_duration_seconds", MV, "model", "{{model}}", (0.5, 0.95, 0.99)),
                   unit="s"),
        timeseries("Gateway overhead vs backend time (mean)", "Mean request time, mean backend call time, and "
                   "their difference: the time spent in the gateway (decode, route, encode, queueing).",
                   [target(request_mean, "{{model}} v{{version}} request"),
                    target(primary_backend_mean, "{{model}} v{{version}} backend"),
                    target(f"({request_mean}) - ({primary_backend_mean})", "{{model}} v{{version}} overhead")],
                   unit="s"),
        timeseries("p99: request vs backend call", "The 99th percentile of the whole request beside that of the "
                   "backend call it made.",
                   [*_quantiles("gateway_request_duration_seconds", MV, "model", "{{model}} request", (0.99,)),
                    *_quantiles("gateway_backend_request_duration_seconds", MV, "model", "{{model}} backend",
                                (0.99,))], unit="s"),
        timeseries("Backend call latency by backend and transport", "p50 and p99 of the gateway's calls to each "
                   "backend (REST or gRPC), shadow calls included.",
                   _quantiles("gateway_backend_request_duration_seconds", MV, "backend, transport",
                              "{{backend}} {{transport}}", (0.5, 0.99)), unit="s"),

        row("Payloads and concurrency"),
        timeseries("Request size", "p50 and p99 of request bodies (bytes on the wire, per front).",
                   _quantiles("gateway_request_size_bytes", M, "model, protocol", "{{model}} {{protocol}}",
                              (0.5, 0.99)), unit="bytes", w=8),
        timeseries("Response size", "p50 and p99 of response bodies (bytes on the wire, per front).",
                   _quantiles("gateway_response_size_bytes", M, "model, protocol", "{{model}} {{protocol}}",
                              (0.5, 0.99)), unit="bytes", w=8),
        timeseries("Backend calls in flight by target", "Per backend target (backend, the model's name and "
                   "version there), summed over the workers.",
                   [target(f"sum by (backend, model, version) (gateway_inflight_requests{{{GW}}})",
                           "{{backend}} {{model}}:{{version}}")], unit="short", w=8,
                   no_value="No data: the gateway is not scraped"),

        row("Backend calls"),
        timeseries("Backend call errors by kind", "Failed backend calls per second: connect (refused, "
                   "unreachable), timeout, or status (the backend answered an error; code is its HTTP status or "
                   "gRPC code).",
                   [target(f"sum by (backend, kind, code) (rate(gateway_backend_errors_total{{{M}}}[{RATE}]))",
                           "{{backend}} {{kind}} {{code}}")], unit="reqps", no_value=NO_BACKEND_ERRORS),
        timeseries("gRPC backend channels", "The gRPC backend channels of every worker per connectivity state: "
                   "READY serves, TRANSIENT_FAILURE retries its connection (REST backends use keep-alive pools).",
                   [target(f"sum by (backend, state) (gateway_backend_channel_state{{{GW}}}) > 0",
                           "{{backend}} {{state}}")], unit="short", stepped=True,
                   no_value="No data: no gRPC backend called yet"),

        row("Routes and processes"),
        timeseries("Routes revision per worker", "The routes revision each worker (pid) of each replica serves: "
                   "one line after a change has spread.",
                   [target(f"gateway_routes_revision{{{GW}}}", "{{instance}} pid {{pid}}")], unit="none",
                   stepped=True, w=8, no_value="No data: the gateway is not scraped"),
        timeseries("Routes reloads", "Routes file reloads per minute by result; 0 on the last-reload line means "
                   "the current file is refused (the previous routes keep serving).",
                   [target(f"sum by (result) (increase(gateway_routes_reloads_total{{{GW}}}[{RATE}]))",
                           "{{result}}"),
                    target(f"min(gateway_routes_last_reload_successful{{{GW}}})", "last reload successful")],
                   unit="short", stepped=True, w=8, no_value="No data: the gateway is not scraped"),
        timeseries("Workers: CPU and memory", "CPU seconds per second per replica, and resident memory per "
                   "worker process.",
                   [target(f"sum by (instance) (rate(process_cpu_seconds_total{{{GW}}}[{RATE}]))",
                           "{{instance}} CPU"),
                    target(f"process_resident_memory_bytes{{{GW}}}", "{{instance}} pid {{pid}} RSS")],
                   unit="short", w=8, no_value="No data: the gateway is not scraped"),

        row("Error budgets (SLO: 99.9% without server error, 99% within 250 ms)"),
        timeseries("Availability budget burn rate", "Server-error share over the budget (0.1%): 1 spends the "
                   "30-day budget in 30 days; the critical alert fires above 14.4 over 1 h and 5 min.",
                   [target(f"job_model:gateway_request_errors_per_requests:ratio_rate1h{{{M}}} / 0.001",
                           "{{model}} 1h"),
                    target(f"job_model:gateway_request_errors_per_requests:ratio_rate6h{{{M}}} / 0.001",
                           "{{model}} 6h")], unit="none", no_value=NO_RECORDING,
                   threshold_lines=(("orange", 6), ("red", 14.4))),
        timeseries("Latency budget burn rate", "Share of answers slower than 250 ms over the budget (1%).",
                   [target(f"job_model:gateway_request_slow_per_requests:ratio_rate1h{{{M}}} / 0.01",
                           "{{model}} 1h"),
                    target(f"job_model:gateway_request_slow_per_requests:ratio_rate6h{{{M}}} / 0.01",
                           "{{model}} 6h")], unit="none", no_value=NO_RECORDING,
                   threshold_lines=(("orange", 6), ("red", 14.4))),
    ]
    return Dashboard("gateway-overview", "Model gateway: overview", "Traffic, errors, latency (the gateway's own "
                     "time apart from the backend's), payloads, backend calls, routes and processes.", panels)


# --- experiments and shadows ---------------------------------------------------------------------------------------

def experiments() -> Dashboard:
    variant = f'{M}, variant!=""'
    requests = f"gateway_requests_total{{{variant}}}"
    errors = f"gateway_requests_total{{{variant}, {SERVER_ERROR}}}"
    share = (f"sum by (model, variant) (rate({requests}[{RATE}])) / ignoring (variant) group_left "
             f"sum by (model) (rate({requests}[{RATE}]))")
    sm = 'namespace=~"$namespace", job=~"$job", model=~"$shadow_model"'
    shadow_by = "model, primary_version, shadow_version"
    shadow_legend = "{{model}} v{{primary_version}} vs v{{shadow_version}}"
    comparisons = f"gateway_shadow_comparisons_total{{{sm}}}"
    panels = [
        row("Traffic split"),
        timeseries("Traffic share per variant vs configured weight", "Observed share of each variant's answers "
                   "(solid) and the weight the routes file gives it (dashed).",
                   [target(share, "{{model}} {{variant}} observed"),
                    target(f"max by (model, variant) (gateway_experiment_weight_ratio{{{M}}})",
                           "{{model}} {{variant}} configured")], unit="percentunit", dashed="/configured/",
                   max_value=1),
        timeseries("Assignments by variant and how", "How requests were assigned: sticky (hashed key), random "
                   "(no key), override (x-model-variant / x-model-version), default.",
                   [target(f"sum by (model, variant, how) (rate(gateway_assignments_total{{{M}}}[{RATE}]))",
                           "{{model}} {{variant}} {{how}}")], unit="reqps"),
        table("Variants side by side", "Per variant over the dashboard's rate interval: traffic, share, server "
              "errors, p95 and p99.",
              [target(f"sum by (model, variant) (rate({requests}[{RATE}]))", instant=True),
               target(share, instant=True),
               target(_ratio(errors, requests, "model, variant"), instant=True),
               *[target(f"histogram_quantile({q}, sum by (model, variant, le) "
                        f"(rate(gateway_request_duration_seconds_bucket{{{variant}}}[{RATE}])))", instant=True)
                 for q in (0.95, 0.99)]],
              columns={"Value #A": "requests/s", "Value #B": "share", "Value #C": "server errors",
                       "Value #D": "p95", "Value #E": "p99"},
              units={"requests/s": "reqps", "share": "percentunit", "server errors": "percentunit", "p95": "s",
                     "p99": "s"}),

        row("Errors and latency per variant"),
        timeseries("Server error ratio per variant", "Share of each variant's answers that are server errors.",
                   [target(_ratio(errors, requests, "model, variant"), "{{model}} {{variant}}")],
                   unit="percentunit"),
        timeseries("p95 and p99 per variant", "Latency of each variant's answers.",
                   _quantiles("gateway_request_duration_seconds", variant, "model, variant",
                              "{{model}} {{variant}}", (0.95, 0.99)), unit="s"),

        row("Shadows"),
        timeseries("Shadow requests by outcome", "Mirrored requests per second: ok, error, timeout, or dropped "
                   "(more in flight than GATEWAY_SHADOW_MAX_PENDING).",
                   [target(f"sum by ({shadow_by}, outcome) (rate(gateway_shadow_requests_total{{{sm}}}[{RATE}]))",
                           shadow_legend + " {{outcome}}")], unit="reqps",
                   no_value="No data: no model has a shadow, or no traffic"),
        timeseries("Dropped shadows", "Share of shadow requests dropped; 0 while shadows run and none is "
                   "dropped.",
                   [target(_ratio(f'gateway_shadow_requests_total{{{sm}, outcome="dropped"}}',
                                  f"gateway_shadow_requests_total{{{sm}}}", shadow_by), shadow_legend)],
                   unit="percentunit", no_value="No data: no model has a shadow, or no traffic"),
        timeseries("Shadow agreement", "Share of compared answers where every element is within tolerance and "
                   "every argmax agrees.",
                   [target(_ratio(f'gateway_shadow_comparisons_total{{{sm}, result="agree"}}', comparisons,
                                  shadow_by), shadow_legend)], unit="percentunit", max_value=1, w=8,
                   no_value="No data: no shadow answer compared"),
        timeseries("Within tolerance (mean)", "Mean fraction of output elements within the shadow's tolerance.",
                   [target(_mean("gateway_shadow_within_tolerance_ratio", sm, shadow_by), shadow_legend)],
                   unit="percentunit", max_value=1, w=8, no_value="No data: no shadow answer compared"),
        timeseries("Argmax agreement (mean)", "Mean fraction of rows whose argmax agrees (classifier outputs "
                   "only: rank 2, more than one column).",
                   [target(_mean("gateway_shadow_argmax_agreement_ratio", sm, shadow_by), shadow_legend)],
                   unit="percentunit", max_value=1, w=8,
                   no_value="No data: no classifier output compared"),
        timeseries("Max |primary - shadow|", "p50 and p99 over requests of the largest absolute difference "
                   "(log scale buckets 1e-9 .. 1e3; a shape mismatch lands above 1e3).",
                   _quantiles("gateway_shadow_max_abs_diff", sm, shadow_by, shadow_legend, (0.5, 0.99)),
                   unit="none", w=24, no_value="No data: no shadow answer compared"),
    ]
    variables = [*gateway_variables(model_matchers=', variant!=""'),
                 query_variable("shadow_model", "Shadowed model", f"gateway_shadow_requests_total{{{GW}}}", "model")]
    return Dashboard("gateway-experiments", "Model gateway: experiments and shadows", "A/B variants against "
                     "their configured weights, side by side; shadow versions against the primary.", panels,
                     variables)


# --- rollouts ------------------------------------------------------------------------------------------------------

def rollouts() -> Dashboard:
    ro = GW + ', model=~"$model"'
    sides = f'{ro}, variant=~"stable|canary"'
    requests = f"gateway_requests_total{{{sides}}}"
    errors = f"gateway_requests_total{{{sides}, {SERVER_ERROR}}}"
    stable_p99 = ("histogram_quantile(0.99, sum by (model, le) (rate(gateway_request_duration_seconds_bucket"
                  f'{{{ro}, variant="stable"}}[{RATE}])))')
    transitions = {"datasource": DS, "enable": True, "hide": False, "iconColor": "orange",
                   "name": "Rollout transitions",
                   "target": {"refId": "Anno", "datasource": DS, "editorMode": "code", "range": True,
                              "instant": False, "expr": "sum by (model, event) (increase("
                              f"gateway_rollout_transitions_total{{{ro}}}[1m])) > 0"},
                   "titleFormat": "{{model}}: {{event}}", "textFormat": "rollout of {{model}}: {{event}}",
                   "tagKeys": "model,event", "useValueForTime": False, "step": "30s"}
    panels = [
        row("Rollout state"),
        timeseries("Canary share: step vs observed", "The step's canary percent (dashed) and the share of the "
                   "model's answers the canary variant actually served; transitions are annotations.",
                   [target(f"max by (model) (gateway_rollout_canary_percent{{{ro}}}) / 100", "{{model}} step"),
                    target(f'sum by (model) (rate(gateway_requests_total{{{ro}, variant="canary"}}[{RATE}])) '
                           f"/ sum by (model) (rate({requests}[{RATE}]))", "{{model}} observed")],
                   unit="percentunit", stepped=True, dashed="/step/", max_value=1, w=16,
                   no_value="No data: no rollout since the gateway started"),
        stat("Rollouts running", "Models with a rollout in progress.",
             [target(f"sum(gateway_rollout_running{{{ro}}})", "running")], unit="none", w=8, h=8,
             no_value="No data: no rollout since the gateway started", decimals=0),

        row("Guards: canary vs stable"),
        timeseries("Server error ratio vs guard", "Canary and stable server-error shares; dashed: the "
                   "rollout's max_error_rate (a breach rolls back).",
                   [target(_ratio(errors, requests, "model, variant"), "{{model}} {{variant}}"),
                    target(f"max by (model) (gateway_rollout_guard_max_error_ratio{{{ro}}})", "{{model}} guard")],
                   unit="percentunit", dashed="/guard/", no_value="No data: no canary traffic in this range"),
        timeseries("p99 vs guard", "Canary and stable p99; dashed: max_p99_s, and the stable p99 times "
                   "max_p99_ratio.",
                   [*_quantiles("gateway_request_duration_seconds", sides, "model, variant",
                                "{{model}} {{variant}}", (0.99,)),
                    target(f"max by (model) (gateway_rollout_guard_max_p99_seconds{{{ro}}})",
                           "{{model}} guard max_p99_s"),
                    target(f"({stable_p99}) * on (model) max by (model) "
                           f"(gateway_rollout_guard_max_p99_ratio{{{ro}}})", "{{model}} guard stable p99 x ratio")],
                   unit="s", dashed="/guard/", no_value="No data: no canary traffic in this range"),

        row("Traffic and drain"),
        timeseries("Requests/s by version", "Answers per version of the model: traffic moving from the old "
                   "version to the new one.",
                   [target(f"sum by (model, version) (rate(gateway_requests_total{{{ro}}}[{RATE}]))",
                           "{{model}} v{{version}}")], unit="reqps", w=8),
        timeseries("Backend calls in flight by target", "Per backend target (its own model name and version), "
                   "every worker: the old version is retired only once this is 0.",
                   [target(f"sum by (backend, model, version) (gateway_inflight_requests{{{GW}}})",
                           "{{backend}} {{model}}:{{version}}")], unit="short", w=8,
                   no_value="No data: the gateway is not scraped"),
        timeseries("Routes revision", "Each step is one routes write: the revision every worker serves.",
                   [target(f"min by (job) (gateway_routes_revision{{{GW}}})", "{{job}} oldest"),
                    target(f"max by (job) (gateway_routes_revision{{{GW}}})", "{{job}} newest")], unit="none",
                   stepped=True, w=8, no_value="No data: the gateway is not scraped"),
        table("Transitions since the gateway started", "Every rollout transition by model and event (the admin "
              "API's history has who, when and why).",
              [target(f"sum by (model, event) (gateway_rollout_transitions_total{{{ro}}})", instant=True)],
              columns={"Value": "count"}, units={}, no_value="No data: no rollout since the gateway started"),
    ]
    variables = gateway_variables("gateway_rollout_canary_percent")[:-1]  # a rollout is per model
    return Dashboard("gateway-rollouts", "Model gateway: rollouts", "Canary rollouts: the step against the "
                     "observed share, canary vs stable against the guards, the drain of the old version.", panels,
                     variables, [transitions])


# --- backends ------------------------------------------------------------------------------------------------------

def backends() -> Dashboard:
    srv = 'namespace=~"$namespace", job=~"$job", model_name=~"$model"'
    job_sel = 'namespace=~"$namespace", job=~"$job"'
    gw = 'namespace=~"$namespace", job=~"$gateway_job"'
    legend = "{{server}} {{model_name}} {{model_version}}"
    gpu_legend = "{{Hostname}} GPU {{gpu}}"
    panels = [
        row("TorchServe and TF Serving, same units (recording rules, 5 min windows)"),
        timeseries("Requests/s per model", "Requests each model server counted per model (TF Serving has no "
                   "version label).",
                   [target(f"job_model:model_server_requests:rate5m{{{srv}}}", legend)], unit="reqps",
                   no_value=NO_RECORDING),
        timeseries("Mean latency per model", "TorchServe: inference microseconds over requests; TF Serving: its "
                   "request latency histogram (predict, classify, regress); both in seconds.",
                   [target(f"job_model:model_server_request_latency_seconds:mean5m{{{srv}}}", legend)], unit="s",
                   no_value=NO_RECORDING),
        timeseries("TF Serving p50 and p99", "From TF Serving's request latency histogram (TorchServe exports "
                   "no histogram).",
                   [target(f"job_model:model_server_request_latency_seconds:histogram_quantile{{{srv}}}",
                           "{{model_name}} q{{quantile}}")], unit="s", no_value=NO_TF),
        timeseries("TorchServe queue time (mean)", "Time requests waited for a TorchServe worker.",
                   [target(f"job_model:model_server_queue_latency_seconds:mean5m{{{srv}}}", legend)], unit="s",
                   no_value=NO_TS),
        timeseries("Error answers/s by status", "TorchServe: 4xx / 5xx answers (per host); TF Serving: answers "
                   "by status code.",
                   [target(f"job:model_server_request_errors:rate5m{{{job_sel}}}", "{{server}} {{status}}")],
                   unit="reqps", no_value="No error answer in this range (or no recording rules)"),
        timeseries("Error share", "Share of each model server's answers that are errors.",
                   [target(f"job:model_server_request_errors_per_requests:ratio_rate5m{{{job_sel}}}",
                           "{{server}} {{job}}")], unit="percentunit", no_value=NO_RECORDING),
        timeseries("Scrape targets up", "1 while Prometheus scrapes the target.",
                   [target('up{namespace=~"$namespace"}', "{{job}} {{instance}}")], unit="none", stepped=True,
                   no_value="No data: Prometheus scrapes nothing"),
        timeseries("TorchServe prediction time", "TorchServe's own gauge: milliseconds of the last prediction per "
                   "model.",
                   [target('PredictionTime{namespace=~"$namespace", ModelName=~"$model"}', "{{ModelName}}")],
                   unit="ms", no_value=NO_TS),

        row("The gateway's calls to its backends"),
        timeseries("Backend call latency", "p50 and p99 of the gateway's calls per backend and transport (the "
                   "network and the backend's queue included).",
                   _quantiles("gateway_backend_request_duration_seconds", gw,
                              "backend, transport", "{{backend}} {{transport}}", (0.5, 0.99)), unit="s"),
        timeseries("Backend call errors", "Failed calls per second by backend, kind (connect, timeout, status) "
                   "and code.",
                   [target("sum by (backend, kind, code) (rate(gateway_backend_errors_total"
                           f"{{{gw}}}[{RATE}]))",
                           "{{backend}} {{kind}} {{code}}")], unit="reqps", no_value=NO_BACKEND_ERRORS),

        row("GPUs (DCGM exporter)"),
        timeseries("GPU utilisation", "Share of time the GPU was busy (DCGM_FI_DEV_GPU_UTIL).",
                   [target("gpu:dcgm_gpu_utilization:ratio", gpu_legend)], unit="percentunit", max_value=1, w=6,
                   no_value=NO_GPU),
        timeseries("GPU memory used", "Frame buffer in use (DCGM_FI_DEV_FB_USED).",
                   [target("gpu:dcgm_framebuffer_used:bytes", gpu_legend)], unit="bytes", w=6, no_value=NO_GPU),
        timeseries("GPU memory used share", "Frame buffer used over used + free.",
                   [target("gpu:dcgm_framebuffer_used_per_total:ratio", gpu_legend)], unit="percentunit",
                   max_value=1, w=6, no_value=NO_GPU),
        timeseries("GPU power", "Power draw (DCGM_FI_DEV_POWER_USAGE).",
                   [target("DCGM_FI_DEV_POWER_USAGE", gpu_legend)], unit="watt", w=6, no_value=NO_GPU),
    ]
    variables = [datasource_variable(),
                 query_variable("namespace", "Namespace", "up", "namespace"),
                 query_variable("job", "Model server job", "job_model:model_server_requests:rate5m", "job"),
                 query_variable("model", "Model (on the server)",
                                'job_model:model_server_requests:rate5m{job=~"$job"}', "model_name"),
                 query_variable("gateway_job", "Gateway job", "gateway_routes_revision", "job")]
    return Dashboard("gateway-backends", "Model gateway: backends", "TorchServe and TF Serving side by side in "
                     "the same units, the gateway's calls to them, and the GPUs they run on.", panels, variables)


DASHBOARDS = {"gateway-overview.json": overview, "gateway-experiments.json": experiments,
              "gateway-rollouts.json": rollouts, "gateway-backends.json": backends}


def render() -> dict[str, str]:
    return {name: json.dumps(build().to_json(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed JSON differs")
    args = parser.parse_args(argv)
    drift = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                drift.append(name)
        else:
            path.write_text(text)
    stale = sorted(p.name for p in OUT.glob("*.json") if p.name not in DASHBOARDS)
    if args.check and (drift or stale):
        print(f"out of date: {', '.join(drift + stale)} (run: python deploy/grafana/dashboards.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
