"""TorchServe's token authorization, for every client of it (inference over REST or gRPC, management): the keys
of its key_file.json, and the one rule for a refused key: re-read the file (TorchServe rewrites it when a key is
rotated), else rotate the expired key with the API key, then try once more."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from gateway.backends.grpc_channel import CredentialsRefused
from gateway.backends.http import HttpClient, HttpResult
from gateway.errors import BackendUnavailable
from gateway.routes.schema import BackendConfig

R = TypeVar("R")


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

    async def call(self, kind: str, call: Callable[[str | None], Awaitable[R]],
                   refused: Callable[[R], bool] = lambda _: False) -> R:
        """``call`` with the current ``kind`` key (None with token auth off); when TorchServe refuses that key (an
        answer ``refused`` says so, or gRPC's CredentialsRefused), get a valid one and call once more."""
        used = self.tokens.key(kind)
        try:
            result = await call(used)
        except CredentialsRefused:
            if not await self.refresh(kind, used):
                raise
        else:
            if not refused(result) or not await self.refresh(kind, used):
                return result
        return await call(self.tokens.key(kind))


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def refused_key(result: HttpResult) -> bool:
    """TorchServe's answer to a wrong, expired or wrong-kind key (400 InvalidKeyException)."""
    return result.status in (400, 401) and b"InvalidKeyException" in result.body
