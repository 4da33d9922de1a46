"""deploy/prometheus/prometheus.yml through promtool, Debian's (scripts/bootstrap installs it). The live scrape of
the same file is in tests/integration/test_deploy_configs.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.deploy.tools import REPO, tool

CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), "check", "config", str(path)], capture_output=True, text=True,
                          timeout=60)


def test_promtool_accepts_the_config_and_its_rules() -> None:
    done = check(CONFIG)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_promtool_refuses_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "prometheus.yml"
    broken.write_text(CONFIG.read_text().replace("scrape_interval: 5s", "scrape_interval: 5 seconds"))
    done = check(broken)
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr
