"""A client generated from the public OpenAPI document by a tool nobody here wrote (openapi-python-client, the
command the README prints) has every operation, and calls the gateway: v2, TF Serving and TorchServe, answers
parsed into the document's models, refusals into its error bodies."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from .stack import Gateway

X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


def test_a_generated_client_calls_every_front(gateway: Gateway, tmp_path: Path) -> None:
    generator = Path(sys.executable).parent / "openapi-python-client"
    result = subprocess.run([str(generator), "generate", "--url", f"{gateway.url}/openapi.json", "--meta", "none",
                             "--output-path", "gateway_client"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    generated = {p.stem for p in (tmp_path / "gateway_client" / "api").rglob("*.py") if p.stem != "__init__"}
    with gateway.client() as http:
        document = http.get("/openapi.json").json()
    assert generated == {op["operationId"] for item in document["paths"].values() for op in item.values()}

    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module("gateway_client")
        v2_api = "gateway_client.api.open_inference_protocol_v_2."
        infer = importlib.import_module(v2_api + "post_v2_models_by_model_name_infer")
        metadata = importlib.import_module(v2_api + "get_v2_models_by_model_name")
        predict = importlib.import_module("gateway_client.api.tf_serving_rest.post_v1_models_by_tf_model_name_predict")
        ping = importlib.import_module("gateway_client.api.torch_serve_rest.get_ping")
        models = importlib.import_module("gateway_client.models")
        with client_module.Client(base_url=gateway.url, raise_on_unexpected_status=True) as client:

            answer = infer.sync(model_name="scale", client=client, body=models.InferRequest.from_dict(X3))
            assert isinstance(answer, models.InferResponse), answer
            assert (answer.model_name, answer.outputs[0].name, answer.outputs[0].data) == ("scale", "y", [3, 6, 9])
            refused = infer.sync(model_name="nope", client=client, body=models.InferRequest.from_dict(X3))
            assert isinstance(refused, models.Error) and "nope" in refused.error, refused
            described = metadata.sync(model_name="affine", client=client)
            assert isinstance(described, models.ModelMetadata) and described.inputs[0].name == "x", described
            rows = predict.sync(tf_model_name="affine", client=client,
                                body=models.PredictRows.from_dict({"instances": [[1, 2, 3]]}))
            assert isinstance(rows, models.RowPredictions) and rows.predictions == [[3.5, 4.0, 4.5]], rows
            healthy = ping.sync(client=client)
            assert isinstance(healthy, models.Healthy), healthy
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "gateway_client" or m.startswith("gateway_client.")]:
            del sys.modules[name]
