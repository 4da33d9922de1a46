"""Compile gateway/protos/*.proto with grpcio-tools into *_pb2.py and *_pb2.pyi next to them.

A build step (``python -m gateway.protos``), never run on import: grpcio-tools is a build dependency only (the
``build`` extra), absent from the container image. The compiler runs in a subprocess (``python -m
grpc_tools.protoc``, which adds the well-known types' include path). Outputs are written to a temporary
directory and moved into place one by one with os.replace, so a concurrent importer sees either the old or the
new file, never a half-written one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
#: The directory that holds the ``gateway`` package: protoc's -I and --*_out, so imports are gateway.protos.x_pb2.
SOURCE_ROOT = PROTO_DIR.parents[1]
PACKAGE_DIR = Path("gateway", "protos")
OUTPUT_SUFFIXES = ("_pb2.py", "_pb2.pyi")


def proto_names(root: Path = SOURCE_ROOT) -> list[str]:
    """The .proto files' stems, sorted."""
    directory = root / PACKAGE_DIR
    return sorted(entry.name[: -len(".proto")] for entry in os.scandir(directory) if entry.name.endswith(".proto"))


def stale(root: Path = SOURCE_ROOT) -> list[str]:
    """Stems whose _pb2.py or _pb2.pyi is missing or older than the .proto (one directory scan)."""
    mtimes = {entry.name: entry.stat().st_mtime_ns for entry in os.scandir(root / PACKAGE_DIR)}
    out = []
    for name, mtime in mtimes.items():
        if not name.endswith(".proto"):
            continue
        stem = name[: -len(".proto")]
        if any(mtimes.get(stem + suffix, -1) < mtime for suffix in OUTPUT_SUFFIXES):
            out.append(stem)
    return sorted(out)


def generate(root: Path = SOURCE_ROOT) -> list[Path]:
    """Compile every root/gateway/protos/*.proto; returns the files written. Raises RuntimeError on errors."""
    root = root.resolve()
    target = root / PACKAGE_DIR
    names = proto_names(root)
    sources = [(PACKAGE_DIR / f"{name}.proto").as_posix() for name in names]
    # Taken before compiling: a .proto edited while protoc runs must still look newer than its outputs.
    source_mtimes = {name: (target / f"{name}.proto").stat().st_mtime_ns for name in names}
    written: list[Path] = []
    with tempfile.TemporaryDirectory(dir=target, prefix=".build-") as tmp:
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{root}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            *sources,
        ]
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"protoc failed ({done.returncode}): {' '.join(command)}\n{done.stderr.strip()}")
        for name in names:
            source_mtime = source_mtimes[name]
            for suffix in OUTPUT_SUFFIXES:
                produced = Path(tmp, PACKAGE_DIR, name + suffix)
                final = target / (name + suffix)
                os.replace(produced, final)
                # A .proto stamped in the future (clock skew, archives) must not look stale forever.
                if final.stat().st_mtime_ns < source_mtime:
                    os.utime(final, ns=(source_mtime, source_mtime))
                written.append(final)
    return written
