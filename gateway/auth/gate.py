"""The auth gate: what the fronts and the data plane call when GATEWAY_AUTH_FILE turns client authentication on.

    fronts      authenticate(authorization, x-api-key) -> Tenant   (REST: before the front's handler;
                                                                   gRPC: in the one unary wrapper) -> 401
    data plane  permit(tenant, ref, hints) -> Grant                 before the route is resolved -> 403
                admit(tenant, grant, route, inference)             the resolved version and variant -> 403;
                                                                   inference: the rate limits -> 429

A model the tenant may not call answers exactly as one that does not exist (403, the same message), so a tenant
learns nothing about models it has no grant for; a tenant granted ``*`` may know every model and gets 404s.
The policy, the keys file and a JWKS file are re-read when they change (checked every GATEWAY_AUTH_RELOAD_S); an
invalid new one is logged and the last good one keeps serving, as with the routes. A JWKS URL is fetched every
``refresh_s`` (and early when a token names an unknown key), each fetch within ``timeout_s``.

Nothing here logs or labels a credential: metrics carry tenant names from the policy, model names from the routes
and fixed reasons; refusals name what the caller sent at most (a model name), never a key or a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from gateway.auth.jwt import MIN_REFETCH_S, JwtVerifier, TokenRefused, looks_like_jwt
from gateway.auth.keys import EMPTY, KeyRing, load_keys
from gateway.auth.ratelimit import Buckets
from gateway.auth.tenants import Grant, Policy, Rate, Tenant, load_policy
from gateway.errors import ConfigError, PermissionDenied, RateLimited, Unauthenticated
from gateway.metrics import Metrics
from gateway.routes.table import OVERRIDE_VARIANT, OVERRIDE_VERSION, Hints, Route
from gateway.settings import Settings
from gateway.types import ModelRef

log = logging.getLogger("gateway.auth")

REALM = 'Bearer realm="model-gateway"'
MISSING = ("missing credentials: send Authorization: Bearer <API key or JWT>, or x-api-key: <API key>")


@dataclass(frozen=True, slots=True)
class Permit:
    """A request let through :meth:`AuthGate.permit`: its route is checked with :meth:`admit` once resolved."""

    gate: AuthGate
    tenant: Tenant
    grant: Grant

    def admit(self, route: Route, inference: bool) -> None:
        self.gate.admit(self.tenant, self.grant, route, inference)


class AuthGate:
    def __init__(self, settings: Settings, metrics: Metrics, buckets: Buckets | None = None) -> None:
        assert settings.auth_file is not None
        self.settings = settings
        self.metrics = metrics
        self.open_health = "health" in settings.auth_open
        self.open_metrics = "metrics" in settings.auth_open
        self.policy, self.keys = self._read()  # at start: an invalid file stops the process
        self._known: dict[bytes | None, str] = {}  # header value -> tenant, for API keys already checked
        self._limits: dict[tuple[str, str], tuple[list[tuple[str, Rate]], list[str]]] = {}  # (tenant, model)
        self.jwt = self._verifier(self.policy)
        self.buckets = buckets if buckets is not None else Buckets(settings.ratelimit_file)
        self._seen = self._stats()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._fetched_at = 0.0
        self._export_limits()

    # --- authentication (the fronts) ----------------------------------------------------------------------------

    def authenticate(self, authorization: bytes | None, api_key: bytes | None) -> Tenant:
        """The caller's tenant from ``Authorization: Bearer <API key or JWT>`` or ``x-api-key: <API key>``."""
        known = self._known.get(authorization if authorization is not None else api_key)
        if known is not None:  # an API key checked before, sent the same way: the hot path
            return self.policy.tenants[known]
        if authorization is not None:
            scheme, _, credential = authorization.strip().partition(b" ")
            credential = credential.strip()
            if scheme.lower() != b"bearer" or not credential:
                raise self._refuse("invalid", "unsupported Authorization header: send Authorization: Bearer <API "
                                              "key or JWT>")
            if self.jwt is not None and looks_like_jwt(credential):
                return self._token(credential)
        elif api_key is not None and api_key.strip():
            credential = api_key.strip()
        else:
            raise self._refuse("missing", MISSING)
        entry = self.keys.lookup(credential)
        if entry is None:
            raise self._refuse("invalid", "invalid credentials: unknown API key")
        header = authorization if authorization is not None else api_key
        if header == (b"Bearer " + credential if authorization is not None else credential):
            self._known[header] = entry.tenant  # canonical forms only: at most two per valid key
        return self.policy.tenants[entry.tenant]

    def authenticate_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Tenant:
        """The same from gRPC request metadata (the same names, lower case)."""
        authorization = api_key = None
        for key, value in metadata or ():
            if key == "authorization":
                authorization = value.encode("latin-1") if isinstance(value, str) else value
            elif key == "x-api-key":
                api_key = value.encode("latin-1") if isinstance(value, str) else value
        return self.authenticate(authorization, api_key)

    def _token(self, credential: bytes) -> Tenant:
        assert self.jwt is not None
        try:
            claim = self.jwt.verify(credential.decode("ascii"))
        except UnicodeDecodeError:
            raise self._refuse("invalid", "invalid token: not a JWT") from None
        except TokenRefused as exc:
            raise self._refuse(exc.reason, exc.message) from None
        tenant = self.policy.by_claim.get(claim)
        if tenant is None:
            self.metrics.auth_refusal(tenant="", reason="unknown_tenant")
            raise PermissionDenied("permission denied: this token's tenant has no access to this gateway")
        return tenant

    def _refuse(self, reason: str, message: str) -> Unauthenticated:
        self.metrics.auth_refusal(tenant="", reason=reason)
        if reason == "missing":
            return Unauthenticated(message, REALM)
        description = message.replace("\\", "").replace('"', "'")
        return Unauthenticated(message, f'{REALM}, error="invalid_token", error_description="{description}"')

    def may_read_metrics(self, tenant: Tenant) -> None:
        if not tenant.metrics:
            self.metrics.auth_refusal(tenant=tenant.name, reason="forbidden")
            raise PermissionDenied("permission denied: this caller may not read the metrics")

    # --- authorization and rate limits (the data plane) ---------------------------------------------------------

    def permit(self, tenant: Tenant | None, ref: ModelRef, hints: Hints) -> Permit:
        """Before the route is resolved: the model (a model the tenant may not call and one that does not exist
        get the same 403), an explicit version, the override headers."""
        if tenant is None:  # a front that did not authenticate: refuse rather than serve
            raise Unauthenticated(MISSING, REALM)
        grant = tenant.grant(ref.name)
        if grant is None:
            raise self._deny(tenant, f"permission denied: model '{ref.name[:128]}' is not available to this caller")
        if ref.version is not None and grant.versions is not None and ref.version not in grant.versions:
            raise self._deny(tenant, f"permission denied: version {ref.version[:32]} of model '{ref.name}' is not "
                                     "available to this caller")
        if not tenant.overrides and (hints.header(OVERRIDE_VERSION) is not None or
                                     hints.header(OVERRIDE_VARIANT) is not None):
            raise self._deny(tenant, f"permission denied: this caller may not send {OVERRIDE_VERSION} or "
                                     f"{OVERRIDE_VARIANT}")
        return Permit(self, tenant, grant)

    def admit(self, tenant: Tenant, grant: Grant, route: Route, inference: bool) -> None:
        """After the route is resolved: its version and variant must be granted (a label or the default may
        resolve to one that is not); an inference then takes a token from each of its buckets, or is refused."""
        target = route.target
        if not grant.allows(target.logical_version, route.variant):
            raise self._deny(tenant, f"permission denied: version {target.logical_version} of model "
                                     f"'{route.model.name}' is not available to this caller (name a version "
                                     "that is)")
        if not inference:
            return
        model = route.model.name
        limits = self._limits.get((tenant.name, model))
        if limits is None:
            limits = self._limits[(tenant.name, model)] = self._buckets_of(tenant, grant, model)
        wanted, scopes = limits
        refusal = self.buckets.take(wanted) if wanted else None
        if refusal is None:
            self.metrics.tenant_request(tenant.name)
            return
        scope, rate = scopes[refusal.index], wanted[refusal.index][1]
        self.metrics.rate_limited(tenant=tenant.name, model=model, limit=scope)
        whose = {"tenant": "this caller's rate limit", "tenant_model": f"this caller's rate limit for model '{model}'",
                 "model": f"model '{model}''s rate limit (every caller together)"}[scope]
        raise RateLimited(f"rate limited: over {whose} of {rate.rps:g} requests/s (burst {rate.burst}); retry after "
                          f"{refusal.retry_after_s:.2g} s", retry_after_s=refusal.retry_after_s, limit=refusal.limit,
                          remaining=0, reset_s=refusal.reset_s)

    def _buckets_of(self, tenant: Tenant, grant: Grant, model: str) -> tuple[list[tuple[str, Rate]], list[str]]:
        """The buckets an inference of ``tenant`` on ``model`` takes from (once per pair and policy)."""
        wanted: list[tuple[str, Rate]] = []
        scopes: list[str] = []
        for scope, key, rate in (("tenant", f"t\0{tenant.name}", tenant.rate),
                                 ("tenant_model", f"tm\0{tenant.name}\0{model}", grant.rate),
                                 ("model", f"m\0{model}", self.policy.model_limits.get(model))):
            if rate is not None:
                wanted.append((key, rate))
                scopes.append(scope)
        return wanted, scopes

    def _deny(self, tenant: Tenant, message: str) -> PermissionDenied:
        self.metrics.auth_refusal(tenant=tenant.name, reason="forbidden")
        return PermissionDenied(message)

    # --- the files, the JWKS URL --------------------------------------------------------------------------------

    def _read(self) -> tuple[Policy, KeyRing]:
        settings = self.settings
        assert settings.auth_file is not None
        policy = load_policy(settings.auth_file)
        keys = EMPTY if settings.auth_keys_file is None else load_keys(settings.auth_keys_file, policy.tenants)
        if policy.jwt is None and not keys.entries:
            log.warning("auth: %s defines no JWT issuer and %s holds no key: every request is refused",
                        settings.auth_file, settings.auth_keys_file or "no keys file (GATEWAY_AUTH_KEYS_FILE)")
        return policy, keys

    def _verifier(self, policy: Policy) -> JwtVerifier | None:
        if policy.jwt is None:
            return None
        verifier = JwtVerifier(policy.jwt)
        path = policy.jwt.jwks_file
        if path is not None:
            try:
                verifier.use(_jwks_file(path))
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        return verifier

    def _stats(self) -> tuple[tuple[int, int, int], ...]:
        paths = [self.settings.auth_file, self.settings.auth_keys_file,
                 self.policy.jwt.jwks_file if self.policy.jwt is not None else None]
        return tuple(_stat(p) for p in paths)

    def _export_limits(self) -> None:
        for tenant in self.policy.tenants.values():
            if tenant.rate is not None:
                self.metrics.rate_limit(tenant=tenant.name, model="*", rps=tenant.rate.rps, burst=tenant.rate.burst)
            for model, grant in tenant.grants.items():
                if grant.rate is not None:
                    self.metrics.rate_limit(tenant=tenant.name, model=model, rps=grant.rate.rps,
                                            burst=grant.rate.burst)
        for model, rate in self.policy.model_limits.items():
            self.metrics.rate_limit(tenant="*", model=model, rps=rate.rps, burst=rate.burst)

    async def start(self) -> None:
        policy, jwt = self.policy, self.policy.jwt
        log.info("client authentication on: %d tenant(s) from %s, %d API key(s) from %s%s; open without "
                 "credentials: %s; rate limits %s", len(policy.tenants), policy.source, len(self.keys.entries),
                 self.settings.auth_keys_file or "no keys file",
                 "" if jwt is None else
                 f", JWTs ({', '.join(jwt.algorithms)}) from {jwt.jwks_file or _shown(jwt.jwks_url)}",
                 ", ".join(sorted(self.settings.auth_open)) or "nothing",
                 "shared by the workers" if self.settings.ratelimit_file else "in this process")
        if jwt is not None and jwt.jwks_url is not None:
            await self._fetch()  # a failure is logged: tokens are refused (401) until a fetch succeeds
        self._task = asyncio.create_task(self._watch(), name="auth-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.buckets.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.auth_reload_s)
            if self._stats() != self._seen:
                await self.reload()
            jwt = self.policy.jwt
            if jwt is not None and jwt.jwks_url is not None and self.jwt is not None:
                since = time.monotonic() - self._fetched_at
                if since >= jwt.refresh_s or (self.jwt.refetch_wanted and since >= MIN_REFETCH_S):
                    await self._fetch()

    async def reload(self) -> bool:
        """Re-read the policy, the keys and a JWKS file; swap them in when all are valid."""
        self._seen = self._stats()
        try:
            policy, keys = await asyncio.to_thread(self._read)
            verifier = self.jwt
            if policy.jwt != self.policy.jwt or (policy.jwt is not None and policy.jwt.jwks_file is not None):
                verifier = await asyncio.to_thread(self._verifier, policy)
        except ConfigError as exc:
            log.error("auth policy refused, the previous one keeps serving: %s", exc)
            return False
        url_changed = policy.jwt is not None and policy.jwt.jwks_url is not None and (
            self.policy.jwt is None or self.policy.jwt.jwks_url != policy.jwt.jwks_url)
        self.policy, self.keys, self.jwt = policy, keys, verifier
        self._known, self._limits = {}, {}
        self._seen = self._stats()
        self._export_limits()
        log.info("auth policy applied from %s: %d tenant(s), %d API key(s)%s", policy.source, len(policy.tenants),
                 len(keys.entries), ", JWTs" if policy.jwt is not None else "")
        if url_changed:
            await self._fetch()
        return True

    async def _fetch(self) -> None:
        jwt, verifier = self.policy.jwt, self.jwt
        assert jwt is not None and jwt.jwks_url is not None and verifier is not None
        self._fetched_at = time.monotonic()
        verifier.refetch_wanted = False
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(jwt.jwks_url, timeout=aiohttp.ClientTimeout(total=jwt.timeout_s)) as resp:
                if resp.status != 200:
                    raise ValueError(f"answered HTTP {resp.status}")
                document = orjson.loads(await resp.read())
            count = verifier.use(document)
        except (aiohttp.ClientError, TimeoutError, ValueError, orjson.JSONDecodeError) as exc:
            log.error("auth: JWKS from %s not refreshed (%s); %s", _shown(jwt.jwks_url), exc or type(exc).__name__,
                      "the previous keys stay" if verifier.loaded else "tokens are refused until it is fetched")
            return
        log.info("auth: %d signing key(s) from %s", count, _shown(jwt.jwks_url))


def _jwks_file(path: Path) -> dict[str, Any]:
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the JWKS file: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not a JWKS (JSON): {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: not a JWKS (a JSON object with keys)")
    return document


def _shown(url: str | None) -> str:
    """A URL for the log: without user info or query (either may carry a credential)."""
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _stat(path: Path | None) -> tuple[int, int, int]:
    # mtime, inode and size: a Kubernetes Secret update swaps a symlink (new inode), an editor may keep the mtime.
    if path is None:
        return (0, 0, 0)
    try:
        st = path.stat()
    except OSError:
        return (-1, -1, -1)
    return (st.st_mtime_ns, st.st_ino, st.st_size)
