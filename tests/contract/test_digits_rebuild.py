"""The digits models are reproducible: `model_repo/build.py --only digits` retrains all of them from scratch in a
temporary directory (~20 s) and must reach the committed accuracies and write the same held-out images.

Accuracies, not bytes: on another CPU the training's float sums may round differently (the byte-for-byte check on
one machine is `build.py --check`). The build itself fails when a well-trained model scores under its floor or
the ONNX export drifts from its PyTorch source, so a broken training, data split or export fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL_REPO = REPO / "model_repo"
TOLERANCE = 0.02  # about 7 of the 360 held-out images


@pytest.mark.timeout(240)
def test_rebuilding_the_digits_models_gives_the_committed_accuracy(tmp_path: Path) -> None:
    out = tmp_path / "rebuilt"
    proc = subprocess.run([sys.executable, str(MODEL_REPO / "build.py"), "--only", "digits", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, f"build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"

    committed = json.loads((MODEL_REPO / "digits" / "accuracy.json").read_text())
    fresh = json.loads((out / "digits" / "accuracy.json").read_text())
    assert (out / "digits" / "heldout.json").read_text() == (MODEL_REPO / "digits" / "heldout.json").read_text()
    assert [(r["model"], r["version"]) for r in fresh["models"]] == [(r["model"], r["version"])
                                                                    for r in committed["models"]]
    for new, old in zip(fresh["models"], committed["models"], strict=True):
        assert abs(new["accuracy"] - old["accuracy"]) <= TOLERANCE, (new, old)
    assert fresh["argmax_agreement"]["torchserve/digits/2 vs torchserve/digits_onnx/1"] == 1.0
    for artifact in ("tfserving/digits/1/saved_model.pb", "tfserving/digits/2/saved_model.pb",
                     "torchserve/digits-1.mar", "torchserve/digits-2.mar", "torchserve/digits_onnx-1.mar"):
        size = (out / artifact).stat().st_size
        assert 0 < size < 1_000_000, f"{artifact}: {size} bytes"
    assert sorted(p.name for p in (out / "examples" / "digits").glob("*.png")) == [f"{d}.png" for d in range(10)]
    print(proc.stdout)
