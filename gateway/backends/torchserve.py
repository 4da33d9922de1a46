"""TorchServe REST adapter: inference via /predictions (v2 JSON handlers), status via the management API."""

from __future__ import annotations

import json
from typing import Any

from gateway.backends.base import PassesPredictions
from gateway.backends.endpoints import Endpoint, EndpointPool
from gateway.backends.http import HttpClient, HttpResult
from gateway.backends.torchserve_errors import answer_error
from gateway.backends.torchserve_keys import KeyRefresher, TokenFile, bearer, refused_key
from gateway.codecs import v2_json
from gateway.codecs.jsonio import loads
from gateway.errors import BackendError, GatewayError
from gateway.routes.schema import BackendConfig
from gateway.types import InferRequest, InferResponse, ModelSchema, ModelStatus, Target


class TorchServeBackend(PassesPredictions):
    def __init__(self, config: BackendConfig, http_client: str = "aiohttp") -> None:
        self.config = config
        self.endpoints = EndpointPool(config, config.inference_urls, probe=self._probe)
        self.http = HttpClient(config, self.endpoints, client=http_client)
        self.keys = KeyRefresher(config, TokenFile(config.token_file), self.http)

    async def _call(self, kind: str, method: str, url: str, body: bytes | None = None,
                    content_type: str | None = None) -> HttpResult:
        """One management call with the right bearer key (a refused key is refreshed once:
        gateway/backends/torchserve_keys.py)."""
        return await self.keys.call(kind, lambda key: self.http.request(
            method, url, body=body, headers={**bearer(key), **_type(content_type)}), refused_key)

    async def _predict(self, target: Target, body: bytes, content_type: str) -> HttpResult:
        """/predictions on one of the inference endpoints, with the inference key."""
        path = f"/predictions/{target.model}/{target.version}"
        return await self.keys.call("inference", lambda key: self.http.call(
            "POST", path, body=body, headers={**bearer(key), **_type(content_type)}), refused_key)

    async def _probe(self, ep: Endpoint, limit: float) -> bool:
        """TorchServe's /ping: 200 while it serves (Healthy, or Partial Healthy with some workers down)."""
        result = await self.keys.call("inference", lambda key: self.http.send(
            "GET", f"{ep.address}/ping", body=None, headers=bearer(key), limit=limit, host=ep.host), refused_key)
        return result.status == 200

    async def infer(self, target: Target, request: InferRequest) -> InferResponse:
        result = await self._predict(target, v2_json.encode_request(request), "application/json")
        self._raise_for_status(result, target)
        try:
            response = v2_json.decode_response(result.body)
        except GatewayError as exc:
            raise BackendError(f"TorchServe's answer is not a v2 inference response: {exc.message}") from None
        return response

    async def forward_predictions(self, target: Target, body: bytes, content_type: str) -> tuple[bytes, str]:
        result = await self._predict(target, body, content_type or "application/octet-stream")
        self._raise_for_status(result, target)
        return result.body, result.content_type

    async def status(self, target: Target) -> ModelStatus:
        if self.config.management_url is None:
            return ModelStatus(version=target.version, state="UNKNOWN",
                               error_message=f"backend '{self.config.name}' has no management_url")
        url = f"{self.config.management_url}/models/{target.model}/{target.version}"
        try:
            result = await self._call("management", "GET", url)
        except GatewayError as exc:
            return ModelStatus(version=target.version, state="UNKNOWN", error_message=exc.message)
        if result.status == 404:
            return ModelStatus(version=target.version, state="END", error_message=_error_text(result))
        if result.status != 200:
            return ModelStatus(version=target.version, state="UNKNOWN", error_message=_error_text(result))
        return described_status(target.version, result.body.decode(errors="replace"))

    async def schema(self, target: Target, signature: str | None = None) -> ModelSchema | None:
        # TorchServe does not describe tensors; the routes file's schema is the source for its models.
        return None

    def _raise_for_status(self, result: HttpResult, target: Target) -> None:
        if result.status != 200:
            raise self._status_error(result, target).from_backend("status", str(result.status))

    def _status_error(self, result: HttpResult, target: Target) -> GatewayError:
        kind, message = _error_fields(result)
        where = f"backend '{self.config.name}' model '{target.model}' version {target.version}"
        return answer_error(where, result.status, kind, message)

    async def close(self) -> None:
        await self.endpoints.close()
        await self.http.close()


def _type(content_type: str | None) -> dict[str, str]:
    return {"Content-Type": content_type} if content_type else {}


def _error_fields(result: HttpResult) -> tuple[str, str]:
    try:
        doc = loads(result.body)
    except GatewayError:
        doc = None
    if isinstance(doc, dict):
        return str(doc.get("type", "")), str(doc.get("message", doc.get("error", "")))
    return "", f"HTTP {result.status}: {result.body[:200].decode(errors='replace')}"


def _error_text(result: HttpResult) -> str:
    return _error_fields(result)[1]


def described_status(version: str, msg: str) -> ModelStatus:
    """TorchServe's describe JSON (REST GET /models/m/v, and gRPC DescribeModel's msg): a list of versions,
    each with its workers; READY workers mean AVAILABLE."""
    try:
        described: Any = json.loads(msg)
    except ValueError:
        return ModelStatus(version=version, state="UNKNOWN", error_message=f"describe answered: {msg[:200]}")
    entries = described if isinstance(described, list) else []
    workers = [w for v in entries if isinstance(v, dict) for w in v.get("workers", []) if isinstance(w, dict)]
    ready = any(w.get("status") == "READY" for w in workers)
    return ModelStatus(version=version, state="AVAILABLE" if ready else "LOADING",
                       error_message="" if ready else "no worker is READY")
