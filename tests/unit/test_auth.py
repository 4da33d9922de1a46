"""gateway.auth: API keys, JWTs, tenants' grants and the rate limits, through the gate the fronts and the data plane
call (no network: the JWKS is a file); the shared bucket table across processes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import multiprocessing
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from gateway.auth.gate import AuthGate
from gateway.auth.keys import KeyRing, add_key, key_digest, load_keys
from gateway.auth.ratelimit import Buckets, create_table, live_hosts
from gateway.auth.tenants import Rate, load_policy, parse_policy
from gateway.errors import ConfigError, PermissionDenied, RateLimited, Unauthenticated
from gateway.metrics import Metrics
from gateway.routes.schema import parse_routes
from gateway.routes.table import Hints, RouteTable
from gateway.settings import Settings
from gateway.types import ModelRef

from ..securitykit import Issuer, write_keys

KEY_A, KEY_B, KEY_OPS = "mgw_team-a-key-0123456789", "mgw_team-b-key-0123456789", "mgw_ops-key-0123456789"
ROUTES = parse_routes({"backends": {"ts": {"kind": "torchserve", "url": "http://127.0.0.1:9"}}, "models": {
    "scale": {"versions": {1: {"backend": "ts", "model": "scale", "version": "1"},
                           2: {"backend": "ts", "model": "scale", "version": "2"}}, "default_version": 2,
              "labels": {"stable": 1}},
    "mlp": {"versions": {1: {"backend": "ts", "model": "mlp", "version": "1"}}},
    "secret": {"versions": {1: {"backend": "ts", "model": "secret", "version": "1"}}}}}, "test", {})
TABLE = RouteTable.from_config(ROUTES)


def policy_doc(jwks_file: Path | None = None, issuer: Issuer | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"tenants": {
        "team-a": {"models": {"scale": {"versions": [1], "rate": {"rps": 0.001, "burst": 3}}, "mlp": None},
                   "rate": {"rps": 0.001, "burst": 5}},
        "team-b": {"models": {"scale": {}}, "jwt_claims": ["b", "team-b"]},
        "ops": {"models": "*", "overrides": True, "metrics": True}},
        "model_limits": {"mlp": {"rps": 0.001, "burst": 4}}}
    if jwks_file is not None and issuer is not None:
        doc["jwt"] = issuer.policy_jwt(jwks_file)
    return doc


@pytest.fixture()
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture()
def files(tmp_path: Path, issuer: Issuer) -> dict[str, Path]:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(policy_doc(jwks, issuer)))
    keys = tmp_path / "keys.yaml"
    write_keys(keys, {KEY_A: "team-a", KEY_B: "team-b", KEY_OPS: "ops"})
    return {"policy": policy, "keys": keys, "jwks": jwks}


@pytest.fixture()
def gate(files: dict[str, Path]) -> AuthGate:
    return AuthGate(Settings(auth_file=files["policy"], auth_keys_file=files["keys"], auth_reload_s=0.05),
                    Metrics())


def bearer(credential: str) -> bytes:
    return f"Bearer {credential}".encode()


def metric(gate: AuthGate, name: str, **labels: str) -> float:
    value = gate.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- API keys ------------------------------------------------------------------------------------------------------

def test_keys_are_stored_as_salted_hmacs_and_looked_up_by_digest(files: dict[str, Path]) -> None:
    text = files["keys"].read_text()
    assert KEY_A not in text and key_digest(b"\x5a" * 16, KEY_A.encode()).hex() in text
    ring = load_keys(files["keys"], {"team-a": 1, "team-b": 1, "ops": 1})
    assert ring.lookup(KEY_A.encode()).tenant == "team-a"  # type: ignore[union-attr]
    assert ring.lookup(KEY_A.encode()).tenant == "team-a"  # type: ignore[union-attr]  # remembered now
    assert ring.lookup(KEY_A.encode()[:-1]) is None and ring.lookup(b"") is None
    assert ring.lookup(KEY_A.encode() + b"x") is None
    assert len(ring._verified) == 1  # unknown keys are never remembered


@pytest.mark.parametrize(("raw", "message"), [
    ({"salt": "00" * 16, "keys": [{"tenant": "nobody", "hash": "00" * 32}]}, "keys[0].tenant: unknown tenant"),
    ({"salt": "zz", "keys": []}, "salt: must be at least 32 hex digits"),
    ({"salt": "00" * 16, "keys": [{"tenant": "team-a", "hash": "abc"}]}, "keys[0].hash: must be 64 hex"),
    ({"salt": "00" * 16, "keys": [{"tenant": "team-a", "hash": "00" * 32, "key": "plain"}]}, "keys[0]: must be"),
    ({"salt": "00" * 16, "keys": {}}, "keys: must be a list"),
])
def test_bad_keys_files_are_refused_with_the_field(tmp_path: Path, raw: Any, message: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_keys(path, {"team-a": 1})


def test_add_key_writes_only_the_hash_and_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    first, second = add_key(path, "team-a"), add_key(path, "team-a", "ci")
    assert first.startswith("mgw_") and first != second and first not in path.read_text()
    assert path.stat().st_mode & 0o077 == 0
    ring = load_keys(path, {"team-a": 1})
    assert [e.id for e in ring.entries] == ["team-a-1", "ci"]
    assert ring.lookup(first.encode()) is not None and ring.lookup(second.encode()) is not None


# --- the policy ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "message"), [
    ({}, "tenants: is required"),
    ({"tenants": {}}, "tenants: must define at least one tenant"),
    ({"tenants": {"a": {}}}, "tenants.a.models: is required"),
    ({"tenants": {"a b": {"models": "*"}}}, "tenants.a b: 'a b' is not a valid name"),
    ({"tenants": {"a": {"models": {"m": {"versions": ["x"]}}}}}, "tenants.a.models.m.versions: 'x' is not"),
    ({"tenants": {"a": {"models": "*", "rate": {"rps": 0}}}}, "tenants.a.rate.rps: must be a number > 0"),
    ({"tenants": {"a": {"models": "*", "rate": {"rps": 1, "burst": 0}}}}, "tenants.a.rate.burst"),
    ({"tenants": {"a": {"models": "*", "colour": 1}}}, "tenants.a.colour: unknown field"),
    ({"tenants": {"a": {"models": "*"}, "b": {"models": "*", "jwt_claims": ["a"]}}}, "'a' also means tenant"),
    ({"tenants": {"a": {"models": "*"}}, "jwt": {"algorithms": ["HS256"], "jwks_file": "x"}}, "asymmetric only"),
    ({"tenants": {"a": {"models": "*"}}, "jwt": {"algorithms": ["RS256"]}}, "exactly one of jwks_file"),
    ({"tenants": {"a": {"models": "*"}}, "model_limits": {"m": {"burst": 2}}}, "model_limits.m.rps: is required"),
])
def test_bad_policies_are_refused_with_the_field_path(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_policy(raw, "policy.yaml")


def test_grants(files: dict[str, Path]) -> None:
    policy = load_policy(files["policy"])
    a, b, ops = policy.tenants["team-a"], policy.tenants["team-b"], policy.tenants["ops"]
    assert a.grant("secret") is None and a.grant("scale").versions == frozenset({"1"})  # type: ignore[union-attr]
    assert a.grant("mlp").versions is None and not a.overrides  # type: ignore[union-attr]
    assert ops.grant("anything") is not None and ops.overrides and ops.metrics
    assert policy.by_claim["b"] is b and policy.by_claim["team-a"] is a and policy.limited
    assert a.rate == Rate(0.001, 5) and policy.model_limits["mlp"] == Rate(0.001, 4)


# --- the gate: authentication -----------------------------------------------------------------------------------------

def test_api_keys_by_either_header(gate: AuthGate) -> None:
    assert gate.authenticate(bearer(KEY_A), None).name == "team-a"
    assert gate.authenticate(b"bearer  " + KEY_B.encode(), None).name == "team-b"
    assert gate.authenticate(None, KEY_OPS.encode()).name == "ops"
    assert gate.authenticate_metadata([("x-api-key", KEY_A), ("user-agent", "t")]).name == "team-a"
    assert gate.authenticate_metadata((("authorization", f"Bearer {KEY_B}"),)).name == "team-b"


@pytest.mark.parametrize(("authorization", "api_key", "reason", "message"), [
    (None, None, "missing", "missing credentials"),
    (None, b"  ", "missing", "missing credentials"),
    (b"Bearer ", None, "invalid", "unsupported Authorization header"),
    (f"Basic {KEY_A}".encode(), None, "invalid", "unsupported Authorization header"),
    (bearer("mgw_forged-key"), None, "invalid", "unknown API key"),
    (None, b"mgw_forged-key", "invalid", "unknown API key"),
    (bearer("a.b.c"), None, "invalid", "invalid token: not a JWT"),
])
def test_missing_and_forged_credentials(gate: AuthGate, authorization: bytes | None, api_key: bytes | None,
                                        reason: str, message: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        gate.authenticate(authorization, api_key)
    assert message in info.value.message and info.value.http_status == 401
    challenge = dict(info.value.headers)["www-authenticate"]
    assert challenge.startswith('Bearer realm="model-gateway"')
    assert ('error="invalid_token"' in challenge) == (reason != "missing")
    assert metric(gate, "gateway_auth_refusals_total", tenant="", reason=reason) == 1
    for secret in (KEY_A, "mgw_forged-key"):
        assert secret not in info.value.message and secret not in challenge


def test_jwts_signed_by_the_jwks_keys(gate: AuthGate, issuer: Issuer) -> None:
    assert gate.authenticate(bearer(issuer.token("team-a")), None).name == "team-a"
    assert gate.authenticate(bearer(issuer.token("b", alg="ES256")), None).name == "team-b"  # a jwt_claims value
    token = issuer.token("ops")
    assert gate.authenticate(bearer(token), None).name == "ops"
    assert gate.authenticate(bearer(token), None).name == "ops"  # from the cache
    with pytest.raises(PermissionDenied, match="tenant has no access"):
        gate.authenticate(bearer(issuer.token("stranger")), None)


def test_forged_expired_and_misdirected_tokens(gate: AuthGate, issuer: Issuer) -> None:
    other = Issuer()
    now = int(time.time())
    cases = {
        "expired": issuer.token("team-a", ttl_s=-60),
        "not yet": issuer.token("team-a", claims={"nbf": now + 600}),
        "forged signature": issuer.token("team-a", key=other.rsa),
        "unknown kid": issuer.token("team-a", kid="rsa-9"),
        "audience": issuer.token("team-a", claims={"aud": "someone-else"}),
        "issuer": issuer.token("team-a", claims={"iss": "https://evil.test/"}),
        "no exp": jwt.encode({"tenant": "team-a", "aud": issuer.audience, "iss": issuer.issuer}, issuer.rsa,
                             algorithm="RS256", headers={"kid": "rsa-1"}),
        "no tenant": issuer.token("team-a", claims={"tenant": None}),
        "alg none": jwt.encode({"tenant": "team-a", "exp": now + 60}, None, algorithm="none"),
        # The RSA public key used as an HMAC secret: refused because HS256 is not pinned.
        "alg confusion": _hs256_with_the_public_key(issuer, {"tenant": "team-a", "exp": now + 60}),
        "RS384 not pinned": issuer.token("team-a", alg="RS384"),
        "declared alg": issuer.token("team-a", alg="ES256", kid="rsa-1"),
    }
    expected = {"expired": "has expired", "not yet": "not valid yet", "forged signature": "Signature verification",
                "unknown kid": "key this gateway does not know", "audience": "audience", "issuer": "issuer",
                "no exp": '"exp"', "no tenant": "'tenant' claim", "alg none": "'none' is not accepted",
                "alg confusion": "'HS256' is not accepted", "RS384 not pinned": "'RS384' is not accepted",
                "declared alg": "not the one its key declares"}
    for what, token in cases.items():
        with pytest.raises(Unauthenticated) as info:
            gate.authenticate(bearer(token), None)
        assert expected[what].lower() in info.value.message.lower(), (what, info.value.message)
        assert token not in info.value.message and token not in dict(info.value.headers)["www-authenticate"]
    assert metric(gate, "gateway_auth_refusals_total", tenant="", reason="expired") == 1
    assert gate.jwt is not None and gate.jwt.refetch_wanted  # the unknown kid asks for an early JWKS fetch


def _hs256_with_the_public_key(issuer: Issuer, claims: dict[str, Any]) -> str:
    """The classic forgery: the RSA public key (which anyone has) as an HMAC secret, made by hand (PyJWT will not)."""
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing = b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode()) + b"." + b64(json.dumps(claims).encode())
    secret = issuer.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return (signing + b"." + b64(hmac.new(secret, signing, hashlib.sha256).digest())).decode()


def test_a_cached_token_still_expires(gate: AuthGate, issuer: Issuer) -> None:
    token = issuer.token("team-a", ttl_s=1)
    assert gate.authenticate(bearer(token), None).name == "team-a"
    assert gate.jwt is not None and token in gate.jwt._cache
    deadline = time.monotonic() + 15
    while True:  # leeway 5 s: refused from exp + 5 s on, from the cache
        try:
            gate.authenticate(bearer(token), None)
        except Unauthenticated as exc:
            assert "expired" in exc.message
            break
        assert time.monotonic() < deadline, "a cached token outlived its exp + leeway"
        time.sleep(0.2)


# --- the gate: authorization ------------------------------------------------------------------------------------------

def resolve(gate: AuthGate, key: str, ref: ModelRef, headers: dict[str, str] | None = None,
            inference: bool = True) -> str:
    tenant = gate.authenticate(bearer(key), None)
    hints = Hints(header=(headers or {}).get)
    permit = gate.permit(tenant, ref, hints)
    route = TABLE.resolve(ref, hints)
    permit.admit(route, inference)
    return route.target.logical_version


def test_a_model_outside_the_grant_answers_as_one_that_does_not_exist(gate: AuthGate) -> None:
    answers = []
    for name in ("secret", "no-such-model"):
        with pytest.raises(PermissionDenied) as info:
            resolve(gate, KEY_B, ModelRef(name))
        answers.append(info.value.message.replace(name, "<m>"))
    assert answers[0] == answers[1] == "permission denied: model '<m>' is not available to this caller"
    assert resolve(gate, KEY_B, ModelRef("scale")) == "2"
    assert resolve(gate, KEY_OPS, ModelRef("secret")) == "1"  # granted "*"


def test_versions_labels_and_overrides(gate: AuthGate) -> None:
    assert resolve(gate, KEY_A, ModelRef("scale", version="1")) == "1"
    assert resolve(gate, KEY_A, ModelRef("scale", label="stable")) == "1"
    for ref in (ModelRef("scale", version="2"), ModelRef("scale", version="7"), ModelRef("scale")):
        with pytest.raises(PermissionDenied, match="of model 'scale' is not available to this caller"):
            resolve(gate, KEY_A, ref)  # 2 exists, 7 does not, the default is 2: the same answer
    with pytest.raises(PermissionDenied, match="may not send x-model-version or x-model-variant"):
        resolve(gate, KEY_B, ModelRef("scale"), {"x-model-version": "1"})
    assert resolve(gate, KEY_OPS, ModelRef("scale"), {"x-model-version": "1"}) == "1"
    assert metric(gate, "gateway_auth_refusals_total", tenant="team-a", reason="forbidden") == 3


def test_metrics_readers(gate: AuthGate) -> None:
    gate.may_read_metrics(gate.authenticate(bearer(KEY_OPS), None))
    with pytest.raises(PermissionDenied, match="may not read the metrics"):
        gate.may_read_metrics(gate.authenticate(bearer(KEY_A), None))


# --- the gate: rate limits ------------------------------------------------------------------------------------------

def test_rate_limits_per_tenant_model_and_model(gate: AuthGate) -> None:
    # team-a on scale: burst 3 (its own 5 for all models is not reached first)
    admitted = sum(1 for _ in range(6) if _admitted(gate, KEY_A, ModelRef("scale", version="1")))
    assert admitted == 3
    with pytest.raises(RateLimited) as info:
        resolve(gate, KEY_A, ModelRef("scale", version="1"))
    headers = dict(info.value.headers)
    assert int(headers["retry-after"]) >= 1 and headers["ratelimit-limit"] == "3"
    assert headers["ratelimit-remaining"] == "0" and int(headers["ratelimit-reset"]) >= 1
    assert dict(info.value.trailers)["grpc-retry-pushback-ms"].isdigit()
    assert "this caller's rate limit for model 'scale'" in info.value.message
    assert info.value.http_status == 429 and info.value.grpc_code.name == "RESOURCE_EXHAUSTED"
    # Metadata lookups take no token; another tenant is untouched.
    resolve(gate, KEY_A, ModelRef("scale", version="1"), inference=False)
    assert all(_admitted(gate, KEY_B, ModelRef("scale")) for _ in range(20))
    # mlp: team-a's own 5 (2 left) ... then the model's 4 for everyone (ops is refused once 4 went through).
    assert [_admitted(gate, KEY_A, ModelRef("mlp")) for _ in range(3)] == [True, True, False]
    assert [_admitted(gate, KEY_OPS, ModelRef("mlp")) for _ in range(3)] == [True, True, False]
    assert metric(gate, "gateway_rate_limited_total", tenant="team-a", model="scale", limit="tenant_model") == 4
    assert metric(gate, "gateway_rate_limited_total", tenant="team-a", model="mlp", limit="tenant") == 1
    assert metric(gate, "gateway_rate_limited_total", tenant="ops", model="mlp", limit="model") == 1
    assert metric(gate, "gateway_tenant_requests_total", tenant="team-b") == 20
    assert metric(gate, "gateway_rate_limit_rps", tenant="*", model="mlp") == 0.001
    assert metric(gate, "gateway_rate_limit_burst", tenant="team-a", model="scale") == 3


def _admitted(gate: AuthGate, key: str, ref: ModelRef) -> bool:
    try:
        resolve(gate, key, ref)
    except RateLimited:
        return False
    return True


def test_buckets_refill_at_their_rate() -> None:
    buckets = Buckets()
    rate = [("k", Rate(rps=20, burst=2))]
    assert buckets.take(rate) is None and buckets.take(rate) is None
    refusal = buckets.take(rate)
    assert refusal is not None and 0 < refusal.retry_after_s <= 0.05 + 1e-9
    deadline = time.monotonic() + 5
    while buckets.take(rate) is not None:  # a token comes back within ~50 ms
        assert time.monotonic() < deadline
        time.sleep(0.005)
    buckets.set_replicas(2)  # half of every rate and burst: 1 token at once, at 10/s
    time.sleep(0.3)
    assert buckets.take(rate) is None and buckets.take(rate) is not None


def test_replicas_are_counted_by_host() -> None:
    workers = [{"id": f"pod-a-{pid}", "host": "pod-a"} for pid in (1, 2)] + [{"id": "pod-b-1", "host": "pod-b"}]
    assert live_hosts(workers) == 2 and live_hosts([]) == 1


def _take_many(path: str, n: int, out: Any) -> None:
    buckets = Buckets(Path(path))
    out.put(sum(1 for _ in range(n) if buckets.take([("shared", Rate(rps=0.001, burst=30))]) is None))
    buckets.close()


def test_workers_share_one_bucket_through_the_table_file(tmp_path: Path) -> None:
    """Four processes take from the same bucket at once: together they get exactly its burst."""
    table = tmp_path / "buckets"
    create_table(table)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=_take_many, args=(str(table), 50, out)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sum(got) == 30, got


# --- reloads ----------------------------------------------------------------------------------------------------------

async def test_policy_keys_and_jwks_are_reloaded_and_a_bad_one_is_refused(gate: AuthGate, files: dict[str, Path],
                                                                         issuer: Issuer) -> None:
    await gate.start()
    try:
        # A new key for team-b (the file replaced, as a Secret update does).
        write_keys(files["keys"], {KEY_A: "team-a", "mgw_rotated-key-000000": "team-b"})
        await _until(lambda: _tenant(gate, "mgw_rotated-key-000000") == "team-b")
        assert _tenant(gate, KEY_B) is None  # the old key is gone
        # A broken policy: refused, the previous one keeps serving.
        good = files["policy"].read_text()
        files["policy"].write_text("tenants: [not, a, mapping]\n")
        await asyncio.sleep(0.3)
        assert _tenant(gate, KEY_A) == "team-a" and gate.policy.tenants["team-a"].rate == Rate(0.001, 5)
        files["policy"].write_text(good.replace("burst: 5", "burst: 9"))
        await _until(lambda: gate.policy.tenants["team-a"].rate == Rate(0.001, 9))
        # The JWKS loses the RSA key: its tokens are refused from then on (even those verified before).
        token = issuer.token("team-a")
        assert _tenant(gate, token) == "team-a"
        jwks = issuer.jwks()
        files["jwks"].write_text(json.dumps({"keys": [k for k in jwks["keys"] if k["kid"] != "rsa-1"]}))
        await _until(lambda: _tenant(gate, token) is None)
        assert _tenant(gate, issuer.token("team-a", alg="ES256")) == "team-a"
    finally:
        await gate.stop()


def _tenant(gate: AuthGate, credential: str) -> str | None:
    try:
        return gate.authenticate(bearer(credential), None).name
    except (Unauthenticated, PermissionDenied):
        return None


async def _until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def test_keyring_of_an_empty_salt_knows_nothing() -> None:
    assert KeyRing(b"", ()).lookup(b"anything") is None


# --- a JWKS URL -----------------------------------------------------------------------------------------------------

async def test_a_jwks_url_is_fetched_refreshed_and_a_dead_one_times_out(tmp_path: Path, issuer: Issuer) -> None:
    from aiohttp import web

    served: dict[str, Any] = {"jwks": {"keys": [k for k in issuer.jwks()["keys"] if k["kid"] == "rsa-1"]}}
    hits = []

    async def jwks(request: web.Request) -> web.Response:
        hits.append(time.monotonic())
        return web.json_response(served["jwks"])

    async def never(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    app.router.add_get("/hang", never)
    runner = web.AppRunner(app, shutdown_timeout=0.5)  # the hanging handler is not waited for
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    policy = tmp_path / "policy.yaml"
    try:
        for path, expect_rsa in (("/jwks.json", True), ("/hang", False)):
            doc = policy_doc()
            doc["jwt"] = {"jwks_url": f"http://127.0.0.1:{port}{path}", "algorithms": ["RS256", "ES256"],
                          "issuer": issuer.issuer, "audience": issuer.audience, "refresh_s": 0.3, "timeout_s": 0.5}
            policy.write_text(yaml.safe_dump(doc))
            gate = AuthGate(Settings(auth_file=policy, auth_reload_s=0.05), Metrics())
            started = time.monotonic()
            await gate.start()
            try:
                assert time.monotonic() - started < 3  # a dead URL costs at most its timeout
                assert (_tenant(gate, issuer.token("team-a")) == "team-a") == expect_rsa
                if not expect_rsa:
                    continue
                assert _tenant(gate, issuer.token("team-a", alg="ES256")) is None  # not served yet
                served["jwks"] = issuer.jwks()  # the issuer adds its EC key: picked up within refresh_s
                await _until(lambda g=gate: _tenant(g, issuer.token("team-a", alg="ES256")) == "team-a")
                assert len(hits) >= 2
            finally:
                await gate.stop()
    finally:
        await runner.cleanup()


def test_gateway_auth_add_key_cli(tmp_path: Path, files: dict[str, Path]) -> None:
    import subprocess
    import sys

    keys = tmp_path / "new-keys.yaml"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "auth", "add-key", str(keys), *args,
                               "--policy", str(files["policy"])], capture_output=True, text=True, timeout=60)

    made = cli("team-a")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("mgw_") and "shown once" in made.stderr and key not in keys.read_text()
    assert load_keys(keys, load_policy(files["policy"]).tenants).lookup(key.encode()) is not None
    refused = cli("nobody")
    assert refused.returncode == 1 and "no tenant 'nobody'" in refused.stderr
