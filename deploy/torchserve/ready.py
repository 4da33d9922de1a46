"""TorchServe readiness, model level: every named model has a READY worker for each of its registered versions.

``python ready.py [--management URL] MODEL...``, run inside the TorchServe container (the compose healthcheck and
the Helm chart's probes) from TorchServe's working directory. With token authorization on, every port but the
metrics port needs a key (``/ping`` included): the management key is read from ``key_file.json`` there, and when
it has expired (60 min) it is rotated with the API key, as the gateway does. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

KEY_FILE = Path("key_file.json")
TIMEOUT_S = 3.0


def _key(kind: str) -> str | None:
    if not KEY_FILE.exists():
        return None  # token authorization is off
    return str(json.loads(KEY_FILE.read_text(encoding="utf-8"))[kind]["key"])


def _get(url: str, key: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _invalid_key(status: int, body: bytes) -> bool:
    try:
        return status == 400 and json.loads(body).get("type") == "InvalidKeyException"
    except ValueError:
        return False


def describe(management: str, model: str) -> tuple[int, bytes]:
    url = f"{management}/models/{model}/all"
    status, body = _get(url, _key("management"))
    if _invalid_key(status, body):  # expired: rotate it (TorchServe rewrites key_file.json), then once more
        _get(f"{management}/token?type=management", _key("API"))
        status, body = _get(url, _key("management"))
    return status, body


def unready(management: str, model: str) -> str | None:
    status, body = describe(management, model)
    if status != 200:
        return f"{status} {body[:200]!r}"
    versions = json.loads(body)
    if not versions:
        return "no version registered"
    for version in versions:
        if not any(worker.get("status") == "READY" for worker in version.get("workers", [])):
            return f"version {version.get('modelVersion')} has no READY worker"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--management", default="http://127.0.0.1:8081")
    parser.add_argument("models", nargs="+")
    args = parser.parse_args(argv)
    for model in args.models:
        try:
            problem = unready(args.management, model)
        except (OSError, ValueError, KeyError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            print(f"torchserve: model {model} not ready: {problem}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
