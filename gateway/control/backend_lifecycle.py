"""The two backend stages of a rollout around its canary, one small object per backend kind.

``deploy``: load the new version and wait until it serves; ``retire``: drain the old version, then unload it.
The orchestrator (:mod:`gateway.control.orchestrator`) picks the object with :func:`lifecycle_for` from the target's
backend kind and knows nothing of either backend; each transition is reported through ``note`` (recorded in the
rollout's history and saved), and ``retire`` ends with the name of its last event.

TorchServe (:class:`TorchServeLifecycle`, management API): deploy registers an archive of the model store and
waits for a READY worker; retire moves TorchServe's default to the new version (it never unregisters a
default), drains (TorchServe's queue and the gateway's in-flight count both 0) and unregisters.

TF Serving (:class:`TFServingLifecycle`, gRPC ModelService plus the backend's ``model_config_file``): TF Serving
may poll its models.config, so the file is the source of truth. Deploy edits the file (the model's policy
becomes ``specific`` {served versions + new}; see :mod:`gateway.control.tf_models_config`), reloads TF Serving
with the same whole list and waits for AVAILABLE; any failure puts the file back as it was (and reloads) so that
the poller does not retry the bad version. Retire drains (the gateway's in-flight count: TF Serving finishes
the requests holding a servable itself), writes the file without the old version, reloads and waits until TF
Serving reports it END or no longer lists it. A version a label in the file points at is never removed. Edits
of one file are serialised: an asyncio lock per file in this process and ``writer.locked``'s flock on
``.<name>.lock`` next to it across processes, held from the read to the end of the reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.control import tf_models_config as tmc
from gateway.control.backend_control import InFlightCount, TFServingControl, TorchServeControl
from gateway.control.validation import explain
from gateway.errors import DeployFailed, InvalidChange
from gateway.protos import tf_model_server_config_pb2 as tfc
from gateway.routes import writer
from gateway.routes.schema import BackendConfig, VersionConfig

__all__ = ["BackendLifecycle", "ConfigFiles", "RetireSkipped", "TFServingLifecycle",
           "TorchServeLifecycle", "describe", "lifecycle_class", "lifecycle_for"]

DEFAULT_DEPLOY_TIMEOUT_S = 120.0
#: A reload of TF Serving for a retire (it waits only for new model names, so it is quick).
RELOAD_TIMEOUT_S = 30.0
#: How long TF Serving may take to unload a retired version (END or gone).
UNLOAD_TIMEOUT_S = 60.0


class RetireSkipped(Exception):
    """The old version must stay: the routes send it traffic, or a label in models.config points at it."""


class Note(Protocol):
    """Records one lifecycle event in the rollout's history (and saves the rollout)."""

    async def __call__(self, event: str, why: str, **what: Any) -> None: ...


def describe(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


Timeout = Field(DEFAULT_DEPLOY_TIMEOUT_S, gt=0, le=3600, allow_inf_nan=False,
                description="seconds to wait until the version serves")


def _checked(spec: type[BaseModel], value: Any, what: str) -> dict[str, Any]:
    """``value`` as ``spec`` (pydantic) or InvalidChange naming every problem under ``deploy``."""
    if not isinstance(value, dict):
        raise InvalidChange(f"deploy must be an object {what}, got {value!r}")
    try:
        return spec.model_validate(value).model_dump()
    except ValidationError as exc:
        raise InvalidChange(explain(exc, "deploy")) from None


class TorchServeDeploy(BaseModel):
    """``deploy`` of a TorchServe target: register an archive of its model store."""

    model_config = ConfigDict(extra="forbid", strict=True)

    archive: str = Field(min_length=1, description="the archive's file name in the model store, or an http(s) URL")
    workers: int = Field(1, ge=1, le=64, description="initial workers")
    timeout_s: float = Timeout


class TFServingDeploy(BaseModel):
    """``deploy`` of a TF Serving target: its version directory is already under the model's base_path."""

    model_config = ConfigDict(extra="forbid", strict=True)

    timeout_s: float = Timeout


def archive_in_store(archive: str, backend: BackendConfig) -> str:
    """The archive TorchServe is asked to register, refused (InvalidChange) before any backend is asked when it
    names a file outside the model store: a path with ``..``, an absolute path (unless inside the backend's
    ``model_store``), or, with ``model_store`` set, a file that is not in it. http(s) URLs pass: TorchServe's own
    ``allowed_urls`` decides those."""
    archive = archive.strip()
    if archive.startswith(("http://", "https://")):
        return archive
    if "\\" in archive or "\x00" in archive or ".." in Path(archive).parts:
        raise InvalidChange(f"deploy.archive {archive!r}: a file of the model store is named without '..'")
    store = backend.model_store
    if store is None:
        if os.path.isabs(archive) or "/" in archive:
            raise InvalidChange(f"deploy.archive {archive!r}: name a file of TorchServe's model store (set "
                                f"backends.{backend.name}.model_store to allow paths under it)")
        return archive
    real_store = Path(os.path.realpath(store))
    real = Path(os.path.realpath(store / archive))
    if real_store not in real.parents:
        raise InvalidChange(f"deploy.archive {archive!r} is outside the model store {store}")
    if not real.exists():
        raise InvalidChange(f"deploy.archive {archive!r}: no such archive in the model store {store}")
    return str(real.relative_to(real_store))


class ConfigFiles:
    """Serialises edits of a file: an asyncio lock per real path in this process, and across processes the
    flock of :func:`gateway.routes.writer.locked` (``.<name>.lock`` next to the file)."""

    def __init__(self, lock_timeout_s: float = writer.LOCK_TIMEOUT_S) -> None:
        self.lock_timeout_s = lock_timeout_s
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def editing(self, path: Path) -> AsyncIterator[None]:
        async with self._locks.setdefault(os.path.realpath(path), asyncio.Lock()):
            with contextlib.ExitStack() as stack:
                await asyncio.to_thread(stack.enter_context, writer.locked(path, self.lock_timeout_s))
                yield


class BackendLifecycle:
    """What a rollout does on one backend: ``deploy`` a version, ``retire`` another. One per operation;
    ``close`` it after."""

    kind: ClassVar[str]
    #: The fields of the rollout's ``deploy`` spec for this kind, for messages.
    deploy_fields: ClassVar[str]

    def __init__(self, backend: BackendConfig, files: ConfigFiles) -> None:
        self.backend = backend
        self.files = files

    @classmethod
    def missing(cls, backend: BackendConfig) -> str | None:
        """What the backend lacks for deploy and retire (a phrase after "needs"), or None."""
        raise NotImplementedError

    @classmethod
    def plan_deploy(cls, value: Any, backend: BackendConfig) -> dict[str, Any]:
        """The rollout's ``deploy`` spec checked and normalised for this kind; InvalidChange otherwise."""
        raise NotImplementedError

    async def deploy(self, target: VersionConfig, spec: Mapping[str, Any], note: Note) -> None:
        """Load ``target`` and wait until it serves, noting "deploying" then "deployed"; DeployFailed (the whole
        reason, the backend's own message in it) otherwise."""
        raise NotImplementedError

    async def retire(self, old: VersionConfig, new: VersionConfig, note: Note, *, inflight: InFlightCount,
                     still_used: Callable[[], Awaitable[list[str]]], drain_timeout_s: float) -> tuple[str, str]:
        """Drain then unload ``old`` (the routes no longer send it traffic; ``new`` is what they send instead):
        notes "draining", "drained"; returns the last event and its reason. ``still_used`` re-reads the routes
        just before the unload (RetireSkipped when they point traffic at it again)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


# --- TorchServe -------------------------------------------------------------------------------------------------

class TorchServeLifecycle(BackendLifecycle):
    kind = "torchserve"
    deploy_fields = '{"archive", "workers"?, "timeout_s"?}'

    def __init__(self, backend: BackendConfig, files: ConfigFiles) -> None:
        super().__init__(backend, files)
        self.control = TorchServeControl(backend)

    @classmethod
    def missing(cls, backend: BackendConfig) -> str | None:
        return None if backend.management_url else f"a management_url on TorchServe backend {backend.name!r}"

    @classmethod
    def plan_deploy(cls, value: Any, backend: BackendConfig) -> dict[str, Any]:
        spec = _checked(TorchServeDeploy, value, f"{cls.deploy_fields} for a TorchServe target")
        spec["archive"] = archive_in_store(spec["archive"], backend)
        return spec

    async def deploy(self, target: VersionConfig, spec: Mapping[str, Any], note: Note) -> None:
        archive = spec["archive"]
        await note("deploying", f"registering {archive!r}", deploy=dict(spec))
        began = time.monotonic()
        timeout = float(spec["timeout_s"])
        try:
            await self.control.register(target.model, target.version, archive, workers=int(spec["workers"]),
                                        timeout_s=timeout)
            await self.control.wait_ready(target.model, target.version,
                                          timeout_s=max(1.0, timeout - (time.monotonic() - began)))
        except Exception as exc:
            raise DeployFailed(f"deploy of {archive!r} as {target.model} version {target.version} failed: "
                               f"{describe(exc)}") from exc
        await note("deployed", f"{target.model} version {target.version} READY on backend {target.backend!r}",
                   seconds=round(time.monotonic() - began, 3))

    async def retire(self, old: VersionConfig, new: VersionConfig, note: Note, *, inflight: InFlightCount,
                     still_used: Callable[[], Awaitable[list[str]]], drain_timeout_s: float) -> tuple[str, str]:
        if (new.backend, new.model) == (old.backend, old.model):
            # TorchServe never unregisters a model's default version: move its default first.
            await self.control.set_default(new.model, new.version)
            await note("backend_default", f"TorchServe default of {new.model} set to version {new.version}")
        await note("draining", f"{old.model} version {old.version} on {old.backend!r}")
        began = time.monotonic()
        await self.control.drain(old.model, old.version, inflight, timeout_s=drain_timeout_s)
        await note("drained", "TorchServe's queue and the gateway's in-flight count are 0",
                   seconds=round(time.monotonic() - began, 3))
        users = await still_used()  # just before the DELETE: someone may have pointed traffic back meanwhile
        if users:
            raise RetireSkipped("the routes point traffic at it again: " + "; ".join(users))
        await self.control.unregister(old.model, old.version)
        return "unregistered", f"{old.model} version {old.version} unregistered from {old.backend!r}"

    async def close(self) -> None:
        await self.control.close()


# --- TF Serving -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Edit:
    """One edit of models.config: the text before and the text written, and the model's entry before."""

    before: str
    after: str
    entry_before: tfc.ModelConfig


Change = Callable[[tfc.ModelServerConfig, list[int]], tfc.ModelServerConfig]


class TFServingLifecycle(BackendLifecycle):
    kind = "tfserving"
    deploy_fields = '{"timeout_s"?}'

    def __init__(self, backend: BackendConfig, files: ConfigFiles) -> None:
        super().__init__(backend, files)
        if backend.model_config_file is None:
            raise ValueError(f"backend '{backend.name}' has no model_config_file")
        self.path: Path = backend.model_config_file
        self.control = TFServingControl(backend)

    @classmethod
    def missing(cls, backend: BackendConfig) -> str | None:
        needs = []
        if backend.model_config_file is None:
            needs.append(f"backends.{backend.name}.model_config_file (the models.config TF Serving was started "
                         "with): the gateway cannot reload TF Serving without the whole model list, which only "
                         "that file has")
        if not backend.grpc_target:
            needs.append(f"backends.{backend.name}.grpc_target (TF Serving's gRPC port, for its ModelService)")
        return f"TF Serving backend {backend.name!r} to have " + " and ".join(needs) if needs else None

    @classmethod
    def plan_deploy(cls, value: Any, backend: BackendConfig) -> dict[str, Any]:
        torchserve_only = sorted(set(value) & {"archive", "workers"}) if isinstance(value, dict) else []
        if torchserve_only:
            raise InvalidChange(f"deploy.{' and deploy.'.join(torchserve_only)}: TorchServe only; a TF Serving "
                                "target loads the version from its directory under the model's base_path (publish "
                                f"it there first), and its deploy takes {cls.deploy_fields} only")
        return _checked(TFServingDeploy, value, f"{cls.deploy_fields} for a TF Serving target")

    async def deploy(self, target: VersionConfig, spec: Mapping[str, Any], note: Note) -> None:
        what = f"{target.model} version {target.version} on TF Serving {target.backend!r}"
        await note("deploying", f"loading {what} (models.config {self.path})", deploy=dict(spec))
        began = time.monotonic()
        timeout = float(spec["timeout_s"])
        version = int(target.version)
        try:
            edit = await self._edit(target.model, lambda config, available: tmc.with_version(
                config, target.model, version, available), timeout_s=timeout)
        except Exception as exc:
            raise DeployFailed(f"deploy of {what} failed: {describe(exc)}") from exc
        try:
            await self.control.wait_available(target.model, target.version,
                                              timeout_s=max(1.0, timeout - (time.monotonic() - began)))
        except asyncio.CancelledError:  # the rollout was aborted meanwhile: do not leave the version in the file
            await asyncio.shield(self._undo(edit))
            raise
        except Exception as exc:
            raise DeployFailed(f"deploy of {what} failed: {describe(exc)}; {await self._undo(edit)}") from exc
        await note("deployed", f"{what} AVAILABLE", seconds=round(time.monotonic() - began, 3))

    async def retire(self, old: VersionConfig, new: VersionConfig, note: Note, *, inflight: InFlightCount,
                     still_used: Callable[[], Awaitable[list[str]]], drain_timeout_s: float) -> tuple[str, str]:
        version = int(old.version)
        what = f"{old.model} version {old.version} on {old.backend!r}"
        self._refuse_labelled(await self._read_config(), old.model, version)
        await note("draining", what)
        began = time.monotonic()
        await self.control.drain(old.model, old.version, inflight, timeout_s=drain_timeout_s)
        await note("drained", "the gateway's in-flight count is 0 (TF Serving finishes the requests it holds)",
                   seconds=round(time.monotonic() - began, 3))
        users = await still_used()  # just before the unload: someone may have pointed traffic back meanwhile
        if users:
            raise RetireSkipped("the routes point traffic at it again: " + "; ".join(users))

        def change(config: tfc.ModelServerConfig, available: list[int]) -> tfc.ModelServerConfig:
            self._refuse_labelled(config, old.model, version)  # again: the file may have changed since
            return tmc.without_version(config, old.model, version, available)

        edit = await self._edit(old.model, change, timeout_s=RELOAD_TIMEOUT_S)
        await self.control.wait_unloaded(old.model, old.version, timeout_s=UNLOAD_TIMEOUT_S)
        kept = tmc.served_versions(tmc.entry(tmc.parse(edit.after), old.model), ())
        return "unloaded", (f"{what} unloaded (models.config {self.path} lists version(s) "
                            f"{', '.join(map(str, kept))})")

    def _refuse_labelled(self, config: tfc.ModelServerConfig, model: str, version: int) -> None:
        labels = tmc.labels_on(config, model, version)
        if labels:
            raise RetireSkipped(f"label(s) {', '.join(labels)} of {model} in {self.path} point at version "
                                f"{version} (TF Serving only serves labels on AVAILABLE versions: move them first)")

    async def _read(self) -> str:
        return await asyncio.to_thread(self.path.read_text, encoding="utf-8")

    async def _read_config(self) -> tfc.ModelServerConfig:
        return tmc.parse(await self._read(), str(self.path))

    async def _available(self, model: str) -> list[int]:
        return sorted(int(v) for v, state in (await self.control.status(model)).items() if state == "AVAILABLE")

    async def _edit(self, model: str, change: Change, *, timeout_s: float) -> _Edit:
        """Read, ``change``, write atomically (unless nothing changed), reload TF Serving with the whole new list;
        a refused reload puts the file back (DeployFailed with both outcomes)."""
        async with self.files.editing(self.path):
            before = await self._read()
            config = tmc.parse(before, str(self.path))
            try:
                item = tmc.entry(config, model)
                available = await self._available(model) if tmc.policy_of(item) != "specific" else []
                new = change(config, available)
            except tmc.ModelsConfigError as exc:
                raise tmc.ModelsConfigError(f"{self.path}: {exc}") from None
            if new == config:  # nothing to change (a deploy or retire done before): the file keeps its text
                after = before
            else:
                after = tmc.render(new)
                await asyncio.to_thread(writer.atomic_write, self.path, after)
            entry_before = tfc.ModelConfig()
            entry_before.CopyFrom(item)
            edit = _Edit(before, after, entry_before)
            try:
                await self.control.reload_config(new, timeout_s=timeout_s)
            except Exception as exc:
                raise DeployFailed(f"{describe(exc)}; {await self._restore(edit)}") from exc
            return edit

    async def _undo(self, edit: _Edit) -> str:
        async with self.files.editing(self.path):
            return await self._restore(edit)

    async def _restore(self, edit: _Edit) -> str:
        """Put the file back (the text before, or, when someone changed it since, this model's entry before)
        and reload TF Serving with it; what happened, for the reason. Call it holding the file."""
        try:
            current = await self._read()
            if current == edit.after:
                text = edit.before
            else:
                text = tmc.render(tmc.with_entry(tmc.parse(current, str(self.path)), edit.entry_before))
            await asyncio.to_thread(writer.atomic_write, self.path, text)
        except Exception as exc:
            return f"restoring {self.path} failed too: {describe(exc)}"
        try:
            await self.control.reload_config(tmc.parse(text, str(self.path)), timeout_s=RELOAD_TIMEOUT_S)
        except Exception as exc:
            return f"{self.path} restored, but reloading TF Serving with it failed: {describe(exc)}"
        return f"{self.path} restored"

    async def close(self) -> None:
        await self.control.close()


LIFECYCLES: dict[str, type[BackendLifecycle]] = {"torchserve": TorchServeLifecycle, "tfserving": TFServingLifecycle}


def lifecycle_class(backend: BackendConfig) -> type[BackendLifecycle]:
    return LIFECYCLES[backend.kind]


def lifecycle_for(backend: BackendConfig, files: ConfigFiles) -> BackendLifecycle:
    """The backend's lifecycle object; InvalidChange when the backend lacks what it needs."""
    cls = lifecycle_class(backend)
    missing = cls.missing(backend)
    if missing is not None:
        raise InvalidChange(f"deploy and retire need {missing}")
    return cls(backend, files)
