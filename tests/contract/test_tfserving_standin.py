"""The stand-in's own pieces that no server round trip can reach.

tfserving_standin accepts ``--flag value`` besides TensorFlow's ``--flag=value``, and maps every
error code onto TF Serving's HTTP status (only some codes can be provoked through a live server).
"""

from __future__ import annotations

import pytest

from tfserving_standin import flags, jsonwriter
from tfserving_standin.status import Code, http_status, truncate_for_grpc


def test_standin_accepts_tf_flag_syntax_and_space_separated_values():
    options, unknown, given = flags.parse(
        [
            "--port",
            "9000",
            "--rest_api_port=9001",
            "--allow_version_labels_for_unavailable_models",
            "--file_system_poll_wait_seconds",
            "0",
            "--enable_batching=false",
            "--model_config_file=/models/models.config",
        ]
    )
    assert unknown == []
    assert (options.port, options.rest_api_port, options.file_system_poll_wait_seconds) == (9000, 9001, 0)
    assert options.allow_version_labels_for_unavailable_models is True
    assert options.enable_batching is False
    assert options.model_config_file == "/models/models.config"
    assert options.model_config_file_poll_wait_seconds == 0 and options.rest_api_timeout_in_ms == 30000
    assert given == {
        "port",
        "rest_api_port",
        "allow_version_labels_for_unavailable_models",
        "file_system_poll_wait_seconds",
        "enable_batching",
        "model_config_file",
    }


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (Code.OK, 200),
        (Code.CANCELLED, 499),
        (Code.UNKNOWN, 500),
        (Code.INVALID_ARGUMENT, 400),
        (Code.DEADLINE_EXCEEDED, 504),
        (Code.NOT_FOUND, 404),
        (Code.ALREADY_EXISTS, 409),
        (Code.PERMISSION_DENIED, 403),
        (Code.RESOURCE_EXHAUSTED, 429),
        (Code.FAILED_PRECONDITION, 400),
        (Code.ABORTED, 409),
        (Code.OUT_OF_RANGE, 400),
        (Code.UNIMPLEMENTED, 501),
        (Code.INTERNAL, 500),
        (Code.UNAVAILABLE, 503),
        (Code.DATA_LOSS, 500),
        (Code.UNAUTHENTICATED, 401),
    ],
)
def test_error_codes_map_to_tf_serving_http_statuses(code, status):
    assert http_status(code) == status


def test_grpc_messages_are_cut_after_1024_characters():
    assert truncate_for_grpc("x" * 1024) == "x" * 1024
    assert truncate_for_grpc("y" * 1025) == "y" * 1024 + "...TRUNCATED"


def test_error_body_layout_matches_rapidjson_pretty_writer():
    assert jsonwriter.error_body('bad "input"\n') == b'{\n    "error": "bad \\"input\\"\\n"\n}'
