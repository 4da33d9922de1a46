"""TorchServe REST adapter: inference via /predictions (v2 JSON handlers), status via the management API."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from gateway.backends.base import PassesPredictions
from gateway.backends.http import HttpClient, HttpResult
from gateway.codecs import v2_json
from gateway.codecs.jsonio import loads
from gateway.errors import (
    BackendError,
    BackendUnavailable,
    GatewayError,
    InvalidArgument,
    PayloadTooLarge,
    error_for_status,
)
from gateway.routes.schema import BackendConfig
from gateway.types import InferRequest, InferResponse, ModelSchema, ModelStatus, Target


class TokenFile:
    """TorchServe's key_file.json (inference, management and API keys). Read once, and again only when
    TorchServe refuses a key: it rewrites the file when a key is rotated."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._keys: dict[str, str] = {}

    def key(self, kind: str) -> str | None:
        if self.path is None:
            return None
        if kind not in self._keys:
            self.reload()
        return self._keys.get(kind)

    def reload(self) -> None:
        if self.path is None:
            return
        for attempt in range(3):
            try:
                doc = json.loads(self.path.read_text())
                self._keys = {kind: str(doc[kind]["key"]) for kind in ("inference", "management", "API")
                              if kind in doc}
                return
            except ValueError:
                # TorchServe rewrites the file in place: a read can land on a half-written file.
                time.sleep(0.02 * (attempt + 1))
            except (OSError, KeyError, TypeError) as exc:
                raise BackendUnavailable(f"cannot read TorchServe key file {self.path}: {exc}") from None
        raise BackendUnavailable(f"TorchServe key file {self.path} is not valid JSON")

    def headers(self, kind: str) -> dict[str, str]:
        key = self.key(kind)
        return {} if key is None else {"Authorization": f"Bearer {key}"}


class KeyRefresher:
    """Gets a valid key after TorchServe refused one. A rotated key is in key_file.json (TorchServe rewrites
    it); an expired one is not (the file keeps it after 60 min by default): then rotate with the API key. Key
    rotation exists only on the REST management API, so that needs management_url. One refresh at a time, so
    a burst of refusals does not rotate the key over and over."""

    def __init__(self, config: BackendConfig, tokens: TokenFile, http: HttpClient) -> None:
        self.config = config
        self.tokens = tokens
        self.http = http
        self._lock = asyncio.Lock()

    async def refresh(self, kind: str, refused: str | None) -> bool:
        """True when the file now holds a key other than `refused` (worth one retry)."""
        if self.tokens.path is None:
            return False
        async with self._lock:
            if self.tokens.key(kind) != refused:
                return True  # refreshed by a concurrent request meanwhile
            self.tokens.reload()
            if self.tokens.key(kind) != refused:
                return True
            api_key = self.tokens.key("API")
            if api_key is None or self.config.management_url is None:
                return False
            result = await self.http.request("POST", f"{self.config.management_url}/token?type={kind}",
                                             headers={"Authorization": f"Bearer {api_key}"})
            if result.status != 200:
                return False
            self.tokens.reload()
            return self.tokens.key(kind) != refused


class TorchServeBackend(PassesPredictions):
    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.http = HttpClient(config)
        self.tokens = TokenFile(config.token_file)
        self.keys = KeyRefresher(config, self.tokens, self.http)

    async def _call(self, kind: str, method: str, url: str, body: bytes | None = None,
                    content_type: str | None = None) -> HttpResult:
        """One call with the right bearer key; when TorchServe refuses the key, get a valid one and retry once."""
        for attempt in (1, 2):
            used = self.tokens.key(kind)
            headers = self.tokens.headers(kind)
            if content_type:
                headers["Content-Type"] = content_type
            result = await self.http.request(method, url, body=body, headers=headers)
            if attempt == 1 and _invalid_key(result) and await self.keys.refresh(kind, used):
                continue
            return result
        raise AssertionError("unreachable")

    def _predictions_url(self, target: Target) -> str:
        return f"{self.config.url}/predictions/{target.model}/{target.version}"

    async def infer(self, target: Target, request: InferRequest) -> InferResponse:
        result = await self._call("inference", "POST", self._predictions_url(target),
                                  v2_json.encode_request(request), "application/json")
        self._raise_for_status(result, target)
        try:
            response = v2_json.decode_response(result.body)
        except GatewayError as exc:
            raise BackendError(f"TorchServe's answer is not a v2 inference response: {exc.message}") from None
        return response

    async def forward_predictions(self, target: Target, body: bytes, content_type: str) -> tuple[bytes, str]:
        result = await self._call("inference", "POST", self._predictions_url(target), body,
                                  content_type or "application/octet-stream")
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
        if result.status == 200:
            return
        kind, message = _error_fields(result)
        where = f"backend '{self.config.name}' model '{target.model}' version {target.version}"
        if result.status == 404:
            raise BackendUnavailable(f"{where} is not registered: {message}")
        if result.status == 400 and kind == "InvalidKeyException":
            raise BackendUnavailable(f"{where}: TorchServe refused the gateway's token: {message}")
        if result.status == 400:
            raise InvalidArgument(message)
        if result.status == 413:
            raise PayloadTooLarge(f"{where}: {message}")
        if result.status == 503 and kind == "ServiceUnavailableException":
            raise BackendUnavailable(f"{where}: {message}")
        if result.status >= 500:
            raise BackendError(f"{where} failed: {message}")
        raise error_for_status(result.status, f"{where}: {message}")

    async def close(self) -> None:
        await self.http.close()


def _invalid_key(result: HttpResult) -> bool:
    return result.status in (400, 401) and b"InvalidKeyException" in result.body


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
