"""Start, wait for and stop the real backend processes (TorchServe, TF Serving or its stand-in).

Used by ``gateway dev`` and by the pytest session fixtures.  This module never imports torch or
tensorflow: it only launches subprocesses and polls them over HTTP (httpx, always with a timeout).

Process hygiene
---------------
Every backend runs in its own session / process group (``start_new_session=True``).  TorchServe is
three layers deep: the ``torchserve`` Python launcher, the JVM it forks, and one Python worker per
model version forked by the JVM; all of them share the launcher's process group, so
:meth:`ManagedProcess.stop` signals the whole group (SIGTERM, then SIGKILL after ``timeout``) and
waits until no live (non-zombie) member of the group is left.  Three layers make orphans unlikely:

* :class:`Stack` (context manager) stops its processes in reverse order on exit, on
  ``KeyboardInterrupt`` and on SIGTERM/SIGHUP (turned into ``SystemExit`` in the main thread);
* an ``atexit`` hook stops every process that is still running when the interpreter exits;
* a tiny ``/bin/sh`` watchdog per process (in its own session) holds the read end of a pipe whose
  write end only this Python process holds: when this process dies in any way, even SIGKILL, the
  pipe reaches EOF and the watchdog kills the backend's process group (TERM, then KILL after 10 s).

TorchServe facts measured here (torchserve 0.12.0, OpenJDK 17, torch 2.13 CPU, 2 cores)
-------------------------------------------------------------------------------------
* ``key_file.json`` is written to the JVM's *current directory* (``user.dir``; we run with
  ``cwd=workdir``), mode 0600, pretty-printed by Gson::

      {
        "management": {"key": "5OPL6XH4", "expiration time": "2026-11-25T15:39:05.040419296Z"},
        "inference":  {"key": "tee9L9bI", "expiration time": "2026-11-25T15:39:05.040410390Z"},
        "API":        {"key": "jeAf6JU0"}
      }

  Keys are 8 URL-safe base64 characters.  The inference and management keys expire
  ``token_expiration_min`` minutes (default 60) after they were generated; the API key never
  expires.  Nothing renews them automatically and an expired key is rejected exactly like a wrong
  one.  The file is NOT deleted when the server stops (only ``torchserve --stop`` deletes it), so
  :func:`start_torchserve` removes a stale one before starting.  Rewrites are in place
  (truncate + write, same inode), so a concurrent reader can see an empty or partial file:
  :func:`read_torchserve_key` retries on a parse error.
* With token auth on, EVERY inference-port request needs ``Authorization: Bearer <inference key>``,
  ``GET /ping`` included; every management-port request needs the management key; the metrics port
  needs nothing.  The scheme is case-sensitive (``bearer x`` is rejected).  A missing, wrong,
  expired or wrong-kind key (management or API key on the inference port) answers::

      HTTP/1.1 400 Bad Request
      content-type: application/json
      connection: close

      {"code": 400, "type": "InvalidKeyException",
       "message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly"}

  (pretty-printed).  Detect it by status 400 AND ``type == "InvalidKeyException"`` (see
  :func:`is_invalid_key_response`), not by the message: ``/token`` failures say "Token
  Authentication failed" instead.  Other errors use other types (404 ModelNotFoundException,
  503 InternalServerException...).  The connection is closed after it.
* An EXPIRED key is not replaced in ``key_file.json``: re-reading the file after an
  InvalidKeyException only helps after someone rotated the key.  A long-running client (the
  gateway) must itself rotate with the API key (below) when the re-read key is still rejected, or
  the stack must be started with a large ``token_expiration_min``.
* Rotation: ``POST /token?type=inference`` (or ``type=management``) on the MANAGEMENT port with
  ``Authorization: Bearer <API key>``.  Any method works (GET too).  Success is ``200`` with a body
  of just ``"\\n"``; the new key is not in the response, it is in ``key_file.json``, rewritten
  in place before the response is sent (the other kind's key and the API key are kept).  The old key
  is rejected from the next request on (400 InvalidKeyException).  On the inference port
  ``/token`` is 404 ResourceNotFoundException; with the management key or with ``type=API`` or no
  ``type`` it is 400 InvalidKeyException ("Token Authentication failed ...").  See
  :func:`rotate_torchserve_key`.
* Logging: there is no config.properties key for the log level; the JVM reads a log4j2 file given
  by ``torchserve --log-config FILE`` (or ``vmargs=-Dlog4j.configurationFile=file://...``).  The
  built-in configuration logs ``org.pytorch.serve`` at DEBUG to stdout AND ``logs/ts_log.log`` plus
  per-request access logs; we write ``workdir/log4j2.xml`` that sends everything to stdout (our
  log file) at ``log_level`` (default INFO), access log and metric logs off.
* The launcher writes ``.model_server.pid`` into ``TMPDIR`` and refuses to start ("TorchServe is
  already running") when that pid is a live TorchServe, so every instance gets its own TMPDIR.
  Worker sockets live there too (``$TMPDIR/.ts.sock.9000``...): AF_UNIX paths are limited to 107
  bytes, so a long workdir gets a short TMPDIR under the system temp directory instead.
* ``TS_CONFIG_FILE`` in the environment silently overrides ``--ts-config``; it is removed from the
  child's environment.
* Measured: ``/ping`` healthy ~0.7-0.8 s after launch; a synchronous one-worker registration
  ~0.8-1.2 s per version (tiny TorchScript models); the 4 model_repo archives + 2 set-defaults
  ~4.2 s in all.  RSS: launcher 15 MB, JVM 200-240 MB (default max heap is 1/4 of RAM), each
  worker 228-240 MB, so ~1.2 GB for 4 versions.  ``stop()`` takes ~2.5 s (JVM shutdown).
  While shutting down, the JVM respawns a worker that died ("Auto recovery"): the new process
  missed the first SIGTERM, so ``stop()`` repeats SIGTERM every second until the group is empty.
* The launcher exits 0 even when the JVM fails (e.g. "bind(..) failed: Address already in use");
  readiness therefore watches the process AND ``/ping`` and reports the log tail.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

__all__ = [
    "TFSERVING_MONITORING_CONFIG",
    "TORCHSERVE_CONFIG",
    "TORCHSERVE_INVALID_KEY_TYPE",
    "TORCHSERVE_LOCAL_KEYS",
    "EtcdCluster",
    "LocalStackError",
    "ManagedProcess",
    "Stack",
    "TFServingEndpoints",
    "TorchServeEndpoints",
    "free_port",
    "is_invalid_key_response",
    "read_properties",
    "read_torchserve_key",
    "render_model_config",
    "rotate_torchserve_key",
    "spawn_process",
    "start_etcd",
    "start_gateway",
    "start_prometheus",
    "start_tfserving",
    "start_torchserve",
    "torchserve_config",
]

KeyKind = Literal["inference", "management", "API"]

#: ``type`` field of TorchServe's JSON error for a missing/wrong/expired bearer key (status 400).
TORCHSERVE_INVALID_KEY_TYPE = "InvalidKeyException"

_REPO_ROOT = Path(__file__).resolve().parents[2]
#: TorchServe's settings wherever it runs: docker-compose.yml and the Helm chart mount this file, and
#: :func:`start_torchserve` starts the local TorchServe from it, replacing only ``TORCHSERVE_LOCAL_KEYS``.
TORCHSERVE_CONFIG = _REPO_ROOT / "deploy" / "torchserve" / "config.properties"
#: What must differ on one machine: where TorchServe listens (free ports on 127.0.0.1) and its model store.
TORCHSERVE_LOCAL_KEYS = (
    "inference_address", "management_address", "metrics_address", "grpc_inference_address",
    "grpc_management_address", "grpc_inference_port", "grpc_management_port", "model_store",
)
#: TF Serving's --monitoring_config_file (its Prometheus path), the same file compose and the chart mount.
TFSERVING_MONITORING_CONFIG = _REPO_ROOT / "deploy" / "tfserving" / "monitoring.config"

_POLL_INTERVAL = 0.1
_HTTP_TIMEOUT = 5.0
_LOG_TAIL_BYTES = 6000
# Longest TMPDIR we hand TorchServe: its worker sockets are "$TMPDIR/.ts.sock.<port>" and an
# AF_UNIX path holds at most 107 bytes.
_MAX_TS_TMPDIR = 80


class LocalStackError(RuntimeError):
    """A backend failed to start, to become ready, or to accept a model."""


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------

# The watchdog blocks on its stdin (a pipe whose only writer is this Python process); EOF means
# this process is gone.  stop() kills the watchdog itself once the group is gone.  $1 is the
# backend's process group id.
_WATCHDOG_SH = r"""
read -r _ignored
kill -TERM -"$1" 2>/dev/null || exit 0
i=0
while [ "$i" -lt 100 ] && kill -0 -"$1" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
kill -KILL -"$1" 2>/dev/null
exit 0
"""

_CLEANUP_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None
)
_live_lock = threading.Lock()
_live: dict[ManagedProcess, None] = {}  # an insertion-ordered set


def _group_alive(pgid: int) -> bool:
    """True while the process group has a member that is not a zombie."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: zombies count as alive, SIGKILL fallback copes
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." where comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass(eq=False)
class ManagedProcess:
    """A backend process running in its own process group, with its output in ``log_path``.

    ``timings`` holds measured durations in seconds (e.g. ``ready``, ``register:mlp/1``).
    """

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    timings: dict[str, float] = field(default_factory=dict)
    _watchdog: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _watchdog_fd: int | None = field(default=None, repr=False)
    _cleanup_dirs: list[Path] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def pgid(self) -> int:
        """The process group (and session) id: the leader's pid."""
        return self.popen.pid

    def running(self) -> bool:
        """True while the leader has not exited."""
        return self.popen.poll() is None

    def group_alive(self) -> bool:
        """True while any non-zombie process of the group (leader, JVM, workers...) is alive."""
        self.popen.poll()  # reap the leader if it exited
        return _group_alive(self.pgid)

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The end of the log file (decoded leniently), for error messages."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                data = f.read()
        except OSError as exc:
            return f"<no log: {exc}>"
        text = data.decode("utf-8", errors="replace")
        return ("...\n" if size > max_bytes else "") + text

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, wait up to ``timeout`` s, then SIGKILL it.

        Returns once no live process of the group is left (or 5 s after SIGKILL).  Idempotent and
        safe to call from several threads; later calls wait for the first one to finish.
        """
        with self._lock:
            if self._stopped:
                return
            completed = False
            try:
                pgid = self.pgid
                _signal_group(pgid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                next_term = time.monotonic() + 1.0
                while self.group_alive() and time.monotonic() < deadline:
                    if time.monotonic() >= next_term:
                        # TorchServe's JVM respawns a worker that died while it is shutting
                        # down; the new one missed the first SIGTERM.
                        _signal_group(pgid, signal.SIGTERM)
                        next_term = time.monotonic() + 1.0
                    time.sleep(0.05)
                if self.group_alive():
                    _signal_group(pgid, signal.SIGKILL)
                    deadline = time.monotonic() + 5.0
                    while self.group_alive() and time.monotonic() < deadline:
                        time.sleep(0.05)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=1.0)
                completed = True
            finally:
                if completed or not self.group_alive():
                    self._stopped = True
                    self._release_watchdog()
                    for d in self._cleanup_dirs:
                        shutil.rmtree(d, ignore_errors=True)
                    with _live_lock:
                        _live.pop(self, None)
                elif self._watchdog_fd is not None:
                    # Interrupted half-way (e.g. a second Ctrl-C): hand the group to the watchdog,
                    # which TERMs it and KILLs it 10 s later; a later stop() may still run.
                    with contextlib.suppress(OSError):
                        os.close(self._watchdog_fd)
                    self._watchdog_fd = None

    def _release_watchdog(self) -> None:
        # The group is gone (or SIGKILLed): the watchdog has nothing left to do.  Kill it before
        # closing its pipe so it never signals a process group id that may be reused later.
        if self._watchdog is not None:
            with contextlib.suppress(OSError):
                self._watchdog.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(timeout=2.0)
            self._watchdog = None
        if self._watchdog_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._watchdog_fd)
            self._watchdog_fd = None


def _stop_all_live() -> None:
    with _live_lock:
        procs = list(_live)
    for p in reversed(procs):
        with contextlib.suppress(Exception):
            p.stop(timeout=5.0)


atexit.register(_stop_all_live)


def spawn_process(
    name: str,
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    cleanup_dirs: Sequence[Path] = (),
) -> ManagedProcess:
    """Start ``argv`` in a new session with stdout+stderr appended to ``log_path``, plus its watchdog.

    The result is registered for the ``atexit`` cleanup; ``cleanup_dirs`` are removed by ``stop()``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = ManagedProcess(name=name, popen=popen, log_path=log_path, _cleanup_dirs=list(cleanup_dirs))
    with _live_lock:
        _live[proc] = None
    sh = shutil.which("sh")
    if sh is not None and os.name == "posix":
        read_fd, write_fd = os.pipe()  # both non-inheritable: later children never hold the writer
        try:
            proc._watchdog = subprocess.Popen(
                [sh, "-c", _WATCHDOG_SH, f"localstack-watchdog-{name}", str(popen.pid)],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            proc._watchdog_fd = write_fd
        except OSError:
            os.close(write_fd)
        finally:
            os.close(read_fd)
    return proc


_used_ports: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and was not handed out before by this process."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with _live_lock:
            if port not in _used_ports:
                _used_ports.add(port)
                return port
    raise LocalStackError("could not find a free TCP port")


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM/SIGHUP (main thread only) so a second Ctrl-C cannot abort a cleanup."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved: dict[int, Any] = {}
    for sig in (signal.SIGINT, *_CLEANUP_SIGNALS):
        saved[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _stop_after_failure(proc: ManagedProcess) -> None:
    with _signals_ignored():
        proc.stop()


def _fail(proc: ManagedProcess, message: str) -> LocalStackError:
    return LocalStackError(f"{proc.name}: {message}\n--- log tail ({proc.log_path}) ---\n{proc.log_tail()}")


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


# --------------------------------------------------------------------------------------------
# TorchServe
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchServeEndpoints:
    """Where a started TorchServe listens.  ``key_file`` is None when token auth is off."""

    inference_url: str
    management_url: str
    metrics_url: str
    key_file: Path | None
    grpc_inference_target: str = ""
    grpc_management_target: str = ""

    def auth_headers(self, kind: KeyKind) -> dict[str, str]:
        """``{"Authorization": "Bearer <key>"}`` read fresh from key_file.json, or {} without auth."""
        if self.key_file is None:
            return {}
        return {"Authorization": f"Bearer {read_torchserve_key(self.key_file, kind)}"}


def read_torchserve_key(key_file: Path, kind: KeyKind) -> str:
    """The ``kind`` key from TorchServe's ``key_file.json`` (format in the module docstring).

    TorchServe rewrites the file in place, so an empty or half-written file is retried for ~1 s.
    """
    last_error: Exception | None = None
    for _ in range(20):
        try:
            data = json.loads(key_file.read_text(encoding="utf-8"))
            key = data[kind]["key"]
        except (OSError, ValueError) as exc:  # missing, empty or half-written
            last_error = exc
            time.sleep(0.05)
            continue
        except (KeyError, TypeError) as exc:
            raise LocalStackError(f"{key_file}: no {kind!r} key in {data!r}") from exc
        if not isinstance(key, str) or not key:
            raise LocalStackError(f"{key_file}: {kind!r} key is not a non-empty string")
        return key
    raise LocalStackError(f"cannot read {kind!r} key from {key_file}: {last_error}")


def is_invalid_key_response(status_code: int, body: bytes | str) -> bool:
    """True for TorchServe's answer to a missing/wrong/expired bearer key (400 InvalidKeyException)."""
    if status_code != 400:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("type") == TORCHSERVE_INVALID_KEY_TYPE


def rotate_torchserve_key(
    endpoints: TorchServeEndpoints, kind: Literal["inference", "management"], timeout: float = _HTTP_TIMEOUT
) -> str:
    """Make TorchServe generate a new ``kind`` key and return it (read back from key_file.json).

    ``POST {management_url}/token?type=<kind>`` with the API key; the old key stops working at once.
    """
    if endpoints.key_file is None:
        raise LocalStackError("token auth is off: there is no key to rotate")
    api_key = read_torchserve_key(endpoints.key_file, "API")
    old = read_torchserve_key(endpoints.key_file, kind)
    resp = httpx.post(
        f"{endpoints.management_url}/token",
        params={"type": kind},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=timeout,
    )
    if resp.status_code != 200:
        raise LocalStackError(f"key rotation failed: {resp.status_code} {resp.text}")
    new = read_torchserve_key(endpoints.key_file, kind)
    if new == old:
        raise LocalStackError("key rotation answered 200 but key_file.json still holds the old key")
    return new


_LOG4J2_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by gateway.dev.localstack: everything to stdout (the log file), no rolling files. -->
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="{access}" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="MODEL_LOG" level="{level}" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="MODEL_METRICS" level="off" additivity="false"/>
    <Logger name="TS_METRICS" level="off" additivity="false"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="org.pytorch.serve" level="{level}" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Root level="{level}"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


def _torchserve_argv(torchserve_bin: str | None) -> list[str]:
    if torchserve_bin:
        return [torchserve_bin]
    sibling = Path(sys.executable).with_name("torchserve")
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return [str(sibling)]
    found = shutil.which("torchserve")
    if found:
        return [found]
    # Same interpreter as the launcher script would use; the workers use it too.
    return [sys.executable, "-m", "ts.model_server"]


def _short_tmpdir(workdir: Path, cleanup: list[Path]) -> Path:
    tmp = workdir / "tmp"
    if len(str(tmp)) <= _MAX_TS_TMPDIR:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # stale .model_server.pid, sockets, extracted models
        tmp.mkdir(parents=True)
        return tmp
    short = Path(tempfile.mkdtemp(prefix="ts-"))
    if len(str(short)) > _MAX_TS_TMPDIR:
        short.rmdir()
        short = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp"))
    cleanup.append(short)
    return short


def read_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a Java .properties file (comments and blank lines skipped; no continuations)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise LocalStackError(f"not a key=value line: {line!r}")
        out[key.strip()] = value.strip()
    return out


def torchserve_config(template: Path, local: Mapping[str, str]) -> dict[str, str]:
    """The settings of ``template`` with the ``TORCHSERVE_LOCAL_KEYS`` replaced by ``local`` (all of them)."""
    if sorted(local) != sorted(TORCHSERVE_LOCAL_KEYS):
        raise LocalStackError(f"local TorchServe settings must be exactly {TORCHSERVE_LOCAL_KEYS}, got {sorted(local)}")
    return {**read_properties(template.read_text(encoding="utf-8")), **local}


def start_torchserve(
    workdir: Path,
    model_store: Path,
    models: Sequence[tuple[str, str, str]],
    *,
    token_auth: bool = True,
    ports: tuple[int, int, int] | None = None,
    defaults: Mapping[str, str] | None = None,
    startup_timeout: float = 120,
    log_level: str = "info",
    access_log: bool = False,
    token_expiration_min: float | None = None,
    extra_config: Mapping[str, str] | None = None,
    torchserve_bin: str | None = None,
    config_template: Path = TORCHSERVE_CONFIG,
) -> tuple[ManagedProcess, TorchServeEndpoints]:
    """Start TorchServe, wait for ``/ping``, register ``models`` and set ``defaults``.

    ``models`` are ``(name, version, archive file name in model_store)``; each is registered
    synchronously with one worker, in order (the first version registered for a name becomes its
    default unless ``defaults`` says otherwise).  ``version`` must match the archive's manifest
    (checked).  ``ports`` are ``(inference, management, metrics)``; when None, free ports are
    picked (and the start is retried on a port collision).  gRPC ports are always free ports.
    ``startup_timeout`` covers start, readiness, all registrations and set-defaults.
    ``token_expiration_min`` sets the inference/management key lifetime (TorchServe default 60).
    The settings are ``config_template``'s (the deployments' file) with the addresses, ports and model store
    replaced (``TORCHSERVE_LOCAL_KEYS``); ``extra_config`` entries (a test's own) are added to / override them.

    On any failure (including KeyboardInterrupt) the process group is stopped and a
    :class:`LocalStackError` carrying the log tail is raised.  Timings land in ``proc.timings``.
    """
    attempts = 1 if ports is not None else 3
    for attempt in range(attempts):
        try:
            return _start_torchserve_once(
                workdir,
                model_store,
                models,
                token_auth=token_auth,
                ports=ports,
                defaults=defaults or {},
                startup_timeout=startup_timeout,
                log_level=log_level,
                access_log=access_log,
                token_expiration_min=token_expiration_min,
                extra_config=extra_config or {},
                torchserve_bin=torchserve_bin,
                config_template=config_template,
            )
        except _PortCollision:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class _PortCollision(LocalStackError):
    pass


def _start_torchserve_once(
    workdir: Path,
    model_store: Path,
    models: Sequence[tuple[str, str, str]],
    *,
    token_auth: bool,
    ports: tuple[int, int, int] | None,
    defaults: Mapping[str, str],
    startup_timeout: float,
    log_level: str,
    access_log: bool,
    token_expiration_min: float | None,
    extra_config: Mapping[str, str],
    torchserve_bin: str | None,
    config_template: Path,
) -> tuple[ManagedProcess, TorchServeEndpoints]:
    t_start = time.monotonic()
    deadline = t_start + startup_timeout
    workdir = workdir.resolve()
    model_store = model_store.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if not model_store.is_dir():
        raise LocalStackError(f"model store {model_store} is not a directory")
    for name, _version, archive in models:
        if not (model_store / archive).exists():
            raise LocalStackError(f"archive {archive!r} for model {name!r} not found in {model_store}")

    inf_port, mgmt_port, metrics_port = ports if ports is not None else (free_port(), free_port(), free_port())
    grpc_inf_port, grpc_mgmt_port = free_port(), free_port()
    cleanup: list[Path] = []
    tmpdir = _short_tmpdir(workdir, cleanup)
    logs_dir = workdir / "logs"
    logs_dir.mkdir(exist_ok=True)

    config = torchserve_config(config_template, {
        "inference_address": f"http://127.0.0.1:{inf_port}",
        "management_address": f"http://127.0.0.1:{mgmt_port}",
        "metrics_address": f"http://127.0.0.1:{metrics_port}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(grpc_inf_port),
        "grpc_management_port": str(grpc_mgmt_port),
        "model_store": str(model_store),
    })
    if token_expiration_min is not None:
        config["token_expiration_min"] = str(token_expiration_min)
    config.update(extra_config)
    config_path = workdir / "config.properties"
    config_path.write_text("".join(f"{k}={v}\n" for k, v in config.items()), encoding="utf-8")

    log4j_path = workdir / "log4j2.xml"
    log4j_path.write_text(
        _LOG4J2_TEMPLATE.format(level=log_level, access="info" if access_log else "off"), encoding="utf-8"
    )
    key_file = workdir / "key_file.json"
    key_file.unlink(missing_ok=True)  # a stale one survives a stopped server

    env = dict(os.environ)
    env.pop("TS_CONFIG_FILE", None)  # would override --ts-config
    env.update(TMPDIR=str(tmpdir), TEMP=str(tmpdir), LOG_LOCATION=str(logs_dir), METRICS_LOCATION=str(logs_dir))
    argv = [
        *_torchserve_argv(torchserve_bin),
        "--start",
        "--foreground",
        "--ts-config",
        str(config_path),
        "--log-config",
        str(log4j_path),
        "--ncs",
        "--enable-model-api",
    ]
    if not token_auth:
        argv.append("--disable-token-auth")

    proc = spawn_process(
        "torchserve", argv, cwd=workdir, env=env, log_path=workdir / "torchserve.log", cleanup_dirs=cleanup
    )
    endpoints = TorchServeEndpoints(
        inference_url=f"http://127.0.0.1:{inf_port}",
        management_url=f"http://127.0.0.1:{mgmt_port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}",
        key_file=key_file if token_auth else None,
        grpc_inference_target=f"127.0.0.1:{grpc_inf_port}",
        grpc_management_target=f"127.0.0.1:{grpc_mgmt_port}",
    )
    try:
        with httpx.Client(timeout=_HTTP_TIMEOUT) as client:
            _wait_torchserve_ready(proc, client, endpoints, deadline, startup_timeout)
            proc.timings["ready"] = time.monotonic() - t_start
            for name, version, archive in models:
                _register(proc, client, endpoints, name, version, archive, deadline)
            for name, version in defaults.items():
                resp = client.put(
                    f"{endpoints.management_url}/models/{name}/{version}/set-default",
                    headers=endpoints.auth_headers("management"),
                    timeout=max(1.0, _remaining(deadline)),
                )
                if resp.status_code != 200:
                    raise _fail(proc, f"set-default {name}/{version}: {resp.status_code} {resp.text}")
        proc.timings["total"] = time.monotonic() - t_start
    except BaseException as exc:
        tail = proc.log_tail()
        _stop_after_failure(proc)
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt / SystemExit: stopped, now propagate
        if ports is None and "Address already in use" in tail:
            raise _PortCollision(f"torchserve: port collision\n{tail}") from exc
        if isinstance(exc, LocalStackError):
            raise
        raise _fail(proc, f"{type(exc).__name__}: {exc}") from exc
    return proc, endpoints


def _wait_torchserve_ready(
    proc: ManagedProcess,
    client: httpx.Client,
    endpoints: TorchServeEndpoints,
    deadline: float,
    startup_timeout: float,
) -> None:
    last = "no answer yet"
    while True:
        if not proc.running():
            raise _fail(proc, f"exited with code {proc.popen.returncode} before /ping answered")
        if time.monotonic() > deadline:
            raise _fail(proc, f"/ping not healthy within {startup_timeout:.0f} s (last: {last})")
        headers: dict[str, str] = {}
        if endpoints.key_file is not None:
            if not endpoints.key_file.exists():
                time.sleep(_POLL_INTERVAL)
                continue
            headers = endpoints.auth_headers("inference")
        try:
            resp = client.get(f"{endpoints.inference_url}/ping", headers=headers, timeout=2.0)
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}"
        else:
            if resp.status_code == 200:
                return
            last = f"{resp.status_code} {resp.text[:200]}"
        time.sleep(_POLL_INTERVAL)


def _register(
    proc: ManagedProcess,
    client: httpx.Client,
    endpoints: TorchServeEndpoints,
    name: str,
    version: str,
    archive: str,
    deadline: float,
) -> None:
    t0 = time.monotonic()
    if _remaining(deadline) <= 0:
        raise _fail(proc, f"startup timeout before registering {name}/{version}")
    try:
        resp = client.post(
            f"{endpoints.management_url}/models",
            params={
                "url": archive,
                "model_name": name,
                "initial_workers": "1",
                "synchronous": "true",
            },
            headers=endpoints.auth_headers("management"),
            timeout=max(1.0, _remaining(deadline)),
        )
    except httpx.TimeoutException as exc:
        raise _fail(proc, f"registering {name}/{version} ({archive}) timed out") from exc
    if resp.status_code != 200:
        raise _fail(proc, f"registering {name}/{version} ({archive}): {resp.status_code} {resp.text}")
    check = client.get(
        f"{endpoints.management_url}/models/{name}/{version}",
        headers=endpoints.auth_headers("management"),
        timeout=max(1.0, _remaining(deadline)),
    )
    if check.status_code != 200:
        raise _fail(
            proc,
            f"{archive} registered as {resp.text.strip()!r}, but version {version!r} of {name!r} "
            f"is not there ({check.status_code}): the archive's manifest has another version",
        )
    proc.timings[f"register:{name}/{version}"] = time.monotonic() - t0


# --------------------------------------------------------------------------------------------
# TF Serving (real binary or the stand-in)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TFServingEndpoints:
    """Where a started TF Serving listens; ``real_binary`` is False for the Python stand-in."""

    rest_url: str
    grpc_target: str
    real_binary: bool
    model_config_file: Path | None = None  # the --model_config_file it was started with
    metrics_url: str = ""  # its Prometheus metrics (the --monitoring_config_file's path on the REST port)


#: TF Serving's Prometheus exporter, on its REST port (--monitoring_config_file; g3doc/serving_config.md).
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # as deploy/tfserving/monitoring.config says


_BASE_PATH_RE = re.compile(r'(base_path\s*:\s*)"/models/([^"]+)"')


def _proto_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_model_config(template_text: str, models_root: Path) -> str:
    """Rewrite every ``base_path: "/models/<name>"`` to ``base_path: "<models_root>/<name>"``."""
    root = models_root.resolve()
    return _BASE_PATH_RE.sub(lambda m: m.group(1) + _proto_string(str(root / m.group(2))), template_text)


def _standin_env(env: dict[str, str]) -> None:
    """Make ``python -m tfserving_standin`` importable from any cwd (repo checkout, not installed)."""
    if (_REPO_ROOT / "tfserving_standin").is_dir():
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(_REPO_ROOT) + (os.pathsep + old if old else "")


def _tfserving_command(env: dict[str, str]) -> tuple[list[str], bool]:
    """The server to run and whether it is the real one: the official image when TFSERVING_DOCKER_IMAGE names one
    (tests/deploy/test_docker_engine.py sets it where a Docker engine runs), else ``tensorflow_model_server`` on
    PATH, else the stand-in."""
    image = env.get("TFSERVING_DOCKER_IMAGE")
    if image:
        # Host network (ports are picked here) and the directories its flags name mounted at the same paths; tini
        # hands SIGTERM to the server.
        mounts = [arg for path in dict.fromkeys((tempfile.gettempdir(), str(_REPO_ROOT)))
                  for arg in ("-v", f"{path}:{path}")]
        return ["docker", "run", "--rm", "--init", "--network=host", *mounts,
                "--entrypoint", "tensorflow_model_server", image], True
    binary = shutil.which("tensorflow_model_server")
    if binary is not None:
        return [binary], True
    _standin_env(env)
    return [sys.executable, "-m", "tfserving_standin"], False


def launch_tfserving(workdir: Path, args: Sequence[str], *,
                     ports: tuple[int, int] | None = None) -> tuple[ManagedProcess, TFServingEndpoints]:
    """Start TF Serving (:func:`_tfserving_command`: the official image, the binary or the stand-in) with ``args``
    after its ports, without waiting for anything (:func:`start_tfserving` waits; the contract tests also start
    servers meant to fail). ``ports`` are ``(grpc, rest)``, free ones when None; its log is
    ``workdir/tfserving.log``."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port, rest_port = ports if ports is not None else (free_port(), free_port())
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    base, real = _tfserving_command(env)
    argv = [*base, f"--port={grpc_port}", f"--rest_api_port={rest_port}", *args]
    proc = spawn_process("tfserving", argv, cwd=workdir, env=env, log_path=workdir / "tfserving.log")
    config = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("--model_config_file=")), None)
    monitored = any(a.startswith("--monitoring_config_file=") for a in args)
    return proc, TFServingEndpoints(rest_url=f"http://127.0.0.1:{rest_port}", grpc_target=f"127.0.0.1:{grpc_port}",
                                    real_binary=real, model_config_file=config,
                                    metrics_url=f"http://127.0.0.1:{rest_port}{PROMETHEUS_PATH}" if monitored else "")


def start_tfserving(
    workdir: Path,
    model_config_template: Path,
    models_root: Path,
    *,
    ports: tuple[int, int] | None = None,
    poll_seconds: int = 1,
    startup_timeout: float = 120,
    wait_models: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    monitoring_config: Path | None = TFSERVING_MONITORING_CONFIG,
) -> tuple[ManagedProcess, TFServingEndpoints]:
    """Start ``tensorflow_model_server`` (if on PATH) or ``python -m tfserving_standin``.

    ``ports`` are ``(grpc, rest)`` (the order of ``--port`` and ``--rest_api_port``); free ports
    when None.  The template's ``base_path: "/models/<name>"`` entries are rewritten under
    ``models_root`` into ``workdir/models.config``; both poll intervals are ``poll_seconds``.
    ``monitoring_config`` (the deployments' file by default; None: no metrics) is passed as
    ``--monitoring_config_file``.
    Waits until the REST port answers and every model in ``wait_models`` has an AVAILABLE version.
    On failure the process is stopped and a :class:`LocalStackError` with the log tail is raised.
    """
    t_start = time.monotonic()
    deadline = t_start + startup_timeout
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "models.config"
    config_path.write_text(
        render_model_config(model_config_template.read_text(encoding="utf-8"), models_root), encoding="utf-8"
    )
    proc, endpoints = launch_tfserving(workdir, [
        f"--model_config_file={config_path}",
        f"--file_system_poll_wait_seconds={poll_seconds}",
        f"--model_config_file_poll_wait_seconds={poll_seconds}",
        *([f"--monitoring_config_file={monitoring_config.resolve()}"] if monitoring_config is not None else []),
        *extra_args,
    ], ports=ports)
    try:
        with httpx.Client(timeout=_HTTP_TIMEOUT) as client:
            _wait_tfserving_ready(proc, client, endpoints, wait_models, deadline, startup_timeout)
        proc.timings["ready"] = time.monotonic() - t_start
    except BaseException as exc:
        _stop_after_failure(proc)
        if not isinstance(exc, Exception) or isinstance(exc, LocalStackError):
            raise
        raise _fail(proc, f"{type(exc).__name__}: {exc}") from exc
    return proc, endpoints


def wait_tfserving_ready(proc: ManagedProcess, endpoints: TFServingEndpoints, wait_models: Sequence[str],
                         timeout: float) -> None:
    """Until every model in ``wait_models`` has an AVAILABLE version (any REST answer without models); a
    LocalStackError with the log tail when the process exits or ``timeout`` passes first."""
    with httpx.Client(timeout=_HTTP_TIMEOUT) as client:
        _wait_tfserving_ready(proc, client, endpoints, wait_models, time.monotonic() + timeout, timeout)


def _available(resp: httpx.Response) -> bool:
    if resp.status_code != 200:
        return False
    try:
        statuses = resp.json().get("model_version_status", [])
    except ValueError:
        return False
    return any(isinstance(s, dict) and s.get("state") == "AVAILABLE" for s in statuses)


def _wait_tfserving_ready(
    proc: ManagedProcess,
    client: httpx.Client,
    endpoints: TFServingEndpoints,
    wait_models: Sequence[str],
    deadline: float,
    startup_timeout: float,
) -> None:
    # With no model to wait for, any HTTP answer (404 for an unknown model) means REST is up.
    pending: list[str | None] = list(wait_models) or [None]
    last = "no answer yet"
    while pending:
        if not proc.running():
            raise _fail(proc, f"exited with code {proc.popen.returncode} (waiting for {pending})")
        if time.monotonic() > deadline:
            raise _fail(proc, f"not ready within {startup_timeout:.0f} s (waiting for {pending}; last: {last})")
        model = pending[0]
        url = f"{endpoints.rest_url}/v1/models/{model if model is not None else '__localstack_probe__'}"
        try:
            resp = client.get(url, timeout=2.0)
        except httpx.TransportError as exc:
            last = type(exc).__name__
        else:
            last = f"{resp.status_code} {resp.text[:200]}"
            if model is None or _available(resp):
                pending.pop(0)
                continue
        time.sleep(_POLL_INTERVAL)


# --------------------------------------------------------------------------------------------
# The gateway itself
# --------------------------------------------------------------------------------------------


def start_gateway(
    workdir: Path,
    routes_file: Path,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 60,
    code_root: Path | None = None,
    ca_file: Path | None = None,
) -> tuple[ManagedProcess, str]:
    """Run ``python -m gateway serve --routes ROUTES --port PORT`` on 127.0.0.1; return it and its URL.

    ``env`` adds GATEWAY_* settings (GATEWAY_HOST defaults to 127.0.0.1, GATEWAY_WORKERS to 1, and
    GATEWAY_GRPC_PORT to a free port, so that gateways started side by side never collide). ``code_root``
    runs the gateway of another checkout (a benchmark baseline) with this interpreter.
    Waits for ``GET /v2/health/live`` to answer 200; on failure stops it and raises with the log tail.
    With GATEWAY_TLS_CERT_FILE in ``env`` the URL is https and ``ca_file`` verifies the gateway's certificate.
    """
    t_start = time.monotonic()
    deadline = t_start + startup_timeout
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port if port is not None else free_port()
    child_env = dict(os.environ)
    child_env.setdefault("GATEWAY_HOST", "127.0.0.1")
    child_env["GATEWAY_WORKERS"] = "1"
    child_env["GATEWAY_GRPC_PORT"] = str(free_port())
    child_env.update(env or {})
    child_env["GATEWAY_PORT"] = str(port)
    old = child_env.get("PYTHONPATH")
    child_env["PYTHONPATH"] = str(code_root or _REPO_ROOT) + (os.pathsep + old if old else "")
    argv = [sys.executable, "-m", "gateway", "serve", "--routes", str(routes_file.resolve()), "--port", str(port)]
    proc = spawn_process("gateway", argv, cwd=workdir, env=child_env, log_path=workdir / "gateway.log")
    tls = bool(child_env.get("GATEWAY_TLS_CERT_FILE"))
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        verify = ssl.create_default_context(cafile=str(ca_file)) if tls and ca_file else True
        with httpx.Client(timeout=2.0, verify=verify) as client:
            last = "no answer yet"
            while True:
                if not proc.running():
                    raise _fail(proc, f"exited with code {proc.popen.returncode} before /v2/health/live answered")
                if time.monotonic() > deadline:
                    raise _fail(proc, f"/v2/health/live not 200 within {startup_timeout:.0f} s (last: {last})")
                try:
                    resp = client.get(f"{url}/v2/health/live")
                except httpx.TransportError as exc:
                    last = type(exc).__name__
                else:
                    if resp.status_code == 200:
                        break
                    last = f"{resp.status_code} {resp.text[:200]}"
                time.sleep(_POLL_INTERVAL)
        proc.timings["ready"] = time.monotonic() - t_start
    except BaseException:
        _stop_after_failure(proc)
        raise
    return proc, url


# --------------------------------------------------------------------------------------------
# etcd and Prometheus (the control plane of several gateway replicas; Debian's etcd-server, prometheus)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    """One or more etcd members on 127.0.0.1, each its own process (``members[i]``, ``procs[i]``)."""

    workdir: Path
    members: list[EtcdMember]
    procs: list[ManagedProcess | None]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def store_url(self, prefix: str) -> str:
        return f"etcd://{','.join(self.endpoints)}/{prefix.strip('/')}"

    def _argv(self, member: EtcdMember, new: bool) -> list[str]:
        cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        return [shutil.which("etcd") or "etcd", "--name", member.name, "--data-dir", str(member.data_dir),
                "--listen-client-urls", f"http://127.0.0.1:{member.client_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{member.client_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new" if new else "existing",
                "--initial-cluster-token", f"gateway-{self.workdir.name}",
                # Short elections on a busy 2-core machine: a member that dies is replaced within a second.
                "--heartbeat-interval", "100", "--election-timeout", "1000", "--log-level", "warn"]

    def start_member(self, i: int, *, new: bool = False) -> None:
        member = self.members[i]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.procs[i] = spawn_process(member.name, self._argv(member, new), cwd=self.workdir, env=env,
                                      log_path=self.workdir / f"{member.name}.log")

    def stop_member(self, i: int, *, kill: bool = False) -> None:
        proc = self.procs[i]
        if proc is not None:
            if kill:
                _signal_group(proc.pgid, signal.SIGKILL)
            proc.stop(timeout=5.0)
            self.procs[i] = None

    def wait_healthy(self, timeout: float = 30.0, members: Sequence[int] | None = None) -> None:
        """Until each member (all by default) answers /health with a leader (``"health":"true"``)."""
        deadline = time.monotonic() + timeout
        for i in range(len(self.members)) if members is None else members:
            url = f"http://{self.members[i].endpoint}/health"
            last = "no answer"
            with httpx.Client(timeout=2.0) as client:
                while True:
                    proc = self.procs[i]
                    if proc is not None and not proc.running():
                        raise _fail(proc, f"exited with {proc.popen.returncode}")
                    try:
                        r = client.get(url)
                        if r.status_code == 200 and r.json().get("health") == "true":
                            break
                        last = r.text[:200]
                    except (httpx.HTTPError, ValueError) as exc:
                        last = type(exc).__name__
                    if time.monotonic() > deadline:
                        raise LocalStackError(f"etcd {self.members[i].name}: not healthy within {timeout:g} s "
                                              f"({last})\n{proc.log_tail() if proc else ''}")
                    time.sleep(_POLL_INTERVAL)

    def stop(self) -> None:
        for i in reversed(range(len(self.members))):
            self.stop_member(i)


def start_etcd(workdir: Path, members: int = 1, timeout: float = 30.0) -> EtcdCluster:
    """A new etcd cluster of ``members`` members on free ports (Debian's etcd-server; scripts/bootstrap installs
    it), each with its data under ``workdir``; waits until every member reports a healthy cluster."""
    if shutil.which("etcd") is None:
        raise LocalStackError("etcd is not installed (scripts/bootstrap installs Debian's etcd-server)")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = EtcdCluster(workdir, [EtcdMember(f"etcd{i}", free_port(), free_port(), workdir / f"etcd{i}.data")
                                    for i in range(members)], [None] * members)
    try:
        for i in range(members):
            cluster.start_member(i, new=True)
        cluster.wait_healthy(timeout)
    except BaseException:
        with _signals_ignored():
            cluster.stop()
        raise
    return cluster


def start_prometheus(workdir: Path, targets: Sequence[str], *, scrape_interval_s: float = 0.5,
                     timeout: float = 30.0) -> tuple[ManagedProcess, str]:
    """The real Prometheus (Debian's package) scraping ``targets`` (host:port, /metrics) every
    ``scrape_interval_s``; returns it and its URL once it is ready."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise LocalStackError("prometheus is not installed (scripts/bootstrap installs Debian's prometheus)")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    interval = f"{int(scrape_interval_s * 1000)}ms"
    config = {"global": {"scrape_interval": interval, "evaluation_interval": interval},
              "scrape_configs": [{"job_name": "gateway", "scrape_interval": interval, "scrape_timeout": interval,
                                  "static_configs": [{"targets": list(targets)}]}]}
    (workdir / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    argv = [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    proc = spawn_process("prometheus", argv, cwd=workdir, env=dict(os.environ), log_path=workdir / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        with httpx.Client(timeout=2.0) as client:
            while True:
                if not proc.running():
                    raise _fail(proc, f"exited with {proc.popen.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{url}/-/ready").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise _fail(proc, f"not ready within {timeout:g} s")
                time.sleep(_POLL_INTERVAL)
    except BaseException:
        _stop_after_failure(proc)
        raise
    return proc, url


# --------------------------------------------------------------------------------------------
# Stack
# --------------------------------------------------------------------------------------------

_T = TypeVar("_T")
_HANDLED_SIGNALS = _CLEANUP_SIGNALS


class Stack:
    """Several ManagedProcesses that are stopped together, in reverse start order.

    ::

        with Stack() as stack:
            ts, ts_ep = stack.add_started(start_torchserve(...))
            tf_ep = stack.start(start_tfserving, ...)   # returns the endpoints
            stack.wait()            # until Ctrl-C / SIGTERM / SIGHUP or a backend exits

    Inside ``with`` (main thread only), SIGTERM and SIGHUP raise ``SystemExit(128 + signum)`` so
    the ``with`` unwinds; while stopping, further SIGINT/SIGTERM/SIGHUP are ignored so a second
    Ctrl-C cannot interrupt the cleanup half-way.
    """

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []
        self._saved: dict[int, Any] = {}

    def add(self, proc: ManagedProcess) -> ManagedProcess:
        self.processes.append(proc)
        return proc

    def add_started(self, started: tuple[ManagedProcess, _T]) -> tuple[ManagedProcess, _T]:
        """Register the ManagedProcess of a ``start_*`` result and pass the result through."""
        self.add(started[0])
        return started

    def start(self, fn: Callable[..., tuple[ManagedProcess, _T]], /, *args: Any, **kwargs: Any) -> _T:
        """Call ``fn(*args, **kwargs)`` (a ``start_*`` function), keep its process, return its endpoints."""
        proc, endpoints = fn(*args, **kwargs)
        self.add(proc)
        return endpoints

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process, last started first; errors do not prevent stopping the others."""
        errors: list[BaseException] = []
        while self.processes:
            proc = self.processes.pop()
            try:
                proc.stop(timeout)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise LocalStackError(f"errors while stopping: {errors!r}")

    def wait(self, poll: float = 0.5) -> ManagedProcess:
        """Block until one process exits (returned); Ctrl-C / signals interrupt it as usual."""
        while True:
            for proc in self.processes:
                if not proc.running():
                    return proc
            time.sleep(poll)

    def __enter__(self) -> Stack:
        if threading.current_thread() is threading.main_thread():
            for sig in _HANDLED_SIGNALS:
                self._saved[sig] = signal.signal(sig, _raise_system_exit)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        try:
            with _signals_ignored():
                self.stop()
        finally:
            for sig, handler in self._saved.items():
                signal.signal(sig, handler)
            self._saved.clear()


def _raise_system_exit(signum: int, _frame: types.FrameType | None) -> None:
    raise SystemExit(128 + signum)
