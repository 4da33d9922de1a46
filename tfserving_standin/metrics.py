"""The serving metrics TF Serving exports, in its Prometheus text layout (util/prometheus_exporter.cc).

Metric names are TensorFlow monitoring names with every character outside [a-zA-Z0-9_] turned into
':' (so "/tensorflow/serving/request_count" is ":tensorflow:serving:request_count"). Histograms use
TF's exponential buckets (scale 10 us, growth 1.8, 33 buckets); there is no version label.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import defaultdict

from tfserving_standin.status import Code

_BUCKET_LIMITS = [10.0 * 1.8**i for i in range(33)]

_lock = threading.Lock()
_request_count: dict[tuple[str, str], int] = defaultdict(int)
_histograms: dict[str, dict[tuple[str, ...], list]] = {
    "/tensorflow/serving/request_latency": {},
    "/tensorflow/serving/runtime_latency": {},
    "/tensorflow/serving/model_warmup_latency": {},
    "/tensorflow/serving/load_latency": {},
}
_histogram_labels = {
    "/tensorflow/serving/request_latency": ("model_name", "API", "entrypoint"),
    "/tensorflow/serving/runtime_latency": ("model_name", "API", "runtime"),
    "/tensorflow/serving/model_warmup_latency": ("model_path", "status"),
    "/tensorflow/serving/load_latency": ("model_path", "stage"),
}


def record_request_count(model_name: str, code: Code) -> None:
    with _lock:
        _request_count[(model_name, Code(code).name)] += 1


def _observe(metric: str, labels: tuple[str, ...], value: float) -> None:
    with _lock:
        cell = _histograms[metric].get(labels)
        if cell is None:
            cell = [[0] * (len(_BUCKET_LIMITS) + 1), 0.0]
            _histograms[metric][labels] = cell
        cell[0][bisect.bisect_right(_BUCKET_LIMITS, value)] += 1
        cell[1] += value


def record_request_latency(model_name: str, api: str, entrypoint: str, micros: float) -> None:
    _observe("/tensorflow/serving/request_latency", (model_name, api, entrypoint), micros)


def record_runtime_latency(model_name: str, api: str, runtime: str, micros: float) -> None:
    _observe("/tensorflow/serving/runtime_latency", (model_name, api, runtime), micros)


def record_warmup_latency(model_path: str, status: str, micros: float) -> None:
    _observe("/tensorflow/serving/model_warmup_latency", (model_path, status), micros)


def record_load_latency(model_path: str, stage: str, micros: float) -> None:
    _observe("/tensorflow/serving/load_latency", (model_path, stage), micros)


def _metric_name(name: str) -> str:
    text = re.sub(r"[^a-zA-Z0-9_]", ":", name)
    return "_" + text if text[:1].isdigit() else text


def _label_name(name: str) -> str:
    text = re.sub(r"[^a-zA-Z0-9]", "_", name)
    return "_" + text if text[:1].isdigit() else text


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> list[str]:
    return [f'{_label_name(n)}="{_label_value(v)}"' for n, v in zip(names, values, strict=True)]


def _number(value: float) -> str:
    text = f"{value:.6g}"
    return text


def prometheus_page() -> str:
    """PrometheusExporter::GeneratePage for the metrics above, in metric-name order."""
    lines: list[str] = []
    with _lock:
        entries: list[tuple[str, str]] = [("/tensorflow/serving/request_count", "counter")]
        entries += [(name, "histogram") for name in _histograms]
        for name, kind in sorted(entries):
            prom = _metric_name(name)
            if kind == "counter":
                if not _request_count:
                    continue
                lines.append(f"# TYPE {prom} counter")
                for (model, status), value in sorted(_request_count.items()):
                    labels = _labels(("model_name", "status"), (model, status))
                    lines.append(f"{prom}{{{','.join(labels)}}} {value}")
                continue
            cells = _histograms[name]
            if not cells:
                continue
            lines.append(f"# TYPE {prom} histogram")
            for values, (buckets, total) in sorted(cells.items()):
                labels = _labels(_histogram_labels[name], values)
                prefix = f"{prom}_bucket{{{','.join(labels)}{',' if labels else ''}"
                cumulative = 0
                for index, count in enumerate(buckets):
                    cumulative += count
                    limit = _number(_BUCKET_LIMITS[index]) if index < len(_BUCKET_LIMITS) else "+Inf"
                    lines.append(f'{prefix}le="{limit}"}} {cumulative}')
                lines.append(f"{prom}_sum{{{','.join(labels)}}} {_number(total)}")
                lines.append(f"{prom}_count{{{','.join(labels)}}} {cumulative}")
    return "\n".join(lines) + "\n"
