"""TF Serving REST adapter: predict, status and metadata through TF Serving's own /v1 API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.backends.base import DescribesTFSignatures, PassesTFRest
from gateway.backends.endpoints import Endpoint, EndpointPool
from gateway.backends.http import HttpClient, HttpResult
from gateway.codecs import tf_json
from gateway.codecs.jsonio import loads
from gateway.errors import BackendError, BackendUnavailable, GatewayError, NotFound, error_for_status
from gateway.routes.schema import BackendConfig
from gateway.types import InferRequest, InferResponse, ModelSchema, ModelStatus, Target

_JSON = {"Content-Type": "application/json"}
M = TypeVar("M")


class Signatures:
    """Parsed signatures per (model, version, signature name), shared by the REST and gRPC adapters: a loaded
    TF Serving version never changes, and the data plane reads its inputs on every request."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[str, str, str], ModelSchema] = {}

    async def schema(self, target: Target, signature: str | None, load: Callable[[], Awaitable[M]],
                     parse: Callable[[M, str], ModelSchema]) -> ModelSchema:
        name = signature or tf_json.DEFAULT_SIGNATURE
        key = (target.model, target.version, name)
        found = self._parsed.get(key)
        if found is None:
            found = self._parsed[key] = parse(await load(), name)
        return found


class TFServingBackend(PassesTFRest, DescribesTFSignatures):
    def __init__(self, config: BackendConfig, http_client: str = "aiohttp") -> None:
        self.config = config
        self.endpoints = EndpointPool(config, config.inference_urls, probe=self._probe)
        self.http = HttpClient(config, self.endpoints, client=http_client)
        # SignatureDefs per (model, version): a loaded TF Serving version never changes its graph.
        self.signatures = Signatures()
        self._metadata: dict[tuple[str, str], dict[str, Any]] = {}

    @staticmethod
    def _path(target: Target, suffix: str = "") -> str:
        return f"/v1/models/{target.model}/versions/{target.version}{suffix}"

    async def _probe(self, ep: Endpoint, limit: float) -> bool:
        """Serving when a model the routes send here has an AVAILABLE version there (asked in turn until one has);
        with no model routed here yet, when it answers at all."""
        for model in self.endpoints.models or ("",):
            result = await self.http.send("GET", f"{ep.address}/v1/models/{model}", body=None, headers=None,
                                          limit=limit, host=ep.host)
            if not model or (result.status == 200 and b'"AVAILABLE"' in result.body):
                return True
        return False

    async def infer(self, target: Target, request: InferRequest) -> InferResponse:
        signature = request.signature_name or tf_json.DEFAULT_SIGNATURE
        schema = await self.schema(target, signature)
        result = await self.http.call("POST", self._path(target, ":predict"),
                                         body=tf_json.encode_backend_request(request), headers=_JSON)
        self._raise_for_status(result, target)
        try:
            outputs = tf_json.decode_backend_response(result.body, schema.outputs)
        except GatewayError as exc:
            raise BackendError(f"TF Serving's answer could not be read: {exc.message}") from None
        return InferResponse(outputs=outputs)

    async def forward_tf_rest(self, target: Target, verb: str, body: bytes) -> bytes:
        result = await self.http.call("POST", self._path(target, f":{verb}"), body=body, headers=_JSON)
        self._raise_for_status(result, target)
        return result.body

    async def status(self, target: Target) -> ModelStatus:
        try:
            result = await self.http.call("GET", self._path(target))
        except GatewayError as exc:
            return ModelStatus(version=target.version, state="UNKNOWN", error_message=exc.message)
        if result.status != 200:
            return ModelStatus(version=target.version, state="END", error_message=_error_text(result))
        try:
            entry = loads(result.body)["model_version_status"][0]
            state = str(entry["state"])
        except (GatewayError, LookupError, TypeError):
            return ModelStatus(version=target.version, state="UNKNOWN",
                               error_message=f"TF Serving's status answer is unreadable: {result.body[:200]!r}")
        status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
        return ModelStatus(version=str(entry.get("version", target.version)), state=state,
                           error_message=str(status.get("error_message", "")))

    async def metadata(self, target: Target) -> dict[str, Any]:
        """TF Serving's metadata JSON for the target version (cached: a loaded version never changes)."""
        key = (target.model, target.version)
        cached = self._metadata.get(key)
        if cached is None:
            result = await self.http.call("GET", self._path(target, "/metadata"))
            self._raise_for_status(result, target)
            try:
                doc = loads(result.body)
            except GatewayError:
                raise BackendError(f"TF Serving's metadata answer is not JSON: {result.body[:200]!r}") from None
            if not isinstance(doc, dict):
                raise BackendError("TF Serving's metadata answer is not a JSON object")
            cached = self._metadata[key] = doc
        return cached

    async def schema(self, target: Target, signature: str | None = None) -> ModelSchema:
        return await self.signatures.schema(target, signature, lambda: self.metadata(target),
                                            tf_json.signature_specs)

    def _raise_for_status(self, result: HttpResult, target: Target) -> None:
        if result.status == 200:
            return
        message = _error_text(result)
        error = error_for_status(result.status, message)
        if isinstance(error, NotFound):
            # The route table points at a version TF Serving has not loaded: the gateway's problem, retryable.
            raise BackendUnavailable(f"backend '{self.config.name}' has no model '{target.model}' version "
                                     f"{target.version} available: {message}").from_backend("status", "404")
        raise error

    async def close(self) -> None:
        await self.endpoints.close()
        await self.http.close()


def _error_text(result: HttpResult) -> str:
    try:
        doc = loads(result.body)
    except GatewayError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return f"HTTP {result.status}: {result.body[:200].decode(errors='replace')}"
