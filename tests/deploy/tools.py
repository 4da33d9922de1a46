"""Where the deployment validators are: the ones scripts/bootstrap installs (pip into the virtualenv, apt for
promtool). The tests under tests/deploy/ need no Docker engine and no cluster (tests that need an engine skip)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A validator's executable: the virtualenv's (pip-installed), else PATH's (apt-installed); a clear failure if
    neither, since scripts/bootstrap installs all of them."""
    found = VENV_BIN / name if (VENV_BIN / name).exists() else shutil.which(name)
    assert found, f"{name} is not installed: run scripts/bootstrap (make test does when it changed)"
    return str(found)
