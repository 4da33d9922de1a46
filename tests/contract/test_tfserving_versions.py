"""Version policies, file-system polling, availability-preserving switches and failed loads.

The "tfs" scenario serves one base directory (versions 1 and 2) under four version policies; the
"dyn" scenario polls its base directories every second (--file_system_poll_wait_seconds=1) and gives
up a failing load at once (--max_num_load_retries=0).
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import grpc
import httpx
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from . import tfkit

V1 = [2.5, 3.0, 3.5]  # affine version 1 on [1, 2, 3]
V2 = [3.5, 4.0, 4.5]  # affine version 2
WAIT_S = 20.0


def status(http: httpx.Client, base: str, model: str) -> list[tuple[int, str, str]]:
    response = http.get(f"{base}/v1/models/{model}")
    response.raise_for_status()
    return [(int(s["version"]), s["state"], s["status"]["error_code"]) for s in response.json()["model_version_status"]]


def predict(http: httpx.Client, base: str, path: str) -> list[float]:
    response = http.post(f"{base}/v1/models/{path}:predict", content=json.dumps({"instances": [[1, 2, 3]]}))
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def wait_for(condition, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- policies


def test_latest_policy_serves_only_the_highest_version(tfs, http):
    assert status(http, tfs.rest, "affine") == [(2, "AVAILABLE", "OK")]
    assert predict(http, tfs.rest, "affine") == V2


def test_all_policy_serves_every_version_and_latest_is_highest(tfs, http):
    assert status(http, tfs.rest, "affine_all") == [(2, "AVAILABLE", "OK"), (1, "AVAILABLE", "OK")]
    assert predict(http, tfs.rest, "affine_all/versions/1") == V1
    assert predict(http, tfs.rest, "affine_all") == V2


def test_latest_policy_with_two_versions(tfs, http):
    assert status(http, tfs.rest, "affine_latest2") == [(2, "AVAILABLE", "OK"), (1, "AVAILABLE", "OK")]


def test_specific_policy_serves_only_the_listed_version(tfs, http):
    assert status(http, tfs.rest, "affine_specific") == [(1, "AVAILABLE", "OK")]
    assert predict(http, tfs.rest, "affine_specific") == V1
    response = http.post(f"{tfs.rest}/v1/models/affine_specific/versions/2:predict", content='{"instances":[[1,2,3]]}')
    assert response.status_code == 404


def test_children_that_are_not_integers_are_ignored(tfs, http):
    children = sorted(p.name for p in (tfs.root / "models" / "affine").iterdir())
    assert children == ["1", "2", "README", "v3"]
    assert status(http, tfs.rest, "affine_all") == [(2, "AVAILABLE", "OK"), (1, "AVAILABLE", "OK")]


# ----------------------------------------------------------------------------- polling


class _Hammer:
    """Sends predictions for Latest(model) over REST and gRPC until stopped; records every outcome."""

    def __init__(self, scenario, model: str) -> None:
        self.scenario = scenario
        self.model = model
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.rest_results: list[list[float]] = []
        self.grpc_versions: list[int] = []
        self.threads = [threading.Thread(target=self._rest), threading.Thread(target=self._grpc)]

    def __enter__(self) -> _Hammer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _rest(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(
                        f"{self.scenario.rest}/v1/models/{self.model}:predict", content='{"instances":[[1,2,3]]}'
                    )
                    if response.status_code != 200:
                        self.failures.append(f"REST {response.status_code}: {response.text}")
                    else:
                        self.rest_results.append(response.json()["predictions"][0])
                except httpx.HTTPError as exc:
                    self.failures.append(f"REST {exc!r}")

    def _grpc(self) -> None:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(self.scenario.channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1, 2, 3]], dtype=np.float32)))
        while not self.stop.is_set():
            try:
                response = stub.Predict(request, timeout=10.0)
                self.grpc_versions.append(response.model_spec.version.value)
            except grpc.RpcError as exc:
                self.failures.append(f"gRPC {exc.code()}: {exc.details()}")


def test_new_version_directory_is_served_without_a_gap(dyn, http, saved_models):
    base = dyn.root / "models" / "poll"
    assert status(http, dyn.rest, "poll") == [(1, "AVAILABLE", "OK")]
    with _Hammer(dyn, "poll") as hammer:
        time.sleep(0.3)
        tfkit.add_version_atomically(saved_models / "affine" / "2", base, 2)
        wait_for(lambda: hammer.grpc_versions and hammer.grpc_versions[-1] == 2, "version 2 to be served")
        wait_for(lambda: status(http, dyn.rest, "poll")[-1][1] == "END", "version 1 to be unloaded")
        time.sleep(0.3)
    assert hammer.failures == []
    assert len(hammer.rest_results) > 5 and len(hammer.grpc_versions) > 5
    assert all(result in (V1, V2) for result in hammer.rest_results)
    assert hammer.rest_results[-1] == V2
    first_v2 = hammer.grpc_versions.index(2)
    assert set(hammer.grpc_versions[:first_v2]) == {1} and set(hammer.grpc_versions[first_v2:]) == {2}
    assert status(http, dyn.rest, "poll") == [(2, "AVAILABLE", "OK"), (1, "END", "OK")]


def test_removing_the_latest_version_directory_reverts_to_the_previous_one(dyn, http):
    base = dyn.root / "models" / "revert"
    assert predict(http, dyn.rest, "revert") == V2
    with _Hammer(dyn, "revert") as hammer:
        shutil.rmtree(base / "2")
        wait_for(lambda: status(http, dyn.rest, "revert") == [(2, "END", "OK"), (1, "AVAILABLE", "OK")], "revert")
    assert hammer.failures == []
    assert predict(http, dyn.rest, "revert") == V1


def test_a_version_that_fails_to_load_is_reported_with_its_error(dyn, http):
    base = dyn.root / "models" / "fails"
    (base / "2").mkdir()  # no saved_model.pb

    def failed() -> dict | None:
        response = http.get(f"{dyn.rest}/v1/models/fails")
        versions = {s["version"]: s for s in response.json()["model_version_status"]}
        return versions if versions.get("2", {}).get("state") == "END" else None

    versions = wait_for(failed, "version 2 to fail")
    assert versions["2"]["status"]["error_code"] == "NOT_FOUND"
    assert versions["2"]["status"]["error_message"].startswith(
        f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {base / '2'}"
    )
    assert versions["1"] == {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert predict(http, dyn.rest, "fails") == V1


def test_a_failing_warmup_fails_the_load(dyn, http, saved_models):
    base = dyn.root / "models" / "warm"
    staging = dyn.root / "models" / "warm-staging"
    shutil.copytree(saved_models / "affine" / "2", staging)
    tfkit.write_warmup(staging, input_name="not_an_input")  # the replayed request is invalid
    staging.rename(base / "2")

    def settled() -> dict | None:
        versions = {s["version"]: s for s in http.get(f"{dyn.rest}/v1/models/warm").json()["model_version_status"]}
        return versions if versions.get("2", {}).get("state") == "END" else None

    versions = wait_for(settled, "version 2 to fail its warm-up")
    assert versions["2"]["status"]["error_code"] == "INVALID_ARGUMENT"
    assert versions["1"]["state"] == "AVAILABLE"  # version 1 warmed up fine at startup and keeps serving
    assert predict(http, dyn.rest, "warm") == V1


def test_a_failing_load_is_retried_in_loading_state_until_its_directory_goes(relaxed, http):
    base = relaxed.root / "models" / "retrying"
    (base / "3").mkdir()

    def versions() -> dict[int, tuple[str, str]]:
        body = http.get(f"{relaxed.rest}/v1/models/retrying").json()
        return {int(s["version"]): (s["state"], s["status"]["error_code"]) for s in body["model_version_status"]}

    wait_for(lambda: versions().get(3) == ("LOADING", "OK"), "version 3 to be (re)loading")
    time.sleep(1.5)  # the first attempt failed at once; the retry waits a minute
    assert versions() == {3: ("LOADING", "OK"), 1: ("AVAILABLE", "OK")}
    shutil.rmtree(base / "3")  # no longer aspired: the retry is cancelled and the load ends in error
    wait_for(lambda: versions().get(3, ("",))[0] == "END", "version 3 to end")
    assert versions() == {3: ("END", "NOT_FOUND"), 1: ("AVAILABLE", "OK")}
