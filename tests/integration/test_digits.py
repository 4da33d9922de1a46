"""The digits classifier end to end through the gateway, against real TorchServe (its TorchScript and ONNX Runtime
handlers) and TF Serving: PNG uploads on the TorchServe front, the replay script (the TF-vs-PyTorch experiment
with the ONNX shadow, on the held-out images) and Locust's three kinds of users."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.dev.devstack import EXAMPLE_IMAGES, MODEL_REPO

from .stack import Gateway

REPO = Path(__file__).resolve().parents[2]
REPLAY = REPO / "load_tests" / "replay_digits.py"
LOCUSTFILE = REPO / "load_tests" / "locustfile.py"
ACCURACY = json.loads((MODEL_REPO / "digits" / "accuracy.json").read_text())
# The example routes' logical versions of `digits` and the artifacts they serve.
VERSIONS = {"1": ("tfserving/digits", 1), "2": ("tfserving/digits", 2), "3": ("torchserve/digits", 1),
            "4": ("torchserve/digits", 2), "5": ("torchserve/digits_onnx", 1)}


@pytest.mark.parametrize("model", ["digits_torch", "digits_onnx"])
def test_a_png_upload_gets_the_right_digit(client: httpx.Client, model: str) -> None:
    for digit in range(10):
        r = client.post(f"/predictions/{model}", content=(EXAMPLE_IMAGES / f"{digit}.png").read_bytes(),
                        headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.headers["x-backend"] == "torchserve" and r.headers["x-model-name"] == model
        answer = r.json()
        assert answer["label"] == str(digit), answer
        assert answer["model_name"] == ("digits" if model == "digits_torch" else "digits_onnx")


def test_a_png_on_a_route_that_needs_tensors_is_a_clear_400(client: httpx.Client) -> None:
    # `digits` runs the experiment (half the users go to TF Serving) and has a shadow: the body must be v2 JSON.
    r = client.post("/predictions/digits", content=(EXAMPLE_IMAGES / "7.png").read_bytes(),
                    headers={"content-type": "image/png", "x-user-id": "alice"})
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["type"] == "BadRequestException"
    assert "model 'digits'" in error["message"] and "must be a v2 JSON request" in error["message"], error


def test_replay_measures_accuracy_per_variant_and_the_onnx_shadow_agreement(gateway: Gateway, tmp_path: Path) -> None:
    out = tmp_path / "replay.json"
    proc = subprocess.run([sys.executable, str(REPLAY), "--url", gateway.url, "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    doc = json.loads(out.read_text())
    assert doc["errors"] == [] and doc["images"] == 360

    # The experiment: 360 users split about 50/50 between TensorFlow (v2) and PyTorch (v4), both well trained.
    variants = doc["variants"]
    assert set(variants) == {"tf", "torch"}, variants
    assert variants["tf"]["versions"] == ["2"] and variants["torch"]["versions"] == ["4"]
    assert variants["tf"]["requests"] + variants["torch"]["requests"] == 360
    for v in variants.values():
        assert 120 <= v["requests"] <= 240, variants
        assert v["accuracy"] >= 0.9, variants
        assert 0 < v["latency_ms"]["p50"] <= v["latency_ms"]["p99"]

    # The shadow (from /metrics): every request mirrored to the ONNX export; it agrees with its PyTorch source
    # everywhere and with TensorFlow on most images.
    shadow = {(s["primary_version"], s["shadow_version"]): s for s in doc["shadow"]}
    assert set(shadow) == {("2", "5"), ("4", "5")}, doc["shadow"]
    for (primary, _), s in shadow.items():
        variant = "tf" if primary == "2" else "torch"
        assert s["outcomes"] == {"ok": variants[variant]["requests"]}, s
        assert s["compared"] == variants[variant]["requests"], s
    assert shadow[("4", "5")]["argmax_agreement"] >= 0.99
    assert shadow[("4", "5")]["all_within_tolerance"] >= 0.99
    assert 0.9 <= shadow[("2", "5")]["argmax_agreement"] < 1.0

    # Every version pinned: the accuracy the build measured on the same images.
    built = {(r["model"], r["version"]): r["accuracy"] for r in ACCURACY["models"]}
    assert set(doc["versions"]) == set(VERSIONS)
    for version, entry in doc["versions"].items():
        assert abs(entry["accuracy"] - built[VERSIONS[version]]) <= 1 / 360, (version, entry)
        assert entry["backend"] == VERSIONS[version][0].split("/")[0]
    assert doc["versions"]["4"]["agreement"]["5"] >= 0.99
    assert "argmax agreement" in proc.stdout and "tf (v2)" in proc.stdout


def test_locust_headless_v2_rest_tf_rest_and_v2_grpc_users(gateway: Gateway, tmp_path: Path) -> None:
    stats_file = tmp_path / "stats.json"  # locust adds the .json
    # Until each kind of user has had 30 answers (a second or two here; more on a busy machine), at most 90 s.
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "6", "-r", "6", "-t", "90s",
            "--stop-after", "30", "--host", gateway.url, "--grpc-target", gateway.grpc_target,
            "--json-file", str(tmp_path / "stats"), "--only-summary", "--loglevel", "WARNING"]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-4000:]}"
    stats = {entry["name"]: entry for entry in json.loads(stats_file.read_text())}
    assert set(stats) == {"v2 REST infer digits", "TF REST predict digits", "v2 gRPC ModelInfer digits"}, stats
    for name, entry in stats.items():
        assert entry["num_requests"] >= 30, (name, entry["num_requests"])
        assert entry["num_failures"] == 0, (name, proc.stderr[-2000:])
