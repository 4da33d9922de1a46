"""ServerCore: model versions, their states, labels, config reloads and file-system polling.

This mirrors TF Serving's ServerCore + AspiredVersionsManager + AvailabilityPreservingPolicy +
FileSystemStoragePathSource + ServableStateMonitor, on one asyncio loop:

* every version a source aspires is managed by a harness (NEW -> LOADING -> READY -> UNLOADING ->
  DISABLED, or ERROR) and publishes START/LOADING/AVAILABLE/UNLOADING/END events to the monitor;
* the availability-preserving policy unloads an un-aspired version only once an aspired one is
  serving (or when nothing is aspired any more), and loads the highest new aspired version;
* loads run in worker threads (never on the serving path) with TF's retry rules;
* the monitor never forgets a version: unloaded ones stay listed as END, failed ones as END with
  their error, exactly as GetModelStatus shows them in TF Serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import logging
import os
import re
import time
from collections.abc import Callable, Sequence

from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.config import model_server_config_pb2

from tfserving_standin import config as config_lib
from tfserving_standin import metrics
from tfserving_standin.servable import Servable, run_warmup
from tfserving_standin.status import Code, ServingError, failed_precondition, invalid_argument

log = logging.getLogger("tfserving_standin")


class ManagerState(enum.IntEnum):
    """ServableState::ManagerState, numbered as ModelVersionStatus.State."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


class HarnessState(enum.Enum):
    NEW = "new"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    DISABLED = "disabled"
    ERROR = "error"


@dataclasses.dataclass
class VersionStatus:
    state: ManagerState
    error: ServingError | None = None
    time: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class Harness:
    name: str
    version: int
    path: str
    state: HarnessState = HarnessState.NEW
    aspired: bool = True
    servable: Servable | None = None
    error: ServingError | None = None
    retry_cancelled: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a request names: model, and at most one of version / label."""

    name: str
    version: int | None = None
    label: str | None = None

    @classmethod
    def from_proto(cls, spec: model_pb2.ModelSpec) -> Spec:
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return cls(spec.name, version=spec.version.value)
        if choice == "version_label":
            return cls(spec.name, label=spec.version_label)
        return cls(spec.name)


def servable_id(name: str, version: int) -> str:
    """ServableId::DebugString."""
    return f"{{name: {name} version: {version}}}"


@dataclasses.dataclass
class CoreOptions:
    file_system_poll_wait_seconds: int = 1
    allow_version_labels_for_unavailable_models: bool = False
    force_allow_any_version_labels_for_unavailable_models: bool = False
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    saved_model_tags: tuple[str, ...] = ("serve",)
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    session_config: config_pb2.ConfigProto | None = None


# ---------------------------------------------------------------------- file system source

_VERSION_RE = re.compile(r"\s*[+-]?\d+\s*")


def parse_version(child: str) -> int | None:
    """absl::SimpleAtoi as file_system_storage_path_source.cc ParseVersionNumber uses it."""
    if not _VERSION_RE.fullmatch(child):
        return None
    value = int(child.strip())
    if not -(2**63) <= value < 2**63:
        return None
    return value


@dataclasses.dataclass
class ServableToMonitor:
    name: str
    base_path: str
    policy: object  # FileSystemStoragePathSourceConfig.ServableVersionPolicy


def poll_servable(servable: ServableToMonitor) -> list[tuple[int, str]]:
    """file_system_storage_path_source.cc PollFileSystemForServable."""
    base = servable.base_path
    if not os.path.exists(base):
        raise invalid_argument(
            f"Could not find base path {base} for servable {servable.name} with error NOT_FOUND: {base} not found"
        )
    policy = servable.policy
    choice = policy.WhichOneof("policy_choice")  # type: ignore[attr-defined]
    if choice == "specific":
        wanted = list(policy.specific.versions)  # type: ignore[attr-defined]
        if not wanted:
            log.warning("No specific versions requested for servable %s.", servable.name)
            return []
        if all(os.path.exists(os.path.join(base, str(v))) for v in wanted):
            return [(v, os.path.join(base, str(v))) for v in wanted]
    try:
        children = sorted(set(os.listdir(base)))
    except OSError as exc:
        raise ServingError(Code.UNKNOWN, f"{base}; {exc.strerror}") from None
    by_version: dict[int, str] = {}
    for child in children:
        version = parse_version(child)
        if version is None:
            continue
        if version in by_version:
            log.warning(
                "Duplicate version directories detected. Version %d will be loaded from %s, %s will be ignored.",
                version,
                child,
                by_version[version],
            )
        by_version[version] = child
    if choice == "all":
        chosen = sorted(by_version)
    elif choice == "specific":
        wanted_set = set(policy.specific.versions)  # type: ignore[attr-defined]
        chosen = [v for v in sorted(by_version) if v in wanted_set]
        for version in sorted(wanted_set - set(chosen)):
            log.warning(
                "Version %d of servable %s, which was requested to be served as a 'specific' version in "
                "the servable's version policy, was not found in the file system",
                version,
                servable.name,
            )
    else:
        keep = max(policy.latest.num_versions, 1)  # type: ignore[attr-defined]
        chosen = sorted(by_version, reverse=True)[:keep]
    if not chosen:
        log.warning(
            "No versions of servable %s found under base path %s. Did you forget to name your leaf "
            "directory as a number (eg. '/1/')?",
            servable.name,
            base,
        )
    return [(v, os.path.join(base, by_version[v])) for v in sorted(chosen, reverse=True)]


class FileSystemSource:
    """Polls base paths and tells the manager which versions it aspires to."""

    def __init__(
        self,
        servables: Sequence[ServableToMonitor],
        poll_wait_seconds: int,
        callback: Callable[[str, list[tuple[int, str]]], None],
    ) -> None:
        self.servables = list(servables)
        self.poll_wait_seconds = poll_wait_seconds
        self._callback = callback
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fs-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        if self.poll_wait_seconds < 0:
            return
        while True:
            started = time.monotonic()
            await self.poll_once()
            if self.poll_wait_seconds == 0:
                return
            await asyncio.sleep(max(0.0, self.poll_wait_seconds - (time.monotonic() - started)))

    async def poll_once(self) -> None:
        async with self._lock:
            servables = list(self.servables)
            try:
                found = await asyncio.to_thread(lambda: [(s.name, poll_servable(s)) for s in servables])
            except ServingError as exc:
                log.error("FileSystemStoragePathSource encountered a filesystem access error: %s", exc.message)
                return
            for name, versions in found:
                self._callback(name, versions)

    async def update_config(self, servables: Sequence[ServableToMonitor]) -> None:
        async with self._lock:
            new_names = {s.name for s in servables}
            for old in self.servables:
                if old.name not in new_names:
                    self._callback(old.name, [])
            self.servables = list(servables)


# ---------------------------------------------------------------------- server core


class ServerCore:
    def __init__(self, options: CoreOptions) -> None:
        self.options = options
        self.monitor: dict[str, dict[int, VersionStatus]] = {}
        self.harnesses: dict[str, dict[int, Harness]] = {}
        self.pending: dict[str, list[tuple[int, str]]] = {}
        self.labels: dict[str, dict[str, int]] | None = None
        self.config: model_server_config_pb2.ModelServerConfig | None = None
        self.source: FileSystemSource | None = None
        self._listeners: list[Callable[[str, int, VersionStatus], None]] = []
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._loader = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="load"
        )
        self._unloader = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="unload")

    # ------------------------------------------------------------------ events

    def _publish(self, name: str, version: int, state: ManagerState, error: ServingError | None = None) -> None:
        status = VersionStatus(state, error)
        self.monitor.setdefault(name, {})[version] = status
        for listener in list(self._listeners):
            listener(name, version, status)

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ aspired versions

    def set_aspired_versions(self, name: str, versions: list[tuple[int, str]]) -> None:
        self.pending[name] = versions
        self._manage()

    def _flush(self) -> None:
        for stream in self.harnesses.values():
            for version in [
                v
                for v, h in stream.items()
                if not h.aspired and h.state in (HarnessState.NEW, HarnessState.DISABLED, HarnessState.ERROR)
            ]:
                del stream[version]

    def _process_pending(self) -> None:
        for name, versions in list(self.pending.items()):
            stream = self.harnesses.setdefault(name, {})
            wanted = {v for v, _ in versions}
            if any(v in stream and not stream[v].aspired for v in wanted):
                continue  # wait for re-aspired versions to quiesce (HandlePendingAspiredVersionsRequests)
            del self.pending[name]
            for harness in stream.values():
                if harness.aspired and harness.version not in wanted:
                    harness.aspired = False
                    harness.retry_cancelled.set()
            for version, path in versions:
                if version not in stream:
                    stream[version] = Harness(name, version, path)
                    self._publish(name, version, ManagerState.START)

    @staticmethod
    def _next_action(stream: dict[int, Harness]) -> tuple[str, Harness] | None:
        """AvailabilityPreservingPolicy::GetNextAction."""
        harnesses = list(stream.values())
        has_aspired = any(h.aspired for h in harnesses)
        has_aspired_serving = any(h.aspired and h.state == HarnessState.READY for h in harnesses)
        unaspired_serving = [h for h in harnesses if not h.aspired and h.state == HarnessState.READY]
        if (not has_aspired or has_aspired_serving or len(unaspired_serving) > 1) and unaspired_serving:
            return "unload", min(unaspired_serving, key=lambda h: h.version)
        new = [h for h in harnesses if h.aspired and h.state == HarnessState.NEW]
        if new:
            return "load", max(new, key=lambda h: h.version)
        return None

    def _manage(self) -> None:
        if self._closing:
            return
        while True:
            self._flush()
            self._process_pending()
            acted = False
            for stream in self.harnesses.values():
                action = self._next_action(stream)
                if action is None:
                    continue
                acted = True
                kind, harness = action
                if kind == "load":
                    self._start_load(harness)
                else:
                    self._start_unload(harness)
            if not acted:
                return

    def _start_load(self, harness: Harness) -> None:
        harness.state = HarnessState.LOADING
        self._publish(harness.name, harness.version, ManagerState.LOADING)
        self._spawn(self._load(harness))

    def _load_sync(self, harness: Harness) -> Servable:
        log.info("Loading servable version %s from %s", servable_id(harness.name, harness.version), harness.path)
        start = time.perf_counter()
        servable = Servable.load(
            harness.name, harness.version, harness.path, self.options.saved_model_tags, self.options.session_config
        )
        metrics.record_load_latency(harness.path, "init_session", (time.perf_counter() - start) * 1e6)
        if self.options.enable_model_warmup:
            warm_start = time.perf_counter()
            try:
                run_warmup(servable, self.options.num_request_iterations_for_warmup)
            except ServingError as exc:
                metrics.record_warmup_latency(harness.path, exc.code.name, (time.perf_counter() - warm_start) * 1e6)
                servable.close()
                raise
            metrics.record_warmup_latency(harness.path, "OK", (time.perf_counter() - warm_start) * 1e6)
        return servable

    async def _load(self, harness: Harness) -> None:
        loop = asyncio.get_running_loop()
        retries = 0
        while True:
            try:
                servable = await loop.run_in_executor(self._loader, self._load_sync, harness)
                break
            except ServingError as exc:
                error = exc
            except Exception as exc:
                error = ServingError(Code.UNKNOWN, str(exc))
            log.error("Loading servable: %s failed: %s", servable_id(harness.name, harness.version), error)
            if self._closing or harness.retry_cancelled.is_set() or retries >= self.options.max_num_load_retries:
                harness.state = HarnessState.ERROR
                harness.error = error
                self._publish(harness.name, harness.version, ManagerState.END, error)
                self._manage()
                return
            retries += 1
            interval = max(self.options.load_retry_interval_micros, 0) / 1e6
            log.info(
                "Retrying load on servable version: %s retry: %d", servable_id(harness.name, harness.version), retries
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(harness.retry_cancelled.wait(), timeout=interval)
        if self._closing:
            await loop.run_in_executor(self._unloader, servable.close)
            return
        harness.servable = servable
        harness.state = HarnessState.READY
        log.info("Successfully loaded servable version %s", servable_id(harness.name, harness.version))
        self._publish(harness.name, harness.version, ManagerState.AVAILABLE)
        self._manage()

    def _start_unload(self, harness: Harness) -> None:
        harness.state = HarnessState.UNLOADING
        self._publish(harness.name, harness.version, ManagerState.UNLOADING)
        servable, harness.servable = harness.servable, None
        self._spawn(self._unload(harness, servable))

    async def _unload(self, harness: Harness, servable: Servable | None) -> None:
        if servable is not None:
            await asyncio.get_running_loop().run_in_executor(self._unloader, servable.close)
        harness.state = HarnessState.DISABLED
        log.info("Done unloading servable version %s", servable_id(harness.name, harness.version))
        self._publish(harness.name, harness.version, ManagerState.END)
        self._manage()

    # ------------------------------------------------------------------ serving

    def resolve(self, spec: Spec) -> tuple[str, int | None]:
        """ServerCore::ServableRequestFromModelSpec -> (name, version or None for Latest)."""
        if not spec.name:
            raise invalid_argument("ModelSpec has no name specified.")
        if spec.version is not None:
            return spec.name, spec.version
        if spec.label is not None:
            return spec.name, self.version_for_label(spec.name, spec.label)
        return spec.name, None

    def version_for_label(self, name: str, label: str) -> int:
        if self.labels is None:
            raise ServingError(Code.UNAVAILABLE, f"Model labels does not init yet.{label}")
        version = self.labels.get(name, {}).get(label)
        if version is None:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return version

    def get_servable(self, spec: Spec) -> Servable:
        """Returns an acquired handle (call ``release()``), or raises NOT_FOUND like BasicManager."""
        name, version = self.resolve(spec)
        stream = self.harnesses.get(name, {})
        harness = None
        if version is None:
            ready = [h for h in stream.values() if h.state == HarnessState.READY]
            if ready:
                harness = max(ready, key=lambda h: h.version)
            request = f"Latest({name})"
        else:
            candidate = stream.get(version)
            if candidate is not None and candidate.state == HarnessState.READY:
                harness = candidate
            request = f"Specific({name}, {version})"
        if harness is None or harness.servable is None:
            raise ServingError(Code.NOT_FOUND, f"Servable not found for request: {request}")
        harness.servable.acquire()
        return harness.servable

    def model_status(self, name: str, version: int | None) -> list[tuple[int, VersionStatus]]:
        """get_model_status_impl.cc."""
        states = self.monitor.get(name, {})
        if version is not None:
            status = states.get(version)
            if status is None:
                raise ServingError(Code.NOT_FOUND, f"Could not find version {version} of model {name}")
            return [(version, status)]
        if not states:
            raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
        return sorted(states.items(), key=lambda item: item[0], reverse=True)

    # ------------------------------------------------------------------ waiting

    async def _wait_models(self, names: set[str], fresh: bool) -> dict[str, tuple[int, VersionStatus]]:
        """ServableStateMonitor::WaitUntilServablesReachState for Latest(name) of every name."""
        seen: dict[str, dict[int, VersionStatus]] = {}
        if not fresh:
            seen = {name: dict(self.monitor.get(name, {})) for name in names}
        future: asyncio.Future = asyncio.get_running_loop().create_future()

        def reached() -> dict[str, tuple[int, VersionStatus]] | None:
            result = {}
            for name in names:
                for version, status in sorted(seen.get(name, {}).items(), reverse=True):
                    if status.state in (ManagerState.AVAILABLE, ManagerState.END):
                        result[name] = (version, status)
                        break
                else:
                    return None
            return result

        def listener(name: str, version: int, status: VersionStatus) -> None:
            if name in names:
                seen.setdefault(name, {})[version] = status
                result = reached()
                if result is not None and not future.done():
                    future.set_result(result)

        initial = reached()
        if initial is not None:
            return initial
        self._listeners.append(listener)
        try:
            return await future
        finally:
            self._listeners.remove(listener)

    @staticmethod
    def _unavailable_message(reached: dict[str, tuple[int, VersionStatus]], what: str) -> str | None:
        failed = [
            (name, version, status)
            for name, (version, status) in sorted(reached.items())
            if status.state != ManagerState.AVAILABLE
        ]
        if not failed:
            return None
        parts = []
        for name, version, status in failed:
            error = f" due to error: {status.error}" if status.error is not None else ""
            parts.append(f"{{{servable_id(name, version)}{error}}}, ")
        return f"{len(failed)} {what} did not become available: {{{''.join(parts)}}}"

    # ------------------------------------------------------------------ config

    def _update_labels(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """server_core.cc UpdateModelVersionLabelMap."""
        new_map: dict[str, dict[str, int]] = {}
        for model in config.model_config_list.config:
            states = self.monitor.get(model.name, {})
            for label in sorted(model.version_labels):
                version = model.version_labels[label]
                allow = False
                if self.options.force_allow_any_version_labels_for_unavailable_models:
                    allow = True
                elif self.options.allow_version_labels_for_unavailable_models:
                    existing = (self.labels or {}).get(model.name, {}).get(label)
                    allow = not (existing is not None and existing != version)
                status = states.get(version)
                if not allow and (status is None or status.state != ManagerState.AVAILABLE):
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference"
                    )
                new_map.setdefault(model.name, {})[label] = version
        self.labels = new_map

    @staticmethod
    def _servables_of(config: model_server_config_pb2.ModelServerConfig) -> list[ServableToMonitor]:
        return [
            ServableToMonitor(model.name, model.base_path, model.model_version_policy)
            for model in config.model_config_list.config
        ]

    async def reload_config(self, new_config: model_server_config_pb2.ModelServerConfig) -> None:
        """ServerCore::ReloadConfig. The first call also waits for every model to load."""
        async with self._reload_lock:
            old = self.config
            old_case = old.WhichOneof("config") if old is not None else None
            new_case = new_config.WhichOneof("config")
            is_first = old_case is None
            is_same = old is not None and old == new_config
            if not (is_first or is_same or (old_case == "model_config_list" and new_case == "model_config_list")):
                raise failed_precondition(
                    "Cannot transition to requested config. It is only legal to transition from one "
                    "ModelConfigList to another."
                )
            if new_case is None:
                log.info("Taking no action for empty config.")
                return
            if new_case == "model_config_list":
                config_lib.validate_model_config_list(new_config.model_config_list)
            if new_case == "model_config_list" and old_case == "model_config_list":
                assert old is not None
                config_lib.validate_no_platform_changes(old.model_config_list, new_config.model_config_list)
            self.config = model_server_config_pb2.ModelServerConfig()
            self.config.CopyFrom(new_config)
            self._update_labels(new_config)
            if new_case != "model_config_list":
                raise ServingError(Code.UNIMPLEMENTED, "ModelServer does not yet support custom model config.")
            log.info("Adding/updating models.")
            config_lib.validate_platforms(new_config.model_config_list)
            servables = self._servables_of(new_config)
            for servable in servables:
                log.info(" (Re-)adding model: %s", servable.name)
            if self.source is None:
                self.source = FileSystemSource(
                    servables, self.options.file_system_poll_wait_seconds, self.set_aspired_versions
                )
                names = {s.name for s in servables}
                waiter = asyncio.ensure_future(self._wait_models(names, fresh=False))
                await asyncio.sleep(0)
                self.source.start()
                message = self._unavailable_message(await waiter, "servable(s)")
            else:
                old_names = {s.name for s in self.source.servables}
                new_names = {s.name for s in servables} - old_names
                waiter = asyncio.ensure_future(self._wait_models(new_names, fresh=True))
                await asyncio.sleep(0)
                await self.source.update_config(servables)
                self._manage()
                message = self._unavailable_message(await waiter, "model(s)")
            if message is not None:
                raise ServingError(Code.UNKNOWN, message)
            log.info("Finished adding/updating models")
            log.info("Finished reloading config")

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        self._closing = True
        if self.source is not None:
            await self.source.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        servables = [h.servable for s in self.harnesses.values() for h in s.values() if h.servable is not None]
        loop = asyncio.get_running_loop()
        for servable in servables:
            await loop.run_in_executor(self._unloader, servable.close)
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._unloader.shutdown(wait=False, cancel_futures=True)
