"""Rollout stage "deploy / wait ready / drain / retire": the backends' control APIs the orchestrator drives.

TorchServe over its REST management API (token auth, keys refreshed on refusal as the data plane does);
TF Serving over gRPC ModelService (GetModelStatus, HandleReloadConfigRequest). Every call has a timeout.
Draining is the same poll for both (:func:`wait_drained`): TorchServe's queue and the gateway's in-flight count,
or the gateway's in-flight count alone for TF Serving (which finishes the requests holding a servable itself).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from gateway.backends.grpc_channel import GrpcChannel, TargetNotLoaded
from gateway.backends.http import HttpClient, HttpResult
from gateway.backends.torchserve_keys import KeyRefresher, TokenFile, bearer, refused_key
from gateway.errors import BackendTimeout, BackendUnavailable, DeployFailed, GatewayError
from gateway.protos import tf_model_server_config_pb2 as tfc
from gateway.protos import tf_serving_pb2 as tfs
from gateway.protos.services import MODEL_SERVICE, TF_GET_MODEL_STATUS, Method
from gateway.routes.schema import BackendConfig

__all__ = ["DeployFailed", "ModelSpecConfig", "TFServingControl", "TorchServeControl", "wait_drained"]

POLL_INTERVAL_S = 0.05
#: One management call that is not a synchronous registration.
CALL_TIMEOUT_S = 10.0

TF_HANDLE_RELOAD_CONFIG: Method[Any, Any] = Method(
    f"/{MODEL_SERVICE}/HandleReloadConfigRequest", tfc.ReloadConfigRequest, tfc.ReloadConfigResponse)


def _deadline(timeout_s: float) -> float:
    return time.monotonic() + timeout_s


#: The least time one status poll is given, even just before a wait's deadline: a poll cut to a few milliseconds
#: would fail for its own short timeout and hide what the backend was reporting.
MIN_POLL_CALL_S = 1.0


def _poll_timeout(deadline: float) -> float:
    return max(MIN_POLL_CALL_S, min(CALL_TIMEOUT_S, deadline - time.monotonic()))


#: The gateway's calls in flight to the version being drained (every worker's, every replica's).
InFlightCount = Callable[[], Awaitable[int]]


async def wait_drained(where: str, counts: Callable[[], Awaitable[Sequence[tuple[int, str]]]], *,
                       timeout_s: float) -> None:
    """Poll ``counts`` (each ``(n, what)``, e.g. ``(0, "in flight in the gateway")``) until every n is 0 in the
    same poll; BackendTimeout naming each count of the last poll when they do not all reach 0 in time."""
    deadline = _deadline(timeout_s)
    while True:
        seen = await counts()
        if all(n == 0 for n, _ in seen):
            return
        if time.monotonic() >= deadline:
            raise BackendTimeout(f"{where} did not drain within {timeout_s:g}s "
                                 f"({', '.join(f'{n} {what}' for n, what in seen)})")
        await asyncio.sleep(POLL_INTERVAL_S)


# ------------------------------------------------------------------------------------------------------------
# TorchServe
# ------------------------------------------------------------------------------------------------------------


class TorchServeControl:
    """TorchServe's management API for one backend (config.management_url, config.token_file).

    Retiring a version: move the default away, ``drain`` (TorchServe's queue AND the gateway's own in-flight
    count), then ``unregister``: a DELETE while requests for that version are queued leaves them hanging forever.
    """

    def __init__(self, config: BackendConfig) -> None:
        if not config.management_url:
            raise ValueError(f"backend '{config.name}' has no management_url")
        self.config = config
        self.base = config.management_url.rstrip("/")
        self.http = HttpClient(config)
        self.keys = KeyRefresher(config, TokenFile(config.token_file), self.http)

    async def _call(self, method: str, path: str, *, timeout_s: float = CALL_TIMEOUT_S) -> HttpResult:
        """One management call with the management key (a refused key is refreshed once)."""
        return await self.keys.call("management", lambda key: self.http.request(
            method, self.base + path, headers=bearer(key), timeout_s=timeout_s), refused_key)

    def _where(self, model: str, version: str | None = None) -> str:
        target = f"model '{model}'" + (f" version {version}" if version is not None else "")
        return f"TorchServe '{self.config.name}' {target}"

    async def register(self, model: str, version: str, archive: str, *, workers: int = 1,
                       timeout_s: float = 120) -> None:
        """Register ``archive`` (a name in the model store, or a URL) as ``model`` and wait for its workers.

        Already registered (409) is fine when that version is there with a READY worker. The archive's
        manifest must carry ``version``; otherwise what got registered is removed again and DeployFailed.
        """
        query = urlencode({"url": archive, "model_name": model, "initial_workers": workers,
                           "synchronous": "true"})
        result = await self._call("POST", f"/models?{query}", timeout_s=timeout_s)
        where = self._where(model, version)
        if result.status == 409:
            if await self._ready(model, version):
                return
            raise DeployFailed(f"{where}: already registered but not ready: {_message(result)}")
        if result.status != 200:
            raise DeployFailed(f"{where}: registering {archive!r} failed ({result.status}): {_message(result)}")
        if version not in await self.versions(model):
            registered = _registered_version(_message(result))
            if registered is not None:
                await self.unregister(model, registered)
            raise DeployFailed(f"{where}: {archive!r} registered as {_message(result)!r}, not version {version} "
                               "(the archive's manifest names another version); unregistered it again")

    async def _describe(self, model: str, version: str) -> list[dict[str, Any]] | None:
        """GET /models/m/v: the described versions, or None when that version is not registered."""
        result = await self._call("GET", f"/models/{quote(model, safe='')}/{quote(version, safe='')}")
        if result.status == 404:
            return None
        if result.status != 200:
            raise DeployFailed(f"{self._where(model, version)}: describe failed ({result.status}): "
                               f"{_message(result)}")
        doc = _json(result)
        return [d for d in doc if isinstance(d, dict)] if isinstance(doc, list) else []

    async def _ready(self, model: str, version: str) -> bool:
        described = await self._describe(model, version) or []
        return any(isinstance(w, dict) and w.get("status") == "READY"
                   for d in described for w in d.get("workers") or [])

    async def wait_ready(self, model: str, version: str, *, timeout_s: float = 120) -> None:
        """Until a worker of that version is READY. Not registered -> DeployFailed at once; slow -> BackendTimeout."""
        deadline = _deadline(timeout_s)
        while True:
            if await self._describe(model, version) is None:
                raise DeployFailed(f"{self._where(model, version)} is not registered")
            if await self._ready(model, version):
                return
            if time.monotonic() >= deadline:
                raise BackendTimeout(f"{self._where(model, version)} has no READY worker after {timeout_s:.3g}s")
            await asyncio.sleep(POLL_INTERVAL_S)

    async def set_default(self, model: str, version: str) -> None:
        result = await self._call("PUT", f"/models/{quote(model, safe='')}/{quote(version, safe='')}/set-default")
        if result.status != 200:
            raise DeployFailed(f"{self._where(model, version)}: set-default failed ({result.status}): "
                               f"{_message(result)}")

    async def pending(self, model: str, version: str) -> int:
        """jobQueueStatus.pendingRequests of that version (requests queued in TorchServe)."""
        described = await self._describe(model, version)
        if described is None:
            raise DeployFailed(f"{self._where(model, version)} is not registered")
        total = 0
        for d in described:
            queue = d.get("jobQueueStatus")
            if isinstance(queue, dict):
                total += int(queue.get("pendingRequests") or 0)
        return total

    async def drain(self, model: str, version: str, inflight: InFlightCount, *, timeout_s: float = 60) -> None:
        """Until TorchServe's queue for that version AND the gateway's own in-flight count are both 0 (seen in
        the same poll). Call it after moving traffic away; BackendTimeout when they do not empty in time."""
        async def counts() -> list[tuple[int, str]]:
            return [(await self.pending(model, version), "queued in TorchServe"),
                    (await inflight(), "in flight in the gateway")]

        await wait_drained(self._where(model, version), counts, timeout_s=timeout_s)

    async def unregister(self, model: str, version: str) -> None:
        """DELETE /models/m/v; already gone (404) is fine. Drain first: that is the caller's job."""
        result = await self._call("DELETE", f"/models/{quote(model, safe='')}/{quote(version, safe='')}")
        if result.status not in (200, 404):
            raise DeployFailed(f"{self._where(model, version)}: unregister failed ({result.status}): "
                               f"{_message(result)}")

    async def versions(self, model: str) -> list[str]:
        """The registered versions of ``model`` ([] when it is not registered at all)."""
        result = await self._call("GET", f"/models/{quote(model, safe='')}/all")
        if result.status == 404:
            return []
        if result.status != 200:
            raise DeployFailed(f"{self._where(model)}: listing versions failed ({result.status}): "
                               f"{_message(result)}")
        doc = _json(result)
        return [str(d["modelVersion"]) for d in doc if isinstance(d, dict) and "modelVersion" in d] \
            if isinstance(doc, list) else []

    async def close(self) -> None:
        await self.http.close()


def _json(result: HttpResult) -> Any:
    try:
        return json.loads(result.body)
    except ValueError:
        raise DeployFailed(f"TorchServe's answer is not JSON: {result.body[:200]!r}") from None


def _message(result: HttpResult) -> str:
    """TorchServe's own message from an answer (``message`` of an error, ``status`` of a success)."""
    try:
        doc = json.loads(result.body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for key in ("message", "status"):
            if key in doc:
                return str(doc[key])
    return result.body[:500].decode(errors="replace").strip()


def _registered_version(message: str) -> str | None:
    """``Model "scale" Version: 2 registered with 1 initial workers`` -> "2"."""
    _, found, rest = message.partition("Version: ")
    return rest.split(" ", 1)[0] or None if found else None


# ------------------------------------------------------------------------------------------------------------
# TF Serving
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelSpecConfig:
    """One entry of TF Serving's model_config_list, loading exactly ``versions`` (policy ``specific``).

    Labels may only point at versions that are already AVAILABLE (TF Serving refuses the reload otherwise):
    moving a label to a new version is two reloads, first load it, then move the label.
    """

    name: str
    base_path: str
    versions: tuple[int, ...]
    labels: Mapping[str, int] = field(default_factory=dict)
    platform: str = "tensorflow"

    def to_proto(self) -> tfc.ModelConfig:
        config = tfc.ModelConfig(name=self.name, base_path=self.base_path, model_platform=self.platform)
        config.model_version_policy.specific.versions.extend(self.versions)
        for label, version in self.labels.items():
            config.version_labels[label] = version
        return config


class TFServingControl:
    """TF Serving's ModelService over gRPC (config.grpc_target)."""

    def __init__(self, config: BackendConfig) -> None:
        if not config.grpc_target:
            raise ValueError(f"backend '{config.name}' has no grpc_target")
        self.config = config
        self.channel = GrpcChannel(config, config.grpc_target)

    async def status(self, model: str, *, timeout_s: float = CALL_TIMEOUT_S) -> dict[str, str]:
        """version -> state (AVAILABLE, LOADING, END...); {} when TF Serving knows no version of ``model``."""
        return {str(s.version): tfs.ModelVersionStatus.State.Name(s.state)
                for s in await self._statuses(model, timeout_s)}

    async def _statuses(self, model: str, timeout_s: float) -> list[tfs.ModelVersionStatus]:
        request = tfs.GetModelStatusRequest(model_spec=tfs.ModelSpec(name=model))
        try:
            response = await self.channel.call(TF_GET_MODEL_STATUS, request, where=f"model '{model}'",
                                               timeout_s=timeout_s)
        except TargetNotLoaded:  # "Could not find any versions of model M"
            return []
        return list(response.model_version_status)

    async def reload(self, models: Sequence[ModelSpecConfig], *, timeout_s: float = 120) -> None:
        """HandleReloadConfigRequest with the WHOLE model_config_list: TF Serving unloads every model left out.
        It waits only for new model names; wait for new versions with ``wait_available``."""
        config = tfc.ModelServerConfig()
        config.model_config_list.config.extend(m.to_proto() for m in models)
        await self.reload_config(config, timeout_s=timeout_s)

    async def reload_config(self, config: tfc.ModelServerConfig, *, timeout_s: float = 120) -> None:
        """HandleReloadConfigRequest with ``config`` as it is (e.g. a parsed models.config: every model, every
        version policy and label as the file has them). DeployFailed with TF's message when it refuses it."""
        request = tfc.ReloadConfigRequest()
        request.config.CopyFrom(config)
        names = ", ".join(m.name for m in config.model_config_list.config) or "no models"
        try:
            response = await self.channel.call(TF_HANDLE_RELOAD_CONFIG, request, where="reload",
                                               timeout_s=timeout_s)
        except GatewayError as exc:
            # Unreachable or too slow stays what it is; anything TF Serving answered is a refused config.
            if isinstance(exc, BackendTimeout | BackendUnavailable) and not isinstance(exc, TargetNotLoaded):
                raise
            raise DeployFailed(f"TF Serving '{self.config.name}' refused the config ({names}): {exc.message}") from None
        if response.status.error_code != 0:
            raise DeployFailed(f"TF Serving '{self.config.name}' refused the config ({names}): "
                               f"{response.status.error_message}")

    async def wait_available(self, model: str, version: str, *, timeout_s: float = 120) -> None:
        """Until that version is AVAILABLE. A load that failed (END with an error) -> DeployFailed with TF's
        message; still not there after ``timeout_s`` -> BackendTimeout naming the last state seen."""
        deadline = _deadline(timeout_s)
        last = "not listed"
        while True:
            try:
                statuses = await self._statuses(model, _poll_timeout(deadline))
            except BackendTimeout as exc:  # one slow answer: keep polling until the deadline
                statuses, last = [], f"no status answer ({exc.message})"
            for s in statuses:
                if str(s.version) != version:
                    continue
                last = tfs.ModelVersionStatus.State.Name(s.state)
                if s.state == tfs.ModelVersionStatus.AVAILABLE:
                    return
                if s.state == tfs.ModelVersionStatus.END and s.status.error_code != 0:
                    raise DeployFailed(f"TF Serving '{self.config.name}' failed to load model '{model}' version "
                                       f"{version}: {s.status.error_message}")
            if time.monotonic() >= deadline:
                hint = "" if last != "not listed" else (": TF Serving lists only the versions it finds as "
                                                        "directories under the model's base_path")
                raise BackendTimeout(f"TF Serving '{self.config.name}' model '{model}' version {version} not "
                                     f"AVAILABLE after {timeout_s:.3g}s (last: {last}{hint})")
            await asyncio.sleep(POLL_INTERVAL_S)

    async def wait_unloaded(self, model: str, version: str, *, timeout_s: float = 60) -> None:
        """Until TF Serving reports that version END or no longer lists it (unloaded, serves nothing);
        BackendTimeout naming the last state seen otherwise."""
        deadline = _deadline(timeout_s)
        while True:
            state = (await self.status(model, timeout_s=_poll_timeout(deadline))).get(version)
            if state is None or state == "END":
                return
            if time.monotonic() >= deadline:
                raise BackendTimeout(f"TF Serving '{self.config.name}' model '{model}' version {version} still "
                                     f"{state} after {timeout_s:g}s")
            await asyncio.sleep(POLL_INTERVAL_S)

    async def drain(self, model: str, version: str, inflight: InFlightCount, *, timeout_s: float = 60) -> None:
        """Until the gateway's own in-flight count for that version is 0. TF Serving has no queue to poll: the
        requests it holds keep their servable until they finish, even once it is unloaded from the config."""
        async def counts() -> list[tuple[int, str]]:
            return [(await inflight(), "in flight in the gateway")]

        await wait_drained(f"TF Serving '{self.config.name}' model '{model}' version {version}", counts,
                           timeout_s=timeout_s)

    async def close(self) -> None:
        await self.channel.close()
