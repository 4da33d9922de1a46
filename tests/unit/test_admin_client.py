"""`gateway rollout start` flags -> the lifecycle part of POST /rollouts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.admin import client as admin_client
from gateway.admin.client import AdminError, lifecycle_spec


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    admin_client.add_rollout_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["rollout", "start", "scale", "2", *argv])


BODY: dict[str, Any] = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


def test_no_lifecycle_flags_no_lifecycle() -> None:
    assert lifecycle_spec(parse()) == {}


def test_torchserve_deploy_warmup_retire(tmp_path: Path) -> None:
    warm = tmp_path / "warm.json"
    warm.write_text(json.dumps(BODY))
    spec = lifecycle_spec(parse("--archive", "scale-2.mar", "--deploy-workers", "2", "--deploy-timeout", "60",
                                "--warmup", str(warm), "--warmup-count", "4", "--retire"))
    assert spec == {"deploy": {"archive": "scale-2.mar", "workers": 2, "timeout_s": 60.0},
                    "warmup": {"body": BODY, "count": 4}, "retire": True}


def test_tf_deploy_without_archive_and_a_list_of_samples(tmp_path: Path) -> None:
    warm = tmp_path / "warm.json"
    warm.write_text(json.dumps([BODY, BODY]))
    assert lifecycle_spec(parse("--deploy", "--warmup", str(warm))) == {"deploy": {}, "warmup": [BODY, BODY]}


def test_bad_warmup_flags_are_refused_before_any_call(tmp_path: Path) -> None:
    with pytest.raises(AdminError, match="cannot read"):
        lifecycle_spec(parse("--warmup", str(tmp_path / "missing.json")))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AdminError, match="cannot read"):
        lifecycle_spec(parse("--warmup", str(bad)))
    with pytest.raises(AdminError, match="needs --warmup FILE"):
        lifecycle_spec(parse("--warmup-count", "3"))
    many = tmp_path / "many.json"
    many.write_text(json.dumps([BODY]))
    with pytest.raises(AdminError, match="single v2 inference body"):
        lifecycle_spec(parse("--warmup", str(many), "--warmup-count", "3"))
