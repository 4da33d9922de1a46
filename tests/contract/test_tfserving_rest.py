"""TF Serving's HTTP/REST API: paths, JSON formats, messages and status codes.

Runs against the real tensorflow_model_server when it is on PATH, else against tfserving_standin.
Model "affine" serves version 2 (y = 0.5x + 3); "multi" has inputs a (float [-1,2]), b (int64 [-1,2]),
s (string [-1]) and outputs total, b_doubled, text, positive, s_bytes, plus extra signatures.
"""

from __future__ import annotations

import base64
import json
import math
import re

import httpx
import pytest

AFFINE_V2 = [3.5, 4.0, 4.5]  # 0.5 * [1, 2, 3] + 3
AFFINE_V1 = [2.5, 3.0, 3.5]  # 0.5 * [1, 2, 3] + 2
MULTI_ROWS = [
    {"a": [1.0, 2.0], "b": [3, 4], "s": "hello"},
    {"a": [-5.0, 1.0], "b": [-1, 0], "s": {"b64": base64.b64encode(b"world").decode()}},
]


def assert_error(response: httpx.Response, status: int, message: str | re.Pattern[str]) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    if isinstance(message, re.Pattern):
        assert message.search(body["error"]), body["error"]
    else:
        assert body["error"] == message


def post(http: httpx.Client, base: str, path: str, body: object) -> httpx.Response:
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return http.post(base + path, content=content, headers={"Content-Type": "application/json"})


# ----------------------------------------------------------------------------- predict formats


def test_row_format_answers_predictions_with_single_output_name_dropped(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:predict", {"instances": [[1, 2, 3], [0, 0, 0]]})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"predictions": [AFFINE_V2, [3.0, 3.0, 3.0]]}


def test_columnar_format_answers_outputs_with_single_output_name_dropped(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:predict", {"inputs": [[1, 2, 3]]})
    assert response.status_code == 200
    assert response.json() == {"outputs": [AFFINE_V2]}


def test_floats_are_written_shortest_with_trailing_zero(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:predict", {"instances": [[1, 2, 3]]})
    assert re.sub(r"\s", "", response.text) == '{"predictions":[[3.5,4.0,4.5]]}'


def test_row_format_with_named_inputs_and_outputs_of_every_dtype(tfs, http):
    response = post(http, tfs.rest, "/v1/models/multi:predict", {"instances": MULTI_ROWS})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "predictions": [
            {
                "b_doubled": [6, 8],
                "positive": True,
                "s_bytes": {"b64": base64.b64encode(b"hello").decode()},
                "text": "HELLO",
                "total": 3.0,
            },
            {
                "b_doubled": [-2, 0],
                "positive": False,
                "s_bytes": {"b64": base64.b64encode(b"world").decode()},
                "text": "WORLD",
                "total": -4.0,
            },
        ]
    }


def test_columnar_format_with_named_inputs_and_outputs(tfs, http):
    body = {"inputs": {"a": [[1, 2], [-5, 1]], "b": [[3, 4], [-1, 0]], "s": ["hello", {"b64": "d29ybGQ="}]}}
    response = post(http, tfs.rest, "/v1/models/multi:predict", body)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "outputs": {
            "b_doubled": [[6, 8], [-2, 0]],
            "positive": [True, False],
            "s_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
            "text": ["HELLO", "WORLD"],
            "total": [3.0, -4.0],
        }
    }


def test_signature_name_selects_the_signature(tfs, http):
    body = {"signature_name": "matmul", "instances": [[1, 0, 0, 0]]}
    response = post(http, tfs.rest, "/v1/models/multi:predict", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [[0.0, 0.1, 0.2]]}


def test_nan_and_infinity_tokens_are_accepted_and_written(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:predict", '{"instances": [[NaN, Infinity, -Infinity]]}')
    assert response.status_code == 200, response.text
    assert re.sub(r"\s", "", response.text) == '{"predictions":[[NaN,Infinity,-Infinity]]}'
    values = json.loads(response.text)["predictions"][0]
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf


def test_row_format_rejects_outputs_with_inconsistent_batch_size(tfs, http):
    body = {"signature_name": "inconsistent", "instances": [[1, 2], [3, 4]]}
    response = post(http, tfs.rest, "/v1/models/multi:predict", body)
    assert_error(response, 400, re.compile(r"^Tensor name: \w+ has inconsistent batch size: \d expecting: \d$"))


def test_columnar_format_accepts_outputs_with_different_batch_sizes(tfs, http):
    body = {"signature_name": "inconsistent", "inputs": [[1, 2], [3, 4]]}
    response = post(http, tfs.rest, "/v1/models/multi:predict", body)
    assert response.status_code == 200
    assert response.json() == {"outputs": {"count": [2], "per_row": [3.0, 7.0]}}


# ----------------------------------------------------------------------------- request errors


def test_both_inputs_and_instances_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:predict", {"instances": [[1, 2, 3]], "inputs": [[1, 2, 3]]})
    assert_error(
        response,
        400,
        re.compile(r"^JSON Value: .* Not formatted correctly expecting only one of 'inputs' or 'instances' keys", re.S),
    )


def test_neither_inputs_nor_instances_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:predict", {"signature_name": "serving_default"})
    assert_error(response, 400, "Missing 'inputs' or 'instances' key")


def test_invalid_json_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:predict", "{bad")
    assert_error(response, 400, "JSON Parse error: Missing a name for object member. at offset: 1")


@pytest.mark.parametrize("number", ["1e400", "-1e400", "9" * 5000, "1" + "0" * 400])
def test_number_too_big_for_a_double_is_400(tfs, http, number):
    """A regression (stand-in): Python read 1e400 as infinity and 5,000 digits as a ValueError answered 500."""
    body = '{"instances": [[' + number + ", 2, 3]]}"
    for verb in ("predict", "classify"):
        response = post(http, tfs.rest, f"/v1/models/affine:{verb}", body)
        assert_error(response, 400, re.compile(r"^JSON Parse error: Number too big to be stored in double\."))


@pytest.mark.parametrize("string", ["\\ud800", "a\\udfffb", "\\udbff\\ud800"])
def test_a_lone_surrogate_is_400(tfs, http, string):
    """A regression (stand-in): Python read it, and writing the error naming it failed with a 500."""
    response = post(http, tfs.rest, "/v1/models/affine:predict", '{"instances": [{"' + string + '": [1, 2, 3]}]}')
    assert_error(response, 400, re.compile(r"^JSON Parse error: The surrogate pair in string is invalid\."))


def test_nesting_deeper_than_pythons_stack_is_400(tfs, http):
    """A regression (stand-in): RecursionError answered 500 (TF Serving's parser takes this depth; the
    shape is wrong then)."""
    response = post(http, tfs.rest, "/v1/models/affine:predict", '{"instances": ' + "[" * 5000 + "1" + "]" * 5000 + "}")
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"]


def test_empty_body_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:predict", "")
    assert_error(response, 400, "JSON Parse error: The document is empty")


def test_wrong_value_type_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:predict", {"instances": [["a", "b", "c"]]})
    assert_error(
        response,
        400,
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        'JSON Value: "a" Type: String is not of expected type: float',
    )


def test_wrong_input_name_in_row_objects_is_400(tfs, http):
    body = {"instances": [{"zz": [1.0], "a": [1.0, 2.0], "b": [3, 4], "s": "x"}]}
    response = post(http, tfs.rest, "/v1/models/multi:predict", body)
    assert_error(
        response,
        400,
        "Failed to process element: 0 key: zz of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON object: does not have named input: zz",
    )


def test_missing_input_in_row_objects_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/multi:predict", {"instances": [{"a": [1.0, 2.0], "b": [3, 4]}]})
    assert_error(
        response,
        400,
        re.compile(
            r"^Failed to process element: 0 of 'instances' list\. JSON object: .* keys must be equal to: a,b,s$", re.S
        ),
    )


def test_wrong_input_name_in_columnar_object_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:predict", {"inputs": {"z": [[1, 2, 3]]}})
    assert_error(response, 400, "Missing named input: x in 'inputs' object.")


def test_ragged_instances_are_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:predict", {"instances": [[1, 2, 3], [1, 2]]})
    assert_error(
        response,
        400,
        "Failed to process element: 1 of 'instances' list. "
        "Error: INVALID_ARGUMENT: Expecting tensor size: 3 but got: 2",
    )


def test_wrong_shape_for_the_graph_is_400_not_500(tfs, http):
    body = {"signature_name": "matmul", "instances": [[1, 2, 3, 4, 5]]}
    response = post(http, tfs.rest, "/v1/models/multi:predict", body)
    assert_error(response, 400, re.compile(r"Matrix size-incompatible: In\[0\]: \[1,5\], In\[1\]: \[4,3\]"))


def test_unknown_signature_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:predict", {"signature_name": "nope", "instances": [[1, 2, 3]]})
    assert_error(response, 400, 'Serving signature name: "nope" not found in signature def')


def test_json_conversion_to_unsupported_dtype_is_501(tfs, http):
    response = post(http, tfs.rest, "/v1/models/multi:predict", {"signature_name": "half", "inputs": [1.5]})
    assert_error(response, 501, "Conversion of JSON Value: 1.5 to type: half")


def test_row_format_wraps_element_errors_as_invalid_argument(tfs, http):
    response = post(http, tfs.rest, "/v1/models/multi:predict", {"signature_name": "half", "instances": [1.5]})
    assert_error(
        response,
        400,
        "Failed to process element: 0 of 'instances' list. "
        "Error: UNIMPLEMENTED: Conversion of JSON Value: 1.5 to type: half",
    )


# ----------------------------------------------------------------------------- paths and versions


def test_unknown_model_is_404(tfs, http):
    response = post(http, tfs.rest, "/v1/models/nope:predict", {"instances": [[1, 2, 3]]})
    assert_error(response, 404, "Servable not found for request: Latest(nope)")


def test_version_not_loaded_is_404(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine/versions/7:predict", {"instances": [[1, 2, 3]]})
    assert_error(response, 404, "Servable not found for request: Specific(affine, 7)")


def test_specific_version_is_served(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine_all/versions/1:predict", {"instances": [[1, 2, 3]]})
    assert response.json() == {"predictions": [AFFINE_V1]}


def test_unknown_label_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine/labels/nope:predict", {"instances": [[1, 2, 3]]})
    assert_error(response, 400, "Unrecognized servable version label: nope")


def test_version_and_label_together_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine/versions/2/labels/x:predict", {"instances": [[1, 2, 3]]})
    assert_error(response, 400, "Malformed request: POST /v1/models/affine/versions/2/labels/x:predict")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/models/affine:explode"),
        ("POST", "/v1/models/affine"),
        ("GET", "/v1/models/affine:predict"),
        ("PUT", "/v1/models/affine:predict"),
        ("POST", "/v1/models/affine:PREDICT"),
    ],
)
def test_malformed_v1_paths_are_400(tfs, http, method, path):
    response = http.request(method, tfs.rest + path, content=b'{"instances": [[1, 2, 3]]}')
    assert_error(response, 400, f"Malformed request: {method} {path}")


def test_paths_outside_v1_are_404(tfs, http):
    response = http.get(tfs.rest + "/v2/models/affine")
    assert response.status_code == 404


def test_paths_are_case_insensitive_and_names_url_decoded(tfs, http):
    response = post(http, tfs.rest, "/V1/MODELS/aff%69ne:predict", {"instances": [[1, 2, 3]]})
    assert response.json() == {"predictions": [AFFINE_V2]}


# ----------------------------------------------------------------------------- status and metadata


def _status(version: int, state: str = "AVAILABLE") -> dict:
    return {"version": str(version), "state": state, "status": {"error_code": "OK", "error_message": ""}}


def test_status_lists_versions_in_descending_order(tfs, http):
    response = http.get(tfs.rest + "/v1/models/affine_all")
    assert response.status_code == 200
    assert response.json() == {"model_version_status": [_status(2), _status(1)]}


def test_status_ignores_a_label(tfs, http):
    response = http.get(tfs.rest + "/v1/models/affine_all/labels/not-a-label")
    assert response.json() == {"model_version_status": [_status(2), _status(1)]}


def test_status_of_one_version(tfs, http):
    response = http.get(tfs.rest + "/v1/models/affine_all/versions/1")
    assert response.json() == {"model_version_status": [_status(1)]}


def test_status_of_missing_version_is_404(tfs, http):
    assert_error(
        http.get(tfs.rest + "/v1/models/affine_all/versions/7"), 404, "Could not find version 7 of model affine_all"
    )


def test_status_of_unknown_model_is_404(tfs, http):
    assert_error(http.get(tfs.rest + "/v1/models/nope"), 404, "Could not find any versions of model nope")


def test_status_without_model_name_is_400(tfs, http):
    assert_error(http.get(tfs.rest + "/v1/models"), 400, "Missing model name in request.")


def test_metadata_has_tf_serving_json_shape(tfs, http):
    response = http.get(tfs.rest + "/v1/models/affine/metadata")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"model_spec", "metadata"}
    assert body["model_spec"] == {"name": "affine", "signature_name": "", "version": "2"}
    assert list(body["metadata"]) == ["signature_def"]
    signature_map = body["metadata"]["signature_def"]
    assert list(signature_map) == ["signature_def"]  # the Any is unpacked: no "@type"
    signatures = signature_map["signature_def"]
    assert set(signatures) == {"serving_default", "__saved_model_init_op"}
    shape = {"dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}], "unknown_rank": False}
    assert signatures["serving_default"] == {
        "inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": shape, "name": "serving_default_x:0"}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "tensor_shape": shape, "name": "StatefulPartitionedCall:0"}},
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }


def test_metadata_of_a_specific_version(tfs, http):
    response = http.get(tfs.rest + "/v1/models/affine_all/versions/1/metadata")
    assert response.json()["model_spec"] == {"name": "affine_all", "signature_name": "", "version": "1"}


def test_metadata_of_unknown_model_is_404(tfs, http):
    assert_error(http.get(tfs.rest + "/v1/models/nope/metadata"), 404, "Servable not found for request: Latest(nope)")


# ----------------------------------------------------------------------------- classify / regress


def test_classify_on_a_predict_signature_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/affine:classify", {"examples": [{"x": [1.0, 2.0, 3.0]}]})
    assert_error(response, 400, re.compile(r"^No classification inputs found in SignatureDef: "))


def test_regress_on_a_multi_input_signature_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/multi:regress", {"examples": [{"a": [1.0, 2.0]}]})
    assert_error(response, 400, "Expected one input Tensor.")


def test_classify_without_examples_is_400(tfs, http):
    response = post(http, tfs.rest, "/v1/models/multi:classify", {"signature_name": "classify"})
    assert_error(response, 400, re.compile(r"When method is classify, key 'examples' is expected and was not found$"))


def test_classify_on_a_classification_signature(tfs, http):
    body = {"signature_name": "classify", "examples": [{"f": 0.0}, {"f": 2.0}]}
    response = post(http, tfs.rest, "/v1/models/multi:classify", body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [[label for label, _ in row] for row in results] == [["neg", "pos"], ["neg", "pos"]]
    positive = 1 / (1 + math.exp(-2.0))
    assert results[0][1][1] == pytest.approx(0.5) and results[1][1][1] == pytest.approx(positive, rel=1e-5)


def test_regress_with_context_merged_into_examples(tfs, http):
    body = {"signature_name": "regress", "context": {"f": [1.25]}, "examples": [{}, {}]}
    response = post(http, tfs.rest, "/v1/models/multi:regress", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [2.5, 2.5]}


# ----------------------------------------------------------------------------- metrics


def test_prometheus_metrics_count_requests_by_model_and_status(tfs, http):
    post(http, tfs.rest, "/v1/models/affine:predict", {"instances": [[1, 2, 3]]})
    post(http, tfs.rest, "/v1/models/nope:predict", {"instances": [[1, 2, 3]]})
    response = http.get(tfs.rest + "/monitoring/prometheus/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    ok = re.search(r'^:tensorflow:serving:request_count\{model_name="affine",status="OK"\} (\d+)$', text, re.M)
    missing = re.search(
        r'^:tensorflow:serving:request_count\{model_name="nope",status="NOT_FOUND"\} (\d+)$', text, re.M
    )
    assert ok and int(ok.group(1)) >= 1
    assert missing and int(missing.group(1)) >= 1
    assert re.search(
        r":tensorflow:serving:request_latency_bucket"
        r'\{model_name="affine",API="predict",entrypoint="REST",le="10"\} \d+$',
        text,
        re.M,
    )
