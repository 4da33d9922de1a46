"""ModelService.HandleReloadConfigRequest, version labels, and --model_config_file polling.

"dyn" enforces the strict label rule (labels only on AVAILABLE versions); "relaxed" runs with
--allow_version_labels_for_unavailable_models, labels in its startup config, and polls its config
file every second. Every reload sends the scenario's own models too, since a reload replaces the
whole config.
"""

from __future__ import annotations

import dataclasses
import json
import time

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from . import tfkit

V1 = [2.5, 3.0, 3.5]
V2 = [3.5, 4.0, 4.5]
RELOAD_TIMEOUT = 60.0


def reload(scenario, entries) -> model_management_pb2.ReloadConfigResponse:
    stub = model_service_pb2_grpc.ModelServiceStub(scenario.channel)
    request = model_management_pb2.ReloadConfigRequest(config=tfkit.config_proto(entries))
    return stub.HandleReloadConfigRequest(request, timeout=RELOAD_TIMEOUT)


def reload_error(scenario, entries) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        reload(scenario, entries)
    return info.value


def with_entry(entries, entry):
    return [e for e in entries if e.name != entry.name] + [entry]


def labeled(entries, model: str, labels: dict[str, int]):
    return [dataclasses.replace(e, labels=labels) if e.name == model else e for e in entries]


def predict(http: httpx.Client, base: str, path: str) -> httpx.Response:
    return http.post(f"{base}/v1/models/{path}:predict", content=json.dumps({"instances": [[1, 2, 3]]}))


def predictions(http: httpx.Client, base: str, path: str) -> list[float]:
    response = predict(http, base, path)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def states(http: httpx.Client, base: str, model: str) -> list[tuple[int, str]]:
    response = http.get(f"{base}/v1/models/{model}")
    if response.status_code != 200:
        return []
    return [(int(s["version"]), s["state"]) for s in response.json()["model_version_status"]]


def wait_for(condition, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return value


# ----------------------------------------------------------------------------- reloads


def test_reload_adds_a_model_and_returns_once_it_is_available(dyn, http):
    added = tfkit.ModelEntry("added", dyn.root / "models" / "labeled")
    try:
        response = reload(dyn, [*dyn.entries, added])
        assert response.status.error_code == 0
        assert predictions(http, dyn.rest, "added") == V2  # no waiting: the reload waited for it
    finally:
        reload(dyn, dyn.entries)


def test_reload_unloads_models_left_out(dyn, http):
    reload(dyn, [*dyn.entries, tfkit.ModelEntry("temporary", dyn.root / "models" / "labeled")])
    assert predictions(http, dyn.rest, "temporary") == V2
    reload(dyn, dyn.entries)
    wait_for(lambda: states(http, dyn.rest, "temporary") == [(2, "END")], "temporary to be unloaded")
    response = predict(http, dyn.rest, "temporary")
    assert response.status_code == 404
    assert response.json() == {"error": "Servable not found for request: Latest(temporary)"}


def test_reload_waits_only_for_new_model_names(dyn, http):
    junk_existing = dyn.root / "models" / "junk_existing"
    (junk_existing / "9").mkdir(parents=True)  # not a SavedModel
    junk_new = dyn.root / "models" / "junk_new"
    (junk_new / "7").mkdir(parents=True)
    changed = [dataclasses.replace(e, base_path=junk_existing) if e.name == "existing" else e for e in dyn.entries]
    try:
        error = reload_error(dyn, [*changed, tfkit.ModelEntry("brand_new", junk_new)])
        assert error.code() == grpc.StatusCode.UNKNOWN
        assert error.details().startswith(
            "1 model(s) did not become available: {{{name: brand_new version: 7} due to error: NOT_FOUND: "
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {junk_new / '7'}"
        )
        assert "existing" not in error.details()
        # The existing model's new version fails on its own schedule; version 2 keeps serving meanwhile.
        wait_for(lambda: (9, "END") in states(http, dyn.rest, "existing"), "existing/9 to fail")
        assert predictions(http, dyn.rest, "existing") == V2
    finally:
        reload(dyn, dyn.entries)


def test_reload_accepts_only_a_model_config_list(dyn):
    stub = model_service_pb2_grpc.ModelServiceStub(dyn.channel)
    request = model_management_pb2.ReloadConfigRequest(config=model_server_config_pb2.ModelServerConfig())
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleReloadConfigRequest(request, timeout=RELOAD_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is currently supported"
    )


def test_reload_rejects_duplicate_model_names(dyn):
    error = reload_error(dyn, [*dyn.entries, dyn.entries[0]])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"Illegal to list model {dyn.entries[0].name} multiple times in config list"


def test_reload_rejects_relative_base_paths(dyn):
    from pathlib import Path

    error = reload_error(dyn, [*dyn.entries, tfkit.ModelEntry("relative", Path("models/relative"))])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Expected model relative to have an absolute path or URI; got base_path()=models/relative"


# ----------------------------------------------------------------------------- labels (strict)


def test_label_on_an_available_version_is_served_and_named(dyn, http):
    reload(dyn, labeled(dyn.entries, "labeled", {"stable": 1}))
    try:
        assert predictions(http, dyn.rest, "labeled/labels/stable") == V1
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "labeled"
        request.model_spec.version_label = "stable"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1, 2, 3]], dtype=np.float32)))
        stub = prediction_service_pb2_grpc.PredictionServiceStub(dyn.channel)
        response = stub.Predict(request, timeout=10.0)
        assert response.model_spec.version.value == 1
    finally:
        reload(dyn, dyn.entries)


def test_label_on_an_unavailable_version_is_rejected_and_labels_are_kept(dyn, http):
    reload(dyn, labeled(dyn.entries, "labeled", {"stable": 1}))
    try:
        error = reload_error(dyn, labeled(dyn.entries, "labeled", {"stable": 1, "next": 3}))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.details() == (
            "Request to assign label to version 3 of model labeled, which is not currently available for inference"
        )
        assert predictions(http, dyn.rest, "labeled/labels/stable") == V1
        response = predict(http, dyn.rest, "labeled/labels/next")
        assert response.status_code == 400
        assert response.json() == {"error": "Unrecognized servable version label: next"}
    finally:
        reload(dyn, dyn.entries)


def test_label_moves_between_available_versions(dyn, http):
    reload(dyn, labeled(dyn.entries, "labeled", {"stable": 1}))
    try:
        assert predictions(http, dyn.rest, "labeled/labels/stable") == V1
        reload(dyn, labeled(dyn.entries, "labeled", {"stable": 2}))
        assert predictions(http, dyn.rest, "labeled/labels/stable") == V2
    finally:
        reload(dyn, dyn.entries)


# ----------------------------------------------------------------------------- labels (relaxed) and config polling


def _write_and_reload(scenario, entries) -> model_management_pb2.ReloadConfigResponse:
    """The config file is polled too: keep it in step with gRPC reloads."""
    scenario.config_path.write_text(tfkit.config_text(entries))
    return reload(scenario, entries)


def test_labels_in_the_startup_config_with_the_flag(relaxed, http):
    assert predictions(http, relaxed.rest, "canary/labels/stable") == V1
    assert predictions(http, relaxed.rest, "canary/labels/canary") == V2


def test_flag_allows_a_new_label_on_an_unavailable_version(relaxed, http):
    entries = labeled(relaxed.entries, "canary", {"stable": 1, "canary": 2, "future": 9})
    try:
        response = _write_and_reload(relaxed, entries)
        assert response.status.error_code == 0
        response = predict(http, relaxed.rest, "canary/labels/future")
        assert response.status_code == 404
        assert response.json() == {"error": "Servable not found for request: Specific(canary, 9)"}
    finally:
        _write_and_reload(relaxed, relaxed.entries)


def test_flag_does_not_allow_moving_a_label_to_an_unavailable_version(relaxed, http):
    error = reload_error(relaxed, labeled(relaxed.entries, "canary", {"stable": 9, "canary": 2}))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "Request to assign label to version 9 of model canary, which is not currently available for inference"
    )
    assert predictions(http, relaxed.rest, "canary/labels/stable") == V1


def test_config_file_is_polled(relaxed, http):
    entries = [*relaxed.entries, tfkit.ModelEntry("from_file", relaxed.root / "models" / "canary")]
    relaxed.config_path.write_text(tfkit.config_text(entries))
    try:
        wait_for(lambda: states(http, relaxed.rest, "from_file") == [(2, "AVAILABLE")], "from_file to load")
        assert predictions(http, relaxed.rest, "from_file") == V2
    finally:
        relaxed.config_path.write_text(tfkit.config_text(relaxed.entries))
        wait_for(lambda: states(http, relaxed.rest, "from_file") == [(2, "END")], "from_file to unload")
