"""Replay the digits held-out images through the gateway (v2 REST): accuracy per experiment variant and per
version, shadow agreement, latency.

    python load_tests/replay_digits.py [--url http://127.0.0.1:8000] [--model digits] [--limit N]
                                       [--concurrency C] [--json FILE]

Against the local stack (`make up`), whose routes (examples/routes.local.yaml) run the experiment on ``digits``:
TensorFlow vs PyTorch 50/50 by user, every request mirrored to the ONNX export. Three passes:

1. The experiment: one request per image, each from its own user (``x-user-id: replay-<i>``), assigned by the
   gateway: per variant (``x-model-variant``) the requests, accuracy and client-side latency.
2. The shadow, from the gateway's /metrics (``gateway_shadow_*``) before and after pass 1, once every mirrored
   request is accounted for (bounded wait): per (primary, shadow) version the mirrored requests by outcome,
   the mean argmax agreement (each request holds one image, so this is the share of images on which the two
   agree) and the share of comparisons with every probability within the route's tolerance.
3. Every version pinned (``/v2/models/<m>/versions/<v>/infer``), the held-out set in batches: accuracy, and
   argmax agreement between versions compared here, answer by answer.

The images (model_repo/digits/heldout.json, written by model_repo/build.py) are the ones every model was
scored on at build time, so a version's accuracy here should equal model_repo/digits/accuracy.json.
Exits 1 when any request failed. No third-party dependencies beyond the gateway's own (httpx, numpy,
prometheus-client).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

HELDOUT = Path(__file__).resolve().parents[1] / "model_repo" / "digits" / "heldout.json"
SHADOW_SETTLE_S = 30.0  # at most this long for mirrored requests to finish after the last answer
BATCH = 60


def v2_body(images: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [len(images), 64], "datatype": "FP32",
                        "data": images.reshape(-1).tolist()}]}


def probabilities(answer: dict[str, Any]) -> np.ndarray:
    out = next(o for o in answer["outputs"] if o["name"] == "probabilities")
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def percentiles(values_s: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(values_s) * 1000.0
    return {f"p{p}": round(float(np.percentile(ms, p)), 2) for p in (50, 95, 99)} if len(ms) else {}


# -- 1. the experiment ---------------------------------------------------------------------------------


def replay_experiment(client: httpx.Client, model: str, x: np.ndarray, y: np.ndarray,
                      concurrency: int) -> tuple[dict[str, Any], list[str]]:
    def one(i: int) -> tuple[int, str, str, int, float, str]:
        start = time.perf_counter()
        r = client.post(f"/v2/models/{model}/infer", json=v2_body(x[i : i + 1]),
                        headers={"x-user-id": f"replay-{i}"})
        elapsed = time.perf_counter() - start
        if r.status_code != 200:
            return i, "", "", -1, elapsed, f"image {i}: {r.status_code} {r.text[:200]}"
        predicted = int(probabilities(r.json()).argmax())
        return i, r.headers.get("x-model-variant", ""), r.headers.get("x-model-version", ""), predicted, elapsed, ""

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(len(x))))
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"versions": set(), "right": 0, "latency": []})
    errors = []
    for i, variant, version, predicted, elapsed, error in results:
        if error:
            errors.append(error)
            continue
        entry = per[variant or "(none)"]
        entry["versions"].add(version)
        entry["right"] += int(predicted == y[i])
        entry["latency"].append(elapsed)
    variants = {name: {"versions": sorted(e["versions"]), "requests": len(e["latency"]),
                       "accuracy": round(e["right"] / len(e["latency"]), 4), "latency_ms": percentiles(e["latency"])}
                for name, e in sorted(per.items())}
    return variants, errors


# -- 2. the shadow, from /metrics ----------------------------------------------------------------------


def shadow_samples(client: httpx.Client, model: str) -> dict[tuple[str, ...], float]:
    """(sample name, primary version, shadow version, outcome or result) -> value, for this model's shadow."""
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if (s.name.startswith("gateway_shadow_") and s.labels.get("model") == model
                    and not s.name.endswith(("_bucket", "_created"))):
                extra = s.labels.get("outcome") or s.labels.get("result") or ""
                found[(s.name, s.labels["primary_version"], s.labels["shadow_version"], extra)] = s.value
    return found


def settle_shadows(client: httpx.Client, model: str, before: dict[tuple[str, ...], float],
                   expected: int) -> dict[tuple[str, ...], float]:
    """Poll /metrics until ``expected`` mirrored requests are counted since ``before`` (or nothing moves for 2 s
    once the routes mirror fewer than all of them), at most SHADOW_SETTLE_S."""
    deadline = time.monotonic() + SHADOW_SETTLE_S
    last, still_since = -1.0, time.monotonic()
    while True:
        now = shadow_samples(client, model)
        mirrored = sum(v - before.get(k, 0.0) for k, v in now.items() if k[0] == "gateway_shadow_requests_total")
        if mirrored >= expected or time.monotonic() > deadline:
            return now
        if mirrored != last:
            last, still_since = mirrored, time.monotonic()
        elif time.monotonic() - still_since > 2.0:
            return now
        time.sleep(0.1)


def shadow_report(before: dict[tuple[str, ...], float], after: dict[tuple[str, ...], float]) -> list[dict[str, Any]]:
    delta: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for key, value in after.items():
        name, primary, shadow, extra = key
        d = value - before.get(key, 0.0)
        if d:
            delta[(primary, shadow)][f"{name}:{extra}" if extra else name] = d
    rows = []
    for (primary, shadow), d in sorted(delta.items()):
        outcomes = {k.split(":")[1]: int(v) for k, v in d.items() if k.startswith("gateway_shadow_requests_total:")}
        count = d.get("gateway_shadow_argmax_agreement_ratio_count", 0.0)
        compared = d.get("gateway_shadow_within_tolerance_ratio_count", 0.0)
        agree = d.get("gateway_shadow_comparisons_total:agree", 0.0)
        rows.append({
            "primary_version": primary, "shadow_version": shadow, "mirrored": sum(outcomes.values()),
            "outcomes": outcomes, "compared": int(compared),
            "argmax_agreement": round(d.get("gateway_shadow_argmax_agreement_ratio_sum", 0.0) / count, 4)
            if count else None,
            "all_within_tolerance": round(agree / compared, 4) if compared else None,
        })
    return rows


# -- 3. every version, pinned --------------------------------------------------------------------------


def sweep_versions(client: httpx.Client, model: str, x: np.ndarray, y: np.ndarray) -> tuple[dict[str, Any], list[str]]:
    versions = client.get(f"/v2/models/{model}").json()["versions"]
    predicted: dict[str, np.ndarray] = {}
    report: dict[str, Any] = {}
    errors: list[str] = []
    for v in versions:
        parts, backend = [], ""
        for start in range(0, len(x), BATCH):
            r = client.post(f"/v2/models/{model}/versions/{v}/infer", json=v2_body(x[start : start + BATCH]))
            if r.status_code != 200:
                errors.append(f"version {v}: {r.status_code} {r.text[:200]}")
                break
            backend = r.headers.get("x-backend", "")
            parts.append(probabilities(r.json()).argmax(axis=1))
        else:
            predicted[v] = np.concatenate(parts)
            report[v] = {"backend": backend, "accuracy": round(float(np.mean(predicted[v] == y)), 4)}
    for v, entry in report.items():
        entry["agreement"] = {w: round(float(np.mean(predicted[v] == predicted[w])), 4) for w in predicted}
    return report, errors


# -- the whole run -------------------------------------------------------------------------------------


def run(url: str, model: str, heldout: Path, limit: int | None, concurrency: int) -> dict[str, Any]:
    data = json.loads(heldout.read_text())
    x = np.asarray(data["images"], np.float32)[:limit]
    y = np.asarray(data["labels"], np.int64)[:limit]
    with httpx.Client(base_url=url, timeout=30.0,
                      limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)) as c:
        before = shadow_samples(c, model)
        started = time.perf_counter()
        variants, errors = replay_experiment(c, model, x, y, concurrency)
        seconds = time.perf_counter() - started
        after = settle_shadows(c, model, before, expected=len(x) - len(errors))
        versions, sweep_errors = sweep_versions(c, model, x, y)
    return {"url": url, "model": model, "images": len(x), "seconds": round(seconds, 2),
            "variants": variants, "shadow": shadow_report(before, after), "versions": versions,
            "errors": errors + sweep_errors}


def print_report(doc: dict[str, Any]) -> None:
    print(f"{doc['model']}: {doc['images']} held-out images through {doc['url']} (v2 REST), "
          f"experiment pass {doc['seconds']} s\n")
    print("experiment (one user per image)  requests  accuracy   p50 ms   p95 ms   p99 ms")
    for name, v in doc["variants"].items():
        lat = v["latency_ms"]
        label = f"{name} (v{','.join(v['versions'])})"
        print(f"  {label:30} {v['requests']:8}  {v['accuracy']:8.4f} {lat.get('p50', 0):8.2f} "
              f"{lat.get('p95', 0):8.2f} {lat.get('p99', 0):8.2f}")
    print("\nshadow (/metrics gateway_shadow_*)  mirrored  outcomes            argmax agreement  all within tolerance")
    for s in doc["shadow"]:
        pair = f"v{s['primary_version']} -> shadow v{s['shadow_version']}"
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items()))
        agreement = "-" if s["argmax_agreement"] is None else f"{s['argmax_agreement']:.4f}"
        within = "-" if s["all_within_tolerance"] is None else f"{s['all_within_tolerance']:.4f}"
        print(f"  {pair:32} {s['mirrored']:9}  {outcomes:18}  {agreement:>16}  {within:>20}")
    versions = doc["versions"]
    print("\nevery version, pinned           accuracy   argmax agreement with " +
          " ".join(f"{'v' + v:>6}" for v in versions))
    for v, entry in versions.items():
        row = " ".join(f"{entry['agreement'][w]:6.3f}" for w in versions)
        print(f"  v{v:3} {entry['backend']:24} {entry['accuracy']:8.4f}   {'':22}{row}")
    for error in doc["errors"][:10]:
        print("ERROR", error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's REST address")
    parser.add_argument("--model", default="digits", help="the gateway's model with the experiment")
    parser.add_argument("--heldout", type=Path, default=HELDOUT, help="images and labels (model_repo/digits)")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight in the experiment pass")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    doc = run(args.url.rstrip("/"), args.model, args.heldout, args.limit, max(1, args.concurrency))
    print_report(doc)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
