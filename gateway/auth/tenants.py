"""Tenants: the auth policy file (GATEWAY_AUTH_FILE, e.g. a ConfigMap), parsed and validated; every error names the
file, the field path and what is wrong.

    jwt:                                   # optional: JWT bearer tokens, verified against a JWKS
      jwks_file: /etc/gateway/jwks.json    # or jwks_url: https://idp.example/.well-known/jwks.json
      algorithms: [RS256]                  # pinned; asymmetric only
      issuer: https://idp.example/         # checked when set (iss)
      audience: model-gateway              # checked when set (aud)
      tenant_claim: tenant                 # the claim that names the tenant (default: tenant)
      leeway_s: 30                         # clock skew allowed on exp/nbf/iat (default 30)
      refresh_s: 300                       # jwks_url: re-fetched this often (default 300) ...
      timeout_s: 5                         # ... each fetch within this (default 5)
    tenants:
      team-a:
        models:                            # or "*": every model, any version
          scale: {}                        # any version
          mlp: {versions: [1, 2], variants: [tf], rate: {rps: 5, burst: 10}}   # this tenant on this model
          "*": {rate: {rps: 2, burst: 2}}  # any other model
        overrides: false                   # may send x-model-version / x-model-variant (default false)
        rate: {rps: 50, burst: 100}        # this tenant, all models together
        metrics: false                     # may read /metrics when it is not open (default false)
        jwt_claims: [team-a]               # tenant-claim values that mean this tenant (default: its name)
    model_limits:
      scale: {rps: 200, burst: 400}        # the model, every tenant together
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.routes.schema import FieldParser, read_yaml

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
ANY_MODEL = "*"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Rate:
    rps: float  # tokens added per second
    burst: int  # the bucket's size: requests that may come at once


@dataclass(frozen=True, slots=True)
class Grant:
    """What a tenant may call of one model: which versions and variants (None: any), at what rate."""

    versions: frozenset[str] | None = None
    variants: frozenset[str] | None = None
    rate: Rate | None = None

    def allows(self, version: str, variant: str) -> bool:
        return (self.versions is None or version in self.versions) and (
            self.variants is None or not variant or variant in self.variants)


EVERYTHING: Mapping[str, Grant] = {ANY_MODEL: Grant()}


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    grants: Mapping[str, Grant] = field(default_factory=lambda: EVERYTHING)
    overrides: bool = False
    metrics: bool = False
    rate: Rate | None = None
    jwt_claims: frozenset[str] = frozenset()

    def grant(self, model: str) -> Grant | None:
        found = self.grants.get(model)
        return found if found is not None else self.grants.get(ANY_MODEL)


@dataclass(frozen=True, slots=True)
class JwtConfig:
    algorithms: tuple[str, ...]
    jwks_file: Path | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None
    tenant_claim: str = "tenant"
    leeway_s: float = 30.0
    refresh_s: float = 300.0
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Policy:
    tenants: Mapping[str, Tenant]
    model_limits: Mapping[str, Rate] = field(default_factory=dict)
    jwt: JwtConfig | None = None
    source: str = "<memory>"
    by_claim: Mapping[str, Tenant] = field(default_factory=dict)  # JWT tenant-claim value -> tenant

    @property
    def limited(self) -> bool:
        """Any rate limit at all (else nothing is counted)."""
        return bool(self.model_limits) or any(
            t.rate is not None or any(g.rate is not None for g in t.grants.values()) for t in self.tenants.values())


def load_policy(path: Path) -> Policy:
    return parse_policy(read_yaml(path, "the auth policy"), str(path))


def parse_policy(raw: Any, source: str) -> Policy:
    p = _Parser(source)
    top = p.mapping(raw, "", allowed={"tenants", "jwt", "model_limits"}, required={"tenants"})
    tenants = {p.name(name, f"tenants.{name}"): p.tenant(name, spec)
               for name, spec in p.mapping(top["tenants"], "tenants").items()}
    if not tenants:
        p.fail("tenants", "must define at least one tenant")
    by_claim: dict[str, Tenant] = {}
    for tenant in tenants.values():
        for claim in tenant.jwt_claims:
            if claim in by_claim:
                p.fail(f"tenants.{tenant.name}.jwt_claims", f"{claim!r} also means tenant {by_claim[claim].name!r}")
            by_claim[claim] = tenant
    limits = {p.name(model, f"model_limits.{model}"): p.rate(spec, f"model_limits.{model}")
              for model, spec in p.mapping(top.get("model_limits") or {}, "model_limits").items()}
    jwt = None if top.get("jwt") is None else p.jwt(top["jwt"])
    return Policy(tenants=tenants, model_limits=limits, jwt=jwt, source=source, by_claim=by_claim)


class _Parser(FieldParser):
    def __init__(self, source: str) -> None:
        super().__init__(source, os.environ)

    def name(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not _NAME.match(value):
            self.fail(path, f"{value!r} is not a valid name (letters, digits, '_', '.', '-'; at most 64)")
        return str(value)

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, got {value!r}")
        return bool(value)

    def quantity(self, value: Any, path: str, *, minimum: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > minimum:
            self.fail(path, f"must be a number > {minimum:g}, got {value!r}")
        return float(value)

    def strings(self, value: Any, path: str) -> frozenset[str]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str | int) and not isinstance(v, bool)
                                                               for v in value):
            self.fail(path, "must be a non-empty list")
        return frozenset(str(v) for v in value)

    def rate(self, value: Any, path: str) -> Rate:
        m = self.mapping(value, path, allowed={"rps", "burst"}, required={"rps"})
        rps = self.quantity(m["rps"], f"{path}.rps")
        burst = m.get("burst", max(1, round(rps)))
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            self.fail(f"{path}.burst", f"must be an integer >= 1, got {burst!r}")
        return Rate(rps=rps, burst=int(burst))

    def tenant(self, name: str, spec: Any) -> Tenant:
        path = f"tenants.{name}"
        m = self.mapping(spec if spec is not None else {}, path,
                         allowed={"models", "overrides", "metrics", "rate", "jwt_claims"}, required={"models"})
        models = m["models"]
        grants = EVERYTHING
        if models != ANY_MODEL:
            grants = {(model if model == ANY_MODEL else self.name(model, f"{path}.models.{model}")):
                      self.grant(g, f"{path}.models.{model}")
                      for model, g in self.mapping(models, f"{path}.models").items()}
        claims = self.strings(m["jwt_claims"], f"{path}.jwt_claims") if "jwt_claims" in m else frozenset({name})
        return Tenant(name=name, grants=grants, overrides=self.boolean(m.get("overrides", False), f"{path}.overrides"),
                      metrics=self.boolean(m.get("metrics", False), f"{path}.metrics"),
                      rate=None if m.get("rate") is None else self.rate(m["rate"], f"{path}.rate"),
                      jwt_claims=claims)

    def grant(self, spec: Any, path: str) -> Grant:
        m = self.mapping(spec if spec is not None else {}, path, allowed={"versions", "variants", "rate"})
        versions = None
        if "versions" in m:
            versions = self.strings(m["versions"], f"{path}.versions")
            bad = sorted(v for v in versions if not (v.isascii() and v.isdigit() and int(v) > 0))
            if bad:
                self.fail(f"{path}.versions", f"{bad[0]!r} is not a positive integer version")
            versions = frozenset(str(int(v)) for v in versions)
        return Grant(versions=versions,
                     variants=self.strings(m["variants"], f"{path}.variants") if "variants" in m else None,
                     rate=None if m.get("rate") is None else self.rate(m["rate"], f"{path}.rate"))

    def jwt(self, spec: Any) -> JwtConfig:
        path = "jwt"
        m = self.mapping(spec, path, allowed={"jwks_file", "jwks_url", "algorithms", "issuer", "audience",
                                              "tenant_claim", "leeway_s", "refresh_s", "timeout_s"},
                         required={"algorithms"})
        if ("jwks_file" in m) == ("jwks_url" in m):
            self.fail(path, "needs exactly one of jwks_file or jwks_url")
        algorithms = sorted(self.strings(m["algorithms"], f"{path}.algorithms"))
        for alg in algorithms:
            if alg not in ALGORITHMS:
                self.fail(f"{path}.algorithms", f"{alg!r} is not one of {', '.join(ALGORITHMS)} (asymmetric only: "
                                                "a JWKS publishes public keys)")
        url = m.get("jwks_url")
        if url is not None and (not isinstance(url, str) or urlsplit(url).scheme not in ("https", "http")
                                or not urlsplit(url).hostname):
            self.fail(f"{path}.jwks_url", f"{url!r} must be an http(s) URL")
        return JwtConfig(
            algorithms=tuple(algorithms),
            jwks_file=Path(str(m["jwks_file"])) if "jwks_file" in m else None, jwks_url=url,
            issuer=self.text(m.get("issuer"), f"{path}.issuer"), audience=self.text(m.get("audience"),
                                                                                   f"{path}.audience"),
            tenant_claim=self.text(m.get("tenant_claim"), f"{path}.tenant_claim") or "tenant",
            leeway_s=self.quantity(m.get("leeway_s", 30.0), f"{path}.leeway_s", minimum=-1e-9),
            refresh_s=self.quantity(m.get("refresh_s", 300.0), f"{path}.refresh_s"),
            timeout_s=self.quantity(m.get("timeout_s", 5.0), f"{path}.timeout_s"))

    def text(self, value: Any, path: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(path, "must be a non-empty string")
        return str(value)

