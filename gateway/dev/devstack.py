"""`gateway dev`: the whole local stack without Docker: TorchServe, TF Serving (real or stand-in), the gateway."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

from gateway.dev import localstack
from gateway.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPO = REPO_ROOT / "model_repo"
EXAMPLE_ROUTES = REPO_ROOT / "examples" / "routes.local.yaml"
TOY_TORCHSERVE_MODELS = (("mlp", "1", "mlp-1.mar"), ("mlp", "2", "mlp-2.mar"),
                         ("scale", "1", "scale-1.mar"), ("scale", "2", "scale-2.mar"))
# The digits classifier trained in PyTorch (two versions) and its ONNX export: ~2.5 s to register each.
DIGITS_TORCHSERVE_MODELS = (("digits", "1", "digits-1.mar"), ("digits", "2", "digits-2.mar"),
                            ("digits_onnx", "1", "digits_onnx-1.mar"))
TORCHSERVE_MODELS = TOY_TORCHSERVE_MODELS + DIGITS_TORCHSERVE_MODELS
TORCHSERVE_DEFAULTS = {"mlp": "1", "scale": "2", "digits": "2"}
TF_MODELS = ("affine", "mlp", "multi", "digits")
EXAMPLE_IMAGES = REPO_ROOT / "examples" / "digits"


def run_dev(port: int, grpc_port: int, workdir: Path, token_auth: bool = True, admin_port: int = 8002) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    with localstack.Stack() as stack:
        print("starting TorchServe and TF Serving (about 25 s) ...", flush=True)
        ts_proc, ts = localstack.start_torchserve(
            workdir / "torchserve", MODEL_REPO / "torchserve", TORCHSERVE_MODELS,
            token_auth=token_auth, defaults=TORCHSERVE_DEFAULTS)
        stack.add(ts_proc)
        tf_proc, tf = localstack.start_tfserving(
            workdir / "tfserving", MODEL_REPO / "tfserving" / "models.config", MODEL_REPO / "tfserving",
            wait_models=TF_MODELS)
        stack.add(tf_proc)
        os.environ.update({
            "TFSERVING_URL": tf.rest_url,
            "TFSERVING_GRPC_TARGET": tf.grpc_target,
            "TFSERVING_MODEL_CONFIG": str(tf.model_config_file or ""),
            "TORCHSERVE_URL": ts.inference_url,
            "TORCHSERVE_MANAGEMENT_URL": ts.management_url,
            "TORCHSERVE_KEY_FILE": str(ts.key_file or ""),
        })
        routes = workdir / "routes.yaml"
        shutil.copyfile(EXAMPLE_ROUTES, routes)
        tf_kind = "real binary" if tf.real_binary else "stand-in"
        token_file = workdir / "admin-token"
        token_file.write_text(secrets.token_urlsafe(24))
        token_file.chmod(0o600)
        settings = Settings(routes_file=routes, host="127.0.0.1", port=port, grpc_port=grpc_port,
                            admin_port=admin_port, admin_token_file=token_file)
        print(banner(port, grpc_port, ts, tf, routes, tf_kind, settings), flush=True)
        from gateway.server import serve

        serve(settings)
    return 0


def gateway_command() -> str:
    """The `gateway` command of this installation as a user can type it (the virtualenv need not be active)."""
    script = Path(sys.executable).with_name("gateway")
    if not script.exists():
        return f"{sys.executable} -m gateway"
    try:
        return os.path.relpath(script) if script.is_relative_to(Path.cwd()) else str(script)
    except ValueError:
        return str(script)


def banner(port: int, grpc_port: int, ts: localstack.TorchServeEndpoints, tf: localstack.TFServingEndpoints,
           routes: Path, tf_kind: str, settings: Settings) -> str:
    g = f"http://127.0.0.1:{port}"
    admin = f"http://{settings.admin_host}:{settings.admin_port}"
    gw = gateway_command()
    return f"""
Model Gateway local stack
  gateway      {g}   (routes: {routes}; edit it and the gateway reloads within a second)
               gRPC 127.0.0.1:{grpc_port} (v2 inference.GRPCInferenceService, tensorflow.serving.*, health, reflection)
  admin API    {admin}   (token in {settings.admin_token_file}; OpenAPI docs at {admin}/docs)
  metrics      {g}/metrics
  TorchServe   {ts.inference_url} (management {ts.management_url}, metrics {ts.metrics_url})
  TF Serving   {tf.rest_url} (gRPC {tf.grpc_target}; metrics {tf.metrics_url}; {tf_kind})

Try:
  curl -s {g}/v2/health/ready
  curl -s {g}/v2/models/mlp
  curl -s -X POST {g}/v2/models/mlp/infer -H 'content-type: application/json' \\
    -d '{{"inputs":[{{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}}]}}'
  curl -s -X POST {g}/v2/models/mlp_torch/versions/2/infer -H 'content-type: application/json' \\
    -d '{{"inputs":[{{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}}]}}'
  curl -s -X POST {g}/v1/models/affine/labels/stable:predict -d '{{"instances":[[1,2,3]]}}'
  curl -s -X POST {g}/v1/models/scale:predict -d '{{"instances":[[1,2,3]]}}'
  curl -s -X POST {g}/predictions/scale/1 -H 'content-type: application/json' \\
    -d '{{"inputs":[{{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}}]}}'
  curl -si {g}/v1/models/affine
  curl -si -X POST {g}/v2/models/classifier/infer -H 'x-user-id: alice' \
    -d '{{"inputs":[{{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}}]}}'   # see x-model-variant

The admin CLI (a canary rollout of scale back to version 1, while requests flow):
  export GATEWAY_ADMIN_URL={admin} GATEWAY_ADMIN_TOKEN_FILE={settings.admin_token_file}
  {gw} routes show
  {gw} rollout start scale 1 --steps 50,100 --dwell 5 --min-requests 5
  for i in $(seq 200); do curl -s -o /dev/null -X POST {g}/v2/models/scale/infer \
    -d '{{"inputs":[{{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}}]}}'; done
  {gw} rollout status scale

Digits (TensorFlow vs PyTorch 50/50 by user, the ONNX export as a shadow; model_repo/README.md):
  curl -s --data-binary @{EXAMPLE_IMAGES}/7.png -H 'content-type: image/png' {g}/predictions/digits_torch
  curl -s --data-binary @{EXAMPLE_IMAGES}/7.png -H 'content-type: image/png' {g}/predictions/digits_onnx
  {sys.executable} {REPO_ROOT}/load_tests/replay_digits.py --url {g}   # accuracy per variant, agreement

Ctrl-C stops everything.
"""
