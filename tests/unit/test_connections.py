"""Connection hygiene's arithmetic (gateway/api/connections.py): the listeners' connection limits fit the open
file limit, the soft limit is raised to the hard one, the refusal is a whole HTTP answer. The protocol itself runs
against real clients in tests/integration/test_resilience.py."""

from __future__ import annotations

import resource

from gateway.api.connections import Refusal, grpc_options, listener_limit, raise_fd_limit
from gateway.settings import Settings


def test_listener_limits_stay_inside_the_descriptor_limit() -> None:
    assert listener_limit(10_000, 1, limit=1_048_576) == 10_000  # plenty: as configured
    assert listener_limit(10_000, 2, limit=20_000) == 9_000  # 10 % kept for the rest, shared by two listeners
    assert listener_limit(10_000, 2, limit=1024) == 384  # at least 256 kept
    assert listener_limit(10_000, 2, limit=100) == 16  # never nothing


def test_the_soft_file_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = raise_fd_limit()
    assert soft == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_a_refused_connection_gets_a_whole_503_answer() -> None:
    head, _, body = Refusal.connection_limit(250).body.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"retry-after: 1" in lines and b"connection: close" in lines
    assert f"content-length: {len(body)}".encode() in lines
    assert b"connection limit (250 per worker)" in body


def test_the_grpc_listener_gets_the_same_limits() -> None:
    options = dict(grpc_options(Settings(header_timeout_s=3, keepalive_timeout_s=60, max_connections=500,
                                         grpc_max_streams=64), listeners=2))
    assert options["grpc.server_handshake_timeout_ms"] == 3000
    assert options["grpc.max_connection_idle_ms"] == 60_000
    assert options["grpc.max_concurrent_streams"] == 64
    assert 16 <= options["grpc.max_allowed_incoming_connections"] <= 500
