"""JWT bearer tokens, verified with PyJWT (and cryptography) against a JWKS: the signature with a key the JWKS
publishes, for an algorithm the policy pins; ``exp`` required; ``nbf``, ``iat``, ``aud`` and ``iss`` checked (the
last two when configured), with a small clock-skew leeway. The claim ``tenant_claim`` names the tenant.

PyJWT rather than joserfc or authlib: it does exactly this (JWS + claims checks + JWK sets) and nothing else, it is
typed, small and the most used of the three; its ``algorithms`` argument is mandatory, which is the pinning.
Its own JWKS client is not used: it fetches with blocking urllib, and the event loop must never block, so the gate
fetches the URL with aiohttp (a timeout on every fetch) and hands the document to :meth:`JwtVerifier.use`.

A verified token is remembered until it expires (token -> tenant claim, exp, nbf; at most CACHE_SIZE tokens, the
oldest forgotten first, all of them when the keys change), so a token costs one signature check per process, then a
dict lookup per request. A token whose key id the JWKS does not hold is refused and asks for an early re-fetch (at
most every MIN_REFETCH_S): a key the issuer just added is found on the next try.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jwt

from gateway.auth.tenants import JwtConfig

CACHE_SIZE = 10_000
MIN_REFETCH_S = 30.0


class TokenRefused(Exception):
    """Why a token is not accepted: ``reason`` is a metric label (invalid, expired), the message is for the client
    (it never repeats the token)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class JwtVerifier:
    def __init__(self, config: JwtConfig) -> None:
        self.config = config
        self._keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}  # kid -> key, the algorithm it declares
        self._only: tuple[jwt.PyJWK, str | None] | None = None  # for tokens without a kid, when there is one key
        self._cache: dict[str, tuple[str, float, float]] = {}
        self.refetch_wanted = False  # a token named a key id the set does not hold
        self.loaded = False
        require = ["exp"] + (["aud"] if config.audience else []) + (["iss"] if config.issuer else [])
        self._options: Any = {"require": require, "verify_signature": True}

    def use(self, document: Mapping[str, Any]) -> int:
        """Take a JWKS document (``{"keys": [...]}``); the number of usable signing keys. Raises ValueError when
        it holds none (the previous set stays)."""
        raw_keys = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(raw_keys, list):
            raise ValueError("not a JWKS document (no \"keys\" list)")
        keys: list[tuple[jwt.PyJWK, str | None]] = []
        for raw in raw_keys:
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue  # encryption keys and junk are not for verifying signatures
            try:
                keys.append((jwt.PyJWK(raw), raw.get("alg") if isinstance(raw.get("alg"), str) else None))
            except (jwt.PyJWKError, jwt.InvalidKeyError, TypeError, ValueError, KeyError):
                continue  # a key type this gateway cannot use
        if not keys:
            raise ValueError("no usable signing key in the JWKS")
        self._keys = {k.key_id: (k, alg) for k, alg in keys if k.key_id}
        self._only = keys[0] if len(keys) == 1 else None
        self._cache.clear()  # a key removed from the set revokes the tokens it signed
        self.loaded = True
        return len(keys)

    def verify(self, token: str) -> str:
        """The tenant claim of a valid token; TokenRefused otherwise."""
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            claim, exp, nbf = cached
            leeway = self.config.leeway_s
            if now > exp + leeway:
                del self._cache[token]
                raise TokenRefused("expired", "invalid token: the token has expired")
            if now < nbf - leeway:
                raise TokenRefused("invalid", "invalid token: the token is not valid yet (nbf)")
            return claim
        claims = self._decode(token)
        named = claims.get(self.config.tenant_claim)
        if not isinstance(named, str) or not named:
            raise TokenRefused("invalid", f"invalid token: no {self.config.tenant_claim!r} claim naming the tenant")
        if len(self._cache) >= CACHE_SIZE:
            for stale in list(self._cache)[:CACHE_SIZE // 10]:
                del self._cache[stale]
        not_before = claims.get("nbf")
        self._cache[token] = (named, float(claims["exp"]),
                              float(not_before) if isinstance(not_before, int | float) else 0.0)
        return named

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenRefused("invalid", "invalid token: not a JWT") from None
        alg = header.get("alg")
        if alg not in self.config.algorithms:
            raise TokenRefused("invalid", f"invalid token: algorithm {str(alg)[:16]!r} is not accepted "
                                          f"(accepted: {', '.join(self.config.algorithms)})")
        kid = header.get("kid")
        found = self._keys.get(kid) if isinstance(kid, str) else self._only
        if found is None:
            self.refetch_wanted = True
            raise TokenRefused("invalid", "invalid token: signed with a key this gateway does not know")
        key, declared = found
        if declared is not None and declared != alg:
            raise TokenRefused("invalid", "invalid token: its algorithm is not the one its key declares")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], audience=self.config.audience, issuer=self.config.issuer,
                leeway=self.config.leeway_s, options=self._options)
        except jwt.ExpiredSignatureError:
            raise TokenRefused("expired", "invalid token: the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("invalid", "invalid token: the token is not valid yet (nbf)") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRefused("invalid", f"invalid token: {exc}") from None
        return claims


def looks_like_jwt(credential: bytes) -> bool:
    """Three base64url parts: a JWT (an API key never has two dots)."""
    return credential.count(b".") == 2
