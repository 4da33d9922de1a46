"""The server process: flags, readiness log lines, startup failures and shutdown on SIGTERM."""

from __future__ import annotations

import signal

import httpx
import pytest

from . import tfkit

FAILED = "Failed to start server. Error: "


@pytest.fixture(scope="module")
def solo(saved_models, tmp_path_factory):
    """--model_name/--model_base_path instead of a config file (default latest policy)."""
    root = tmp_path_factory.mktemp("tfs_solo")
    base = tfkit.copy_versions(saved_models / "affine", root / "models" / "solo", [1, 2])
    server = tfkit.start_server(root / "server", ["--model_name=solo", f"--model_base_path={base}"], ["solo"])
    yield server
    server.stop()


def test_single_model_flags_serve_the_latest_version(solo, http):
    response = http.get(f"{solo.rest}/v1/models/solo")
    assert [(s["version"], s["state"]) for s in response.json()["model_version_status"]] == [("2", "AVAILABLE")]


def test_readiness_is_logged_like_tf_serving(solo):
    log = solo.log_text()
    assert f"Running gRPC ModelServer at 0.0.0.0:{solo.grpc_port} ..." in log
    assert f"Exporting HTTP/REST API at:localhost:{solo.rest_port} ..." in log


def test_sigterm_stops_the_server(solo):
    code = solo.stop(timeout=15.0)
    # The stand-in shuts down cleanly (status 0); the real binary may instead die of the signal (in a container,
    # docker run reports that as 128 + the signal).
    assert code == 0 or (tfkit.real_binary is not None and code in (-signal.SIGTERM, 128 + signal.SIGTERM))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{solo.rest}/v1/models/solo", timeout=2.0)


def test_startup_fails_without_a_model_source(tmp_path):
    code, output = tfkit.run_to_exit(tmp_path, [])
    assert code == 255
    assert (
        f"{FAILED}INVALID_ARGUMENT: Both server_options.model_base_path and server_options.model_config_file are empty!"
    ) in output


def test_startup_fails_when_a_label_names_a_version_not_yet_loaded(tmp_path, saved_models):
    base = tfkit.copy_versions(saved_models / "affine", tmp_path / "models" / "affine", [1])
    config = tmp_path / "models.config"
    config.write_text(tfkit.config_text([tfkit.ModelEntry("affine", base, labels={"stable": 1})]))
    code, output = tfkit.run_to_exit(tmp_path / "server", [f"--model_config_file={config}"])
    assert code == 255
    assert (
        f"{FAILED}FAILED_PRECONDITION: Request to assign label to version 1 of model affine, "
        "which is not currently available for inference"
    ) in output


def test_startup_fails_when_a_model_cannot_load(tmp_path):
    base = tmp_path / "models" / "broken"
    (base / "1").mkdir(parents=True)
    config = tmp_path / "models.config"
    config.write_text(tfkit.config_text([tfkit.ModelEntry("broken", base)]))
    code, output = tfkit.run_to_exit(tmp_path / "server", [f"--model_config_file={config}", "--max_num_load_retries=0"])
    assert code == 255
    assert (
        f"{FAILED}UNKNOWN: 1 servable(s) did not become available: {{{{{{name: broken version: 1}} due to error: "
        f"NOT_FOUND: Could not find SavedModel .pb or .pbtxt at supplied export directory path: {base / '1'}"
    ) in output
