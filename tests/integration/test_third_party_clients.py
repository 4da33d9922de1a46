"""Clients nobody here wrote: tritonclient's HTTP v2 client (JSON and binary tensors) against the gateway."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .stack import Gateway


@pytest.fixture()
def triton(gateway: Gateway) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=gateway.url.removeprefix("http://"), network_timeout=30.0)


def test_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("scale", "1")
    assert not triton.is_model_ready("ghost")
    meta = triton.get_model_metadata("affine")
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert triton.get_server_metadata()["name"] == "model-gateway"


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize(("model", "version", "factor", "offset"), [("scale", "1", 2.0, 0.0),
                                                                    ("affine", "2", 0.5, 3.0)])
def test_infer_fp32(triton: httpclient.InferenceServerClient, binary: bool, model: str, version: str,
                    factor: float, offset: float) -> None:
    x = np.array([[1.0, 2.0, 3.0], [-1.5, 0.25, 8.0]], dtype=np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("y", binary_data=binary)]
    result = triton.infer(model, [inp], model_version=version, outputs=outputs, request_id="t1")
    np.testing.assert_allclose(result.as_numpy("y"), factor * x + offset, rtol=1e-6)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (model, version, "t1")


def test_infer_every_dtype_of_multi_with_default_binary_outputs(triton: httpclient.InferenceServerClient) -> None:
    a = np.array([[1.5, 2.5], [-10.0, 1.0]], dtype=np.float32)
    b = np.array([[1, 2], [3, 4]], dtype=np.int64)
    s = np.array([b"hello", "wörld".encode()], dtype=np.object_)
    inputs = []
    for name, arr, dt in (("a", a, "FP32"), ("b", b, "INT64"), ("s", s, "BYTES")):
        inp = httpclient.InferInput(name, list(arr.shape), dt)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    result = triton.infer("multi", inputs)  # no outputs named: tritonclient asks for binary_data_output
    np.testing.assert_allclose(result.as_numpy("total"), [7.0, -2.0])
    assert result.as_numpy("b_doubled").tolist() == [[2, 4], [6, 8]]
    assert result.as_numpy("text").tolist() == [b"HELLO", "WöRLD".encode()]
    assert result.as_numpy("positive").tolist() == [True, False]


def test_errors_surface_as_client_exceptions(triton: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("x", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match="not served"):
        triton.infer("nope", [inp])
    bad = httpclient.InferInput("x", [1, 4], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException, match="does not match"):
        triton.infer("scale", [bad])
