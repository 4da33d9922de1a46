"""Rebuild every model artifact in model_repo/ reproducibly.

    python model_repo/build.py            # (re)write the committed artifacts
    python model_repo/build.py --check    # build into a temp dir and compare with the committed files
    python model_repo/build.py --out DIR  # write the tree somewhere else (example images: DIR/examples/digits)
    python model_repo/build.py --only digits   # or --only toys: one part only

Writes
  tfserving/{mlp/1,mlp/2,affine/1,affine/2,multi/1}/   TF SavedModels, signature ``serving_default``
  tfserving/digits/{1,2}/                              the digits classifier trained in TensorFlow
  tfserving/models.config                              TF Serving model_config_list (text proto)
  torchserve/{mlp-1,mlp-2,scale-1,scale-2}.mar         TorchScript + handlers/v2_handler.py + signature.json
  torchserve/{digits-1,digits-2}.mar                   the digits classifier trained in PyTorch (TorchScript)
  torchserve/digits_onnx-1.mar                         digits v2 exported to ONNX (run by ONNX Runtime)
  digits/heldout.json, digits/accuracy.json            the held-out images; every digits model's accuracy on them
  ../examples/digits/{0..9}.png                        one held-out image per digit, as a 32x32 PNG

Toy weights are fixed numbers or come from numpy.random.default_rng(<fixed seed>); the same mlp weights per
version go into the SavedModel and the TorchScript model, and the build fails unless both agree to 1e-5.
The digits models are trained here (train_digits.py: seeded, one thread, ~15 s); the build fails unless every
well-trained one reaches MIN_ACCURACY and the ONNX export matches its PyTorch source. Archives are normalized
(fixed zip timestamps and MANIFEST createdOn) so a rebuild on the same machine is byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

if __name__ == "__main__" and os.environ.get("PYTHONHASHSEED") != "0":
    # TorchScript serialization order of module constants follows Python's string hashing: pin it.
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Plain (non-oneDNN) TF kernels for the checks below: fewer machine-dependent float differences.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np
import tensorflow as tf
import torch
import train_digits
from tensorflow.core.protobuf import fingerprint_pb2

HERE = Path(__file__).resolve().parent
HANDLER = HERE / "handlers" / "v2_handler.py"
EXAMPLE_IMAGES = HERE.parent / "examples" / "digits"  # with --out DIR: DIR/examples/digits

# mlp: one seed per version; v2's argmax must differ from v1's for MLP_SAMPLE (checked below).
MLP_SEEDS = {1: 1, 2: 2}
MLP_SAMPLE = [[1.0, 2.0, 3.0, 4.0]]
AFFINE_BIAS = {1: 2.0, 2: 3.0}  # y = 0.5 * x + bias
SCALE_FACTOR = {1: 2.0, 2: 3.0}  # y = factor * x
TF_MODELS = ("mlp", "affine", "multi")
TORCH_MODELS = ("mlp", "scale")

MAR_CREATED_ON = "01/01/2024 00:00:00"  # MANIFEST.json createdOn (normally the build time)
ZIP_DATE = (2024, 1, 1, 0, 0, 0)

MODELS_CONFIG = """\
# TF Serving model config (text proto), written by model_repo/build.py.
# base_path is the path inside the tensorflow/serving image; a local launcher rewrites the /models/ prefix.
model_config_list {
  config {
    name: "mlp"
    base_path: "/models/mlp"
    model_platform: "tensorflow"
    model_version_policy { all {} }
  }
  config {
    name: "affine"
    base_path: "/models/affine"
    model_platform: "tensorflow"
    model_version_policy { all {} }
  }
  config {
    name: "multi"
    base_path: "/models/multi"
    model_platform: "tensorflow"
  }
  config {
    name: "digits"
    base_path: "/models/digits"
    model_platform: "tensorflow"
    model_version_policy { all {} }
  }
}
"""


# ----------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------


def mlp_weights(version: int) -> dict[str, np.ndarray]:
    """Dense(4->8, relu) -> Dense(8->3) -> softmax, kernels in TF layout [in, out]."""
    rng = np.random.default_rng(MLP_SEEDS[version])
    return {
        "w1": rng.normal(0.0, 0.5, size=(4, 8)).round(4).astype(np.float32),
        "b1": rng.normal(0.0, 0.1, size=(8,)).round(4).astype(np.float32),
        "w2": rng.normal(0.0, 0.5, size=(8, 3)).round(4).astype(np.float32),
        "b2": rng.normal(0.0, 0.1, size=(3,)).round(4).astype(np.float32),
    }


# ----------------------------------------------------------------------------------------------------
# TensorFlow SavedModels
# ----------------------------------------------------------------------------------------------------


class TFMlp(tf.Module):
    def __init__(self, w: dict[str, np.ndarray]) -> None:
        super().__init__(name="mlp")
        self.w1 = tf.Variable(w["w1"], name="dense/kernel")
        self.b1 = tf.Variable(w["b1"], name="dense/bias")
        self.w2 = tf.Variable(w["w2"], name="dense_1/kernel")
        self.b2 = tf.Variable(w["b2"], name="dense_1/bias")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        hidden = tf.nn.relu(tf.matmul(x, self.w1) + self.b1)
        logits = tf.matmul(hidden, self.w2) + self.b2
        return {"probabilities": tf.nn.softmax(logits, axis=-1)}


class TFAffine(tf.Module):
    def __init__(self, bias: float) -> None:
        super().__init__(name="affine")
        self.bias = bias

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": 0.5 * x + self.bias}


class TFMulti(tf.Module):
    def __init__(self) -> None:
        super().__init__(name="multi")

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2], tf.float32, name="a"),
            tf.TensorSpec([None, 2], tf.int64, name="b"),
            tf.TensorSpec([None], tf.string, name="s"),
        ]
    )
    def serve(self, a: tf.Tensor, b: tf.Tensor, s: tf.Tensor) -> dict[str, tf.Tensor]:
        total = tf.reduce_sum(a, axis=1) + tf.cast(tf.reduce_sum(b, axis=1), tf.float32)
        return {
            "total": total,
            "b_doubled": b * 2,
            "text": tf.strings.upper(s),
            "positive": total > 0,
        }


def save_tf(module: tf.Module, path: Path) -> None:
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    # fingerprint.pb carries a random per-save uuid; derive it from the content so rebuilds are identical.
    fingerprint = fingerprint_pb2.FingerprintDef()
    fingerprint.ParseFromString((path / "fingerprint.pb").read_bytes())
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "fingerprint.pb"):
        digest.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes())
    fingerprint.uuid = str(int.from_bytes(digest.digest()[:16], "big"))
    (path / "fingerprint.pb").write_bytes(fingerprint.SerializeToString(deterministic=True))


def tf_serve(path: Path, **inputs: object) -> dict[str, np.ndarray]:
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


# ----------------------------------------------------------------------------------------------------
# TorchScript + TorchServe archives
# ----------------------------------------------------------------------------------------------------


class TorchMlp(torch.nn.Module):
    def __init__(self, w: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(4, 8)
        self.dense_1 = torch.nn.Linear(8, 3)
        with torch.no_grad():
            self.dense.weight.copy_(torch.from_numpy(w["w1"].T.copy()))
            self.dense.bias.copy_(torch.from_numpy(w["b1"]))
            self.dense_1.weight.copy_(torch.from_numpy(w["w2"].T.copy()))
            self.dense_1.bias.copy_(torch.from_numpy(w["b2"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.dense_1(torch.relu(self.dense(x))), dim=-1)


class TorchScale(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def tensor_spec(name: str, datatype: str, shape: list[int]) -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape}


DIGITS_SIGNATURE = {
    "inputs": [tensor_spec("x", "FP32", [-1, 64])],
    "outputs": [tensor_spec("probabilities", "FP32", [-1, 10])],
    # PNG/JPEG bodies on /predictions: 8x8 grayscale, 0..255 scaled to the data set's 0..16 (handlers/v2_handler.py)
    "image": {"input": "x", "size": [8, 8], "max_value": 16, "output": "probabilities",
              "labels": [str(d) for d in range(10)]},
}
TORCH_SIGNATURES = {
    "mlp": {"inputs": [tensor_spec("x", "FP32", [-1, 4])], "outputs": [tensor_spec("probabilities", "FP32", [-1, 3])]},
    "scale": {"inputs": [tensor_spec("x", "FP32", [-1, 3])], "outputs": [tensor_spec("y", "FP32", [-1, 3])]},
    "digits": DIGITS_SIGNATURE,
    "digits_onnx": DIGITS_SIGNATURE,
}


def normalize_mar(path: Path) -> None:
    """Rewrite a .mar with sorted entries, fixed timestamps/permissions and a fixed createdOn."""
    with zipfile.ZipFile(path) as z:
        entries = {info.filename: z.read(info) for info in z.infolist() if not info.is_dir()}
    manifest = json.loads(entries["MAR-INF/MANIFEST.json"])
    manifest["createdOn"] = MAR_CREATED_ON
    entries["MAR-INF/MANIFEST.json"] = json.dumps(manifest, indent=2).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, entries[name], compresslevel=9)
    path.write_bytes(buf.getvalue())


# = the torch-model-archiver console script, run with this interpreter
ARCHIVER_MAIN = (
    "import sys; from model_archiver.model_packaging import generate_model_archive; "
    "sys.argv[0] = 'torch-model-archiver'; generate_model_archive()"
)


def build_mar(name: str, version: int, module: torch.nn.Module, store: Path, work: Path) -> Path:
    """An archive of the TorchScript of ``module``."""
    src = work / f"{name}-{version}"
    src.mkdir(parents=True)
    model_file = src / f"{name}.pt"
    torch.jit.script(module.eval()).save(str(model_file))
    return archive(name, version, model_file, store)


def archive(name: str, version: int, model_file: Path, store: Path) -> Path:
    """``store/<name>-<version>.mar``: ``model_file`` (TorchScript or ONNX), the shared handler and the signature."""
    src = model_file.parent
    sig_file = src / "signature.json"
    sig_file.write_text(json.dumps(TORCH_SIGNATURES[name], indent=2) + "\n")
    export = src / "export"
    export.mkdir()
    archiver_tmp = src / "tmp"  # the archiver stages files in $TMPDIR/<model_name>: keep that private
    archiver_tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(archiver_tmp), TEMP=str(archiver_tmp))
    cmd = [
        sys.executable, "-c", ARCHIVER_MAIN,
        "--model-name", name,
        "--version", str(version),
        "--serialized-file", str(model_file),
        "--handler", str(HANDLER),
        "--extra-files", str(sig_file),
        "--export-path", str(export),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env=env)
    target = store / f"{name}-{version}.mar"
    shutil.move(str(export / f"{name}.mar"), target)
    normalize_mar(target)
    return target


def load_torchscript_from_mar(path: Path) -> torch.jit.ScriptModule:
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        data = z.read(manifest["model"]["serializedFile"])
    return torch.jit.load(io.BytesIO(data), map_location="cpu")


# ----------------------------------------------------------------------------------------------------
# Digits: one classifier trained in TensorFlow and in PyTorch, the PyTorch one exported to ONNX
# ----------------------------------------------------------------------------------------------------

# (model on its backend, version, framework, what it is): the rows of digits/accuracy.json, in this order.
DIGITS_MODELS = (
    ("tfserving/digits", 1, "TensorFlow", f"{train_digits.EPOCHS[1]} epochs"),
    ("tfserving/digits", 2, "TensorFlow", f"{train_digits.EPOCHS[2]} epochs"),
    ("torchserve/digits", 1, "PyTorch", f"{train_digits.EPOCHS[1]} epochs"),
    ("torchserve/digits", 2, "PyTorch", f"{train_digits.EPOCHS[2]} epochs"),
    ("torchserve/digits_onnx", 1, "ONNX Runtime", "export of PyTorch v2"),
)
MIN_ACCURACY = 0.93  # every version-2 model and the ONNX export, on the held-out images
ONNX_ATOL = 1e-5  # ONNX Runtime vs TorchScript, per probability
PNG_UPSCALE = 4  # example images are 32x32 (viewable); the handler's box filter takes them back to 8x8 exactly


def build_digits(out: Path) -> None:
    tf_root, ts_root, data_root = out / "tfserving", out / "torchserve", out / "digits"
    shutil.rmtree(tf_root / "digits", ignore_errors=True)
    for old in [*ts_root.glob("digits-*.mar"), *ts_root.glob("digits_onnx-*.mar")]:
        old.unlink()
    for d in (tf_root, ts_root, data_root):
        d.mkdir(parents=True, exist_ok=True)
    split = train_digits.load_split()
    for version, module in train_digits.train_tf(split).items():
        save_tf(module, tf_root / "digits" / str(version))
    torch_models = train_digits.train_torch(split)
    with tempfile.TemporaryDirectory(prefix="model_repo_build_") as tmp:
        for version, model in torch_models.items():
            build_mar("digits", version, model, ts_root, Path(tmp))
        onnx_file = Path(tmp) / "onnx" / "digits.onnx"
        onnx_file.parent.mkdir()
        onnx_file.write_bytes(train_digits.onnx_bytes(torch_models[2]))
        archive("digits_onnx", 1, onnx_file, ts_root)
    write_heldout(data_root / "heldout.json", split)
    predictions = check_digits(out, split)
    write_examples(out, split, predictions)


def digits_predict(out: Path, where: str, version: int, x: np.ndarray) -> np.ndarray:
    """Probabilities from the written artifact, loaded the way its server loads it."""
    backend, name = where.split("/")
    if backend == "tfserving":
        return tf_serve(out / where / str(version), x=x)["probabilities"]
    mar = out / backend / f"{name}-{version}.mar"
    with zipfile.ZipFile(mar) as z:
        serialized = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
        data = z.read(serialized)
    if serialized.endswith(".onnx"):
        import onnxruntime

        return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        return torch.jit.load(io.BytesIO(data), map_location="cpu")(torch.from_numpy(x)).numpy()


def check_digits(out: Path, split: train_digits.Split) -> dict[str, np.ndarray]:
    """Score every digits artifact on the held-out images, check them, write digits/accuracy.json."""
    x, y = split.heldout_x, split.heldout_y
    probs = {f"{where}/{v}": digits_predict(out, where, v, x) for where, v, _, _ in DIGITS_MODELS}
    rows = []
    print(f"digits: held-out accuracy on {len(y)} images (same split for every model)")
    for where, version, framework, what in DIGITS_MODELS:
        p = probs[f"{where}/{version}"]
        if p.shape != (len(y), 10) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-5):
            fail(f"{where} v{version}: not probabilities over 10 classes, shape {p.shape}")
        correct = int(np.sum(p.argmax(axis=1) == y))
        rows.append({"model": where, "version": version, "framework": framework, "trained": what,
                     "correct": correct, "accuracy": round(correct / len(y), 4)})
        print(f"  {where:24} v{version}  {framework:13} {what:22} {correct}/{len(y)} = {correct / len(y):.4f}")
    for row in rows:
        if (row["version"] == 2 or "onnx" in str(row["model"])) and float(row["accuracy"]) < MIN_ACCURACY:
            fail(f"{row['model']} v{row['version']}: accuracy {row['accuracy']} < {MIN_ACCURACY}")
    torch2, onnx = probs["torchserve/digits/2"], probs["torchserve/digits_onnx/1"]
    diff = float(np.max(np.abs(torch2 - onnx)))
    if diff > ONNX_ATOL or not np.array_equal(torch2.argmax(axis=1), onnx.argmax(axis=1)):
        fail(f"the ONNX export differs from its PyTorch source by {diff:.2e} (at most {ONNX_ATOL})")
    pairs = {"tfserving/digits/2 vs torchserve/digits/2": ("tfserving/digits/2", "torchserve/digits/2"),
             "torchserve/digits/2 vs torchserve/digits_onnx/1": ("torchserve/digits/2", "torchserve/digits_onnx/1")}
    agreement = {k: round(float(np.mean(probs[a].argmax(1) == probs[b].argmax(1))), 4) for k, (a, b) in pairs.items()}
    print(f"  argmax agreement: {agreement}; ONNX vs PyTorch max |diff| {diff:.1e}")
    doc = {"dataset": "scikit-learn load_digits (1,797 8x8 images, pixels 0..16)",
           "heldout_images": len(y), "split_seed": train_digits.SPLIT_SEED, "models": rows,
           "argmax_agreement": agreement}
    (out / "digits" / "accuracy.json").write_text(json.dumps(doc, indent=2) + "\n")
    return probs


def write_heldout(path: Path, split: train_digits.Split) -> None:
    """The held-out images, one per line: what the replay script and the tests send (no scikit-learn needed)."""
    lines = [json.dumps([int(v) for v in row]) for row in split.heldout_x]
    path.write_text(
        "{\n"
        '"source": "sklearn.datasets.load_digits(); pixels 0..16, row-major 8x8",\n'
        f'"split": "numpy.random.default_rng({train_digits.SPLIT_SEED}).permutation(1797)[:{train_digits.HELDOUT}]",\n'
        f'"indices": {json.dumps([int(i) for i in split.heldout_index])},\n'
        f'"labels": {json.dumps([int(v) for v in split.heldout_y])},\n'
        '"images": [\n' + ",\n".join(lines) + "\n]\n}\n")


def png_pixels(image: np.ndarray) -> np.ndarray:
    """0..16 -> 0..255 grayscale (what a PNG holds)."""
    return np.round(image.reshape(8, 8) * (255.0 / train_digits.PIXEL_MAX)).astype(np.uint8)


def write_examples(out: Path, split: train_digits.Split, probs: dict[str, np.ndarray]) -> None:
    """examples/digits/<d>.png: per digit, the first held-out image that every model gets right, also after the
    round trip through 8-bit PNG pixels."""
    from PIL import Image

    target = EXAMPLE_IMAGES if out == HERE else out / "examples" / "digits"
    target.mkdir(parents=True, exist_ok=True)
    x, y = split.heldout_x, split.heldout_y
    roundtrip = np.stack([png_pixels(img).reshape(64) for img in x]).astype(np.float32) * (
        train_digits.PIXEL_MAX / 255.0)
    right = np.ones(len(y), bool)
    for where, version, _, _ in DIGITS_MODELS:
        right &= probs[f"{where}/{version}"].argmax(1) == y
        right &= digits_predict(out, where, version, roundtrip).argmax(1) == y
    for digit in range(10):
        i = int(np.flatnonzero(right & (y == digit))[0])
        pixels = np.kron(png_pixels(x[i]), np.ones((PNG_UPSCALE, PNG_UPSCALE), np.uint8))
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG")
        (target / f"{digit}.png").write_bytes(buf.getvalue())
    print(f"  example images: {target}/0.png .. 9.png")


# ----------------------------------------------------------------------------------------------------
# Build + checks
# ----------------------------------------------------------------------------------------------------


def fail(message: str) -> None:
    raise SystemExit(f"build.py: CHECK FAILED: {message}")


def build(out: Path, only: str | None = None) -> None:
    train_digits.single_thread()  # before TensorFlow or torch runs anything
    if only in (None, "toys"):
        build_toys(out)
    if only in (None, "digits"):
        build_digits(out)
    (out / "tfserving" / "models.config").write_text(MODELS_CONFIG)


def build_toys(out: Path) -> None:
    tf_root = out / "tfserving"
    ts_root = out / "torchserve"
    for name in TF_MODELS:
        shutil.rmtree(tf_root / name, ignore_errors=True)
    for name in TORCH_MODELS:
        for old in ts_root.glob(f"{name}-*.mar"):
            old.unlink()
    tf_root.mkdir(parents=True, exist_ok=True)
    ts_root.mkdir(parents=True, exist_ok=True)

    # TF Serving
    for version in (1, 2):
        save_tf(TFMlp(mlp_weights(version)), tf_root / "mlp" / str(version))
        save_tf(TFAffine(AFFINE_BIAS[version]), tf_root / "affine" / str(version))
    save_tf(TFMulti(), tf_root / "multi" / "1")

    # TorchServe
    with tempfile.TemporaryDirectory(prefix="model_repo_build_") as tmp:
        for version in (1, 2):
            build_mar("mlp", version, TorchMlp(mlp_weights(version)), ts_root, Path(tmp))
            build_mar("scale", version, TorchScale(SCALE_FACTOR[version]), ts_root, Path(tmp))

    check(out)


def check(out: Path) -> None:
    """Reload what was written and verify the numbers (fails loudly)."""
    tf_root = out / "tfserving"
    ts_root = out / "torchserve"
    rng = np.random.default_rng(1234)
    probes = np.concatenate([np.asarray(MLP_SAMPLE, np.float32), rng.normal(0, 3, size=(7, 4)).astype(np.float32)])
    argmax = {}
    for version in (1, 2):
        tf_out = tf_serve(tf_root / "mlp" / str(version), x=probes)["probabilities"]
        scripted = load_torchscript_from_mar(ts_root / f"mlp-{version}.mar")
        with torch.no_grad():
            torch_out = scripted(torch.from_numpy(probes)).numpy()
        diff = float(np.max(np.abs(tf_out - torch_out)))
        if not np.allclose(tf_out, torch_out, rtol=0, atol=1e-5):
            fail(f"mlp v{version}: TF and TorchScript outputs differ by {diff}")
        if not np.allclose(tf_out.sum(axis=1), 1.0, atol=1e-5):
            fail(f"mlp v{version}: probabilities do not sum to 1")
        argmax[version] = int(np.argmax(tf_out[0]))
        print(
            f"mlp v{version}: {MLP_SAMPLE} -> {tf_out[0].tolist()} (argmax {argmax[version]}); "
            f"TF vs torch max |diff| {diff:.2e} over {len(probes)} inputs"
        )
    if argmax[1] == argmax[2]:
        fail(f"mlp v1 and v2 have the same argmax ({argmax[1]}) for {MLP_SAMPLE}; pick other seeds")

    x3 = np.asarray([[1.0, 2.0, 3.0]], np.float32)
    for version in (1, 2):
        y = tf_serve(tf_root / "affine" / str(version), x=x3)["y"]
        if not np.array_equal(y, 0.5 * x3 + AFFINE_BIAS[version]):
            fail(f"affine v{version}: {y.tolist()}")
        print(f"affine v{version}: {x3.tolist()} -> {y.tolist()}")
        scripted = load_torchscript_from_mar(ts_root / f"scale-{version}.mar")
        with torch.no_grad():
            y = scripted(torch.from_numpy(x3)).numpy()
        if not np.array_equal(y, SCALE_FACTOR[version] * x3):
            fail(f"scale v{version}: {y.tolist()}")
        print(f"scale v{version}: {x3.tolist()} -> {y.tolist()}")

    got = tf_serve(
        tf_root / "multi" / "1",
        a=np.asarray([[1.5, 2.0], [-10.0, 0.5]], np.float32),
        b=np.asarray([[1, 2], [3, -4]], np.int64),
        s=np.asarray([b"hello", b"Mixed Case"]),
    )
    want = {
        "total": np.asarray([6.5, -10.5], np.float32),
        "b_doubled": np.asarray([[2, 4], [6, -8]], np.int64),
        "text": np.asarray([b"HELLO", b"MIXED CASE"], object),
        "positive": np.asarray([True, False]),
    }
    for key, value in want.items():
        if got[key].dtype != value.dtype or not np.array_equal(got[key], value):
            fail(f"multi v1 output {key}: {got[key]!r}, want {value!r}")
    print("multi v1:", {k: v.tolist() for k, v in got.items()})


def tree_digest(root: Path, examples: Path) -> dict[str, str]:
    files = {str(p.relative_to(root)): p for sub in ("tfserving", "torchserve", "digits")
             for p in sorted((root / sub).rglob("*")) if p.is_file()}
    files.update({f"examples/digits/{p.name}": p for p in sorted(examples.glob("*.png"))})
    return {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in files.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", type=Path, default=HERE, help="output root (default: model_repo/)")
    group.add_argument("--check", action="store_true", help="rebuild in a temp dir; compare with committed")
    parser.add_argument("--only", choices=("toys", "digits"), help="build only these models (default: all)")
    args = parser.parse_args()
    if not args.check:
        build(args.out.resolve(), args.only)
        return 0
    with tempfile.TemporaryDirectory(prefix="model_repo_check_") as tmp:
        build(Path(tmp))
        fresh = tree_digest(Path(tmp), Path(tmp) / "examples" / "digits")
        committed = tree_digest(HERE, EXAMPLE_IMAGES)
        diff = sorted(k for k in fresh.keys() | committed.keys() if fresh.get(k) != committed.get(k))
        if diff:
            print("build.py --check: these artifacts differ from a fresh build:", *diff, sep="\n  ")
            return 1
        print(f"build.py --check: all {len(fresh)} artifact files are identical to a fresh build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
