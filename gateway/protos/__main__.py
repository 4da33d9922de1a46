"""``python -m gateway.protos [--root DIR]``: (re)generate the *_pb2.py/*_pb2.pyi modules from the .proto files.

``--root`` names the directory holding the ``gateway`` package to build (default: this checkout); a build
step or a test can regenerate a copy of the sources without touching the importable package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.protos import _build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.protos", description="Regenerate gateway/protos/*_pb2.py(i)."
    )
    parser.add_argument("--root", type=Path, default=_build.SOURCE_ROOT, help="directory holding gateway/protos")
    args = parser.parse_args(argv)
    try:
        written = _build.generate(args.root)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
