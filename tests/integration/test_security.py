"""Security against real processes and real clients: one gateway (2 workers) with authentication on (API keys and
JWTs), tenants, rate limits, and TLS on its REST, gRPC and admin listeners, in front of real TorchServe and TF
Serving and of two backends that require mutual TLS. Clients: tritonclient HTTP and gRPC, TF Serving's official
stubs, curl, httpx. Every credential, certificate and key is made here at test time (tests/securitykit.py).

The last test scans everything this module produced (the gateway's log, /metrics, every error body) for every
secret it used."""

from __future__ import annotations

import json
import re
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as tritongrpc
import tritonclient.http as tritonhttp
import yaml
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.dev import localstack
from gateway.routes import writer

from ..securitykit import CA, Issued, Issuer, serial_of, write_keys
from .stack import Blackhole, build_routes

REPO = Path(__file__).resolve().parents[2]
X3 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
ROWS = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
LIMITED_RPS, LIMITED_BURST = 10, 10


@dataclass
class Secure:
    url: str
    grpc_target: str
    admin_url: str
    ca: CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    routes_file: Path
    log_file: Path
    keys: dict[str, str]  # tenant -> API key
    issuer: Issuer
    admin_token: str
    torchserve_key_file: Path
    process: localstack.ManagedProcess
    fast_ports: dict[str, int]
    client_cert: Path
    client_key: Path
    bodies: list[str] = field(default_factory=list)  # every error body and detail seen (the secret scan reads them)
    tokens: list[str] = field(default_factory=list)  # every JWT sent
    presented: list[str] = field(default_factory=list)  # wrong credentials sent: never echoed either

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def rest(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.tls(), timeout=30, **kwargs)

    def channel(self) -> grpc.Channel:
        return grpc.secure_channel(self.grpc_target, grpc.ssl_channel_credentials(self.ca.pem))

    def token(self, tenant: str, **kwargs: Any) -> str:
        token = self.issuer.token(tenant, **kwargs)
        self.tokens.append(token)
        return token

    def auth(self, credential: str | None) -> dict[str, str]:
        return {} if credential is None else {"authorization": f"Bearer {credential}"}

    def seen(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            self.bodies.append(response.text)
            self.bodies.extend(f"{k}: {v}" for k, v in response.headers.items())
        return response


def _start_fast(name: str, script: str, workdir: Path, args: list[str]) -> tuple[localstack.ManagedProcess, int]:
    port = localstack.free_port()
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    proc = localstack.spawn_process(name, [sys.executable, str(REPO / "load_tests" / script), "--port", str(port),
                                           *args], cwd=workdir, env=env, log_path=workdir / f"{name}.log")
    return proc, port


def _wait_tls_port(proc: localstack.ManagedProcess, port: int, context: ssl.SSLContext, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.running(), proc.log_tail()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return
        except OSError:
            assert time.monotonic() < deadline, proc.log_tail()
            time.sleep(0.05)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, torchserve: localstack.TorchServeEndpoints,
           tfserving: localstack.TFServingEndpoints, blackhole: Blackhole) -> Iterator[Secure]:
    work = tmp_path_factory.mktemp("secure")
    ca = CA()
    ca_file = ca.write(work / "ca.pem")
    cert_file, key_file = work / "tls.crt", work / "tls.key"
    ca.issue().write(cert_file, key_file)
    admin_cert, admin_key = work / "admin.crt", work / "admin.key"
    ca.issue().write(admin_cert, admin_key)
    backend_cert, backend_key = work / "backend.crt", work / "backend.key"
    ca.issue().write(backend_cert, backend_key)
    client_cert, client_key = work / "gateway-client.crt", work / "gateway-client.key"
    ca.issue("model-gateway", client=True).write(client_cert, client_key)

    # Two backends that demand the gateway's client certificate (mutual TLS): REST and gRPC.
    procs = []
    tls_args = ["--tls-cert", str(backend_cert), "--tls-key", str(backend_key), "--client-ca", str(ca_file)]
    rest_proc, rest_port = _start_fast("fast-mtls", "fast_backend.py", work, tls_args)
    grpc_proc, grpc_port = _start_fast("fast-grpc-mtls", "fast_grpc_backend.py", work, tls_args)
    procs += [rest_proc, grpc_proc]
    mutual = ssl.create_default_context(cafile=str(ca_file))
    mutual.load_cert_chain(client_cert, client_key)
    _wait_tls_port(rest_proc, rest_port, mutual)
    mutual.set_alpn_protocols(["h2"])
    _wait_tls_port(grpc_proc, grpc_port, mutual)

    routes = build_routes(torchserve, tfserving, blackhole.port)
    tls = {"ca_file": str(ca_file), "cert_file": str(client_cert), "key_file": str(client_key)}
    routes["backends"]["fast_mtls"] = {"kind": "tfserving", "url": f"https://127.0.0.1:{rest_port}", "tls": tls,
                                       "timeout_s": 10}
    routes["backends"]["fast_grpc_mtls"] = {"kind": "tfserving", "url": f"https://127.0.0.1:{rest_port}",
                                            "transport": "grpc", "grpc_target": f"127.0.0.1:{grpc_port}",
                                            "tls": tls, "timeout_s": 10}
    for name, backend in (("fast_mtls", "fast_mtls"), ("fast_grpc_mtls", "fast_grpc_mtls")):
        routes["models"][name] = {"versions": {1: {"backend": backend, "model": "fast", "version": 1}}}
    routes_file = work / "routes.yaml"
    routes_file.write_text(yaml.safe_dump(routes))

    issuer = Issuer()
    jwks_file = work / "jwks.json"
    jwks_file.write_text(json.dumps(issuer.jwks()))
    policy = {"jwt": issuer.policy_jwt(jwks_file), "tenants": {
        "team-a": {"models": {m: {} for m in ("scale", "affine", "scale_grpc", "affine_grpc", "mlp_ab", "fast_mtls",
                                               "fast_grpc_mtls")}},
        "team-b": {"models": {"scale": {"versions": [1]}}, "jwt_claims": ["team-b"]},
        "limited": {"models": {"scale": {}, "scale_grpc": {}},
                    "rate": {"rps": LIMITED_RPS, "burst": LIMITED_BURST}},
        "qa": {"models": "*", "overrides": True},
        "prometheus": {"models": {}, "metrics": True}}}
    policy_file = work / "auth.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    keys = {tenant: f"mgw_{tenant}_{secrets.token_urlsafe(24)}" for tenant in policy["tenants"]}
    keys_file = work / "keys.yaml"
    write_keys(keys_file, {key: tenant for tenant, key in keys.items()}, salt=secrets.token_bytes(16))

    admin_token = secrets.token_urlsafe(24)
    grpc_port_gw, admin_port = localstack.free_port(), localstack.free_port()
    env = {"GATEWAY_WORKERS": "2", "GATEWAY_GRPC_PORT": str(grpc_port_gw), "GATEWAY_ADMIN_PORT": str(admin_port),
           "GATEWAY_ADMIN_TOKEN": admin_token, "GATEWAY_AUTH_FILE": str(policy_file),
           "GATEWAY_AUTH_KEYS_FILE": str(keys_file), "GATEWAY_AUTH_OPEN": "health",
           "GATEWAY_TLS_CERT_FILE": str(cert_file), "GATEWAY_TLS_KEY_FILE": str(key_file),
           "GATEWAY_ADMIN_TLS_CERT_FILE": str(admin_cert), "GATEWAY_ADMIN_TLS_KEY_FILE": str(admin_key),
           "GATEWAY_TLS_RELOAD_S": "0.2", "GATEWAY_AUTH_RELOAD_S": "0.2", "GATEWAY_ROUTES_POLL_S": "0.2",
           "GATEWAY_LOG_LEVEL": "debug", "GATEWAY_ACCESS_LOG_SAMPLE": "1"}
    try:
        proc, url = localstack.start_gateway(work / "gateway", routes_file, env=env, ca_file=ca_file)
    except BaseException:
        for p in procs:
            p.stop()
        raise
    yield Secure(url=url, grpc_target=f"127.0.0.1:{grpc_port_gw}", admin_url=f"https://127.0.0.1:{admin_port}",
                 ca=ca, ca_file=ca_file, cert_file=cert_file, key_file=key_file, routes_file=routes_file,
                 log_file=work / "gateway" / "gateway.log", keys=keys, issuer=issuer, admin_token=admin_token,
                 torchserve_key_file=torchserve.key_file, process=proc,
                 fast_ports={"rest": rest_port, "grpc": grpc_port}, client_cert=client_cert, client_key=client_key)
    proc.stop()
    for p in procs:
        p.stop()


# --- clients -------------------------------------------------------------------------------------------------------

def triton_http(s: Secure) -> tritonhttp.InferenceServerClient:
    return tritonhttp.InferenceServerClient(url=s.url.removeprefix("https://"), ssl=True,
                                            ssl_options={"ca_certs": str(s.ca_file)}, network_timeout=30.0)


def triton_infer(client: Any, module: Any, model: str, headers: dict[str, str], version: str = "") -> Any:
    x = module.InferInput("x", [1, 3], "FP32")
    x.set_data_from_numpy(ROWS)
    return client.infer(model, [x], model_version=version, headers=dict(headers))  # tritonclient adds to it


def tf_predict(s: Secure, model: str, metadata: dict[str, str], channel: grpc.Channel | None = None,
               version: int | None = None) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(ROWS))
    own = channel is None
    channel = channel or s.channel()
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response: predict_pb2.PredictResponse = stub.Predict(request, metadata=tuple(metadata.items()), timeout=30)
        return response
    finally:
        if own:
            channel.close()


def grpc_refusal(s: Secure, call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    s.bodies.append(error.details() or "")
    trailers = {k: v for k, v in (error.trailing_metadata() or ())}
    s.bodies.extend(f"{k}: {v}" for k, v in trailers.items())
    return error.code(), error.details() or "", trailers


def curl(s: Secure, path: str, *args: str, base: str | None = None) -> tuple[int, str]:
    """curl over TLS, verifying the gateway's certificate with the test CA."""
    done = subprocess.run(["curl", "-sS", "--cacert", str(s.ca_file), "-o", "-", "-w", "\n%{http_code}", *args,
                           f"{base or s.url}{path}"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    body, _, code = done.stdout.rpartition("\n")
    if int(code) >= 400:
        s.bodies.append(body)
    return int(code), body


# --- authentication on every front ---------------------------------------------------------------------------------

def test_every_front_refuses_missing_forged_and_expired_credentials(secure: Secure) -> None:
    s = secure
    forged_issuer = Issuer()
    bad = {"missing": None, "forged key": f"mgw_team-a_{secrets.token_urlsafe(24)}",
           "near-miss key": s.keys["team-a"][:-1] + ("x" if s.keys["team-a"][-1] != "x" else "y"),
           "forged JWT": forged_issuer.token("team-a"), "expired JWT": s.token("team-a", ttl_s=-120)}
    s.tokens.append(bad["forged JWT"] or "")
    s.presented += [v for v in bad.values() if v]
    triton_h = triton_http(s)
    triton_g = tritongrpc.InferenceServerClient(url=s.grpc_target, ssl=True, root_certificates=str(s.ca_file))
    try:
        with s.rest() as rest:
            for what, credential in bad.items():
                headers = s.auth(credential)
                # v2 REST (tritonclient)
                with pytest.raises(InferenceServerException) as info:
                    triton_infer(triton_h, tritonhttp, "scale", headers)
                assert info.value.status() == "401", (what, info.value)
                s.bodies.append(str(info.value))
                # TF Serving REST
                r = s.seen(rest.post("/v1/models/affine:predict", json={"instances": [[1, 2, 3]]}, headers=headers))
                assert r.status_code == 401 and r.headers["www-authenticate"].startswith('Bearer realm="model-gateway"')
                assert ("error=\"invalid_token\"" in r.headers["www-authenticate"]) == (credential is not None)
                # TorchServe REST (curl)
                code, body = curl(s, "/predictions/scale/1", "-H", "content-type: application/json",
                                  "--data", json.dumps(X3), *(("-H", f"authorization: Bearer {credential}")
                                                              if credential else ()))
                assert code == 401 and json.loads(body)["type"] == "InvalidKeyException", (what, body)
                # v2 gRPC (tritonclient)
                with pytest.raises(InferenceServerException) as info:
                    triton_infer(triton_g, tritongrpc, "scale", headers)
                assert info.value.status() == "StatusCode.UNAUTHENTICATED", (what, info.value)
                s.bodies.append(str(info.value))
                # TF Serving gRPC (the official stub)
                code_g, details, _ = grpc_refusal(s, lambda h=headers: tf_predict(s, "affine", h))
                assert code_g == grpc.StatusCode.UNAUTHENTICATED, (what, details)
                expected = {"missing": "missing credentials", "forged key": "unknown API key",
                            "near-miss key": "unknown API key", "forged JWT": "Signature verification failed",
                            "expired JWT": "has expired"}[what]
                assert expected in details and expected in r.json()["error"], (what, details)

            # The right key, as either header, and a valid JWT (RS256 and ES256) on every front.
            for headers in ({"authorization": f"Bearer {s.keys['team-a']}"}, {"x-api-key": s.keys["team-a"]},
                            s.auth(s.token("team-a")), s.auth(s.token("team-a", alg="ES256"))):
                answer = triton_infer(triton_h, tritonhttp, "scale", headers, "2")
                np.testing.assert_allclose(answer.as_numpy("y"), 3 * ROWS)
                r = rest.post("/v1/models/affine/versions/1:predict", json={"instances": [[1, 2, 3]]},
                              headers=headers)
                assert r.status_code == 200 and r.json()["predictions"] == [[2.5, 3.0, 3.5]], r.text
                code, body = curl(s, "/predictions/scale/1", "-H", "content-type: application/json", "--data",
                                  json.dumps(X3), *(arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")))
                assert code == 200 and json.loads(body)["outputs"][0]["data"] == [2, 4, 6], body
                answer = triton_infer(triton_g, tritongrpc, "scale_grpc", headers, "1")
                np.testing.assert_allclose(answer.as_numpy("y"), 2 * ROWS)
                response = tf_predict(s, "affine_grpc", headers, version=2)
                np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), 0.5 * ROWS + 3)

            # Health stays open (GATEWAY_AUTH_OPEN=health), the rest does not; /metrics needs a metrics reader.
            assert rest.get("/v2/health/ready").status_code == 200 and rest.get("/ping").status_code == 200
            assert triton_g.is_server_live() and triton_g.is_server_ready()
            assert s.seen(rest.get("/v2")).status_code == 401
            assert s.seen(rest.get("/v2/models/scale/ready")).status_code == 401
            assert s.seen(rest.get("/metrics")).status_code == 401
            assert s.seen(rest.get("/metrics", headers=s.auth(s.keys["team-a"]))).status_code == 403
            assert rest.get("/metrics", headers=s.auth(s.keys["prometheus"])).status_code == 200
            with pytest.raises(InferenceServerException) as info:
                triton_g.get_model_metadata("scale")
            assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    finally:
        triton_h.close()
        triton_g.close()


# --- authorization -------------------------------------------------------------------------------------------------

def test_tenants_see_only_their_models(secure: Secure) -> None:
    s = secure
    b_key, b_token = s.auth(s.keys["team-b"]), s.auth(s.token("team-b"))
    with s.rest() as rest:
        for headers in (b_key, b_token):
            ok = rest.post("/v2/models/scale/versions/1/infer", json=X3, headers=headers)
            assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [2, 4, 6], ok.text
            # A model it may not call and one that does not exist: the same answer (existence does not leak).
            other = s.seen(rest.post("/v2/models/affine/infer", json=X3, headers=headers))
            ghost = s.seen(rest.post("/v2/models/no-such-model/infer", json=X3, headers=headers))
            assert other.status_code == ghost.status_code == 403
            assert other.json()["error"].replace("affine", "M") == ghost.json()["error"].replace("no-such-model", "M")
            # A version outside its grant (2 exists, 9 does not), and the default (2): 403 alike.
            for path in ("/v2/models/scale/versions/2/infer", "/v2/models/scale/versions/9/infer",
                         "/v2/models/scale/infer"):
                refused = s.seen(rest.post(path, json=X3, headers=headers))
                assert refused.status_code == 403 and "of model 'scale' is not available" in refused.text, path
        # TF's model status lists only the versions the tenant may see.
        status = rest.get("/v1/models/scale", headers=b_key).json()
        assert [v["version"] for v in status["model_version_status"]] == ["1"], status
        # QA overrides: refused for a tenant without them, honoured for one with them.
        forced = s.seen(rest.post("/v2/models/mlp_ab/infer", json={"inputs": [{"name": "x", "shape": [1, 4],
                                  "datatype": "FP32", "data": [1, 2, 3, 4]}]},
                                  headers={**s.auth(s.keys["team-a"]), "x-model-variant": "torch"}))
        assert forced.status_code == 403 and "may not send x-model-version" in forced.text
        qa = rest.post("/v2/models/mlp_ab/infer", json={"inputs": [{"name": "x", "shape": [1, 4],
                       "datatype": "FP32", "data": [1, 2, 3, 4]}]},
                       headers={**s.auth(s.keys["qa"]), "x-model-variant": "torch"})
        assert qa.status_code == 200 and qa.headers["x-model-variant"] == "torch"
    # gRPC: the same refusal, PERMISSION_DENIED.
    code_a, details_a, _ = grpc_refusal(s, lambda: tf_predict(s, "affine", b_key))
    code_g, details_g, _ = grpc_refusal(s, lambda: tf_predict(s, "no-such-model", b_key))
    assert code_a == code_g == grpc.StatusCode.PERMISSION_DENIED
    assert details_a.replace("affine", "M") == details_g.replace("no-such-model", "M")
    stranger = s.auth(s.token("nobody-we-know"))
    code_s, details_s, _ = grpc_refusal(s, lambda: tf_predict(s, "scale", stranger))
    assert code_s == grpc.StatusCode.PERMISSION_DENIED and "tenant has no access" in details_s


# --- rate limits ---------------------------------------------------------------------------------------------------

def test_a_tenant_over_its_rate_gets_429_while_another_is_untouched(secure: Secure) -> None:
    s = secure
    duration_s = 3.0
    results: dict[str, list[tuple[int, dict[str, str]]]] = {"limited": [], "team-a": []}
    lock = threading.Lock()

    def hammer(tenant: str) -> None:
        # A new connection per request (Connection: close): the two workers both take requests, one bucket.
        with s.rest(headers={**s.auth(s.keys[tenant]), "connection": "close"}) as rest:
            end = time.monotonic() + duration_s
            while time.monotonic() < end:
                r = rest.post("/v2/models/scale/versions/2/infer", json=X3)
                with lock:
                    results[tenant].append((r.status_code, dict(r.headers)))
                    if r.status_code >= 400:
                        s.bodies.append(r.text)

    started = time.monotonic()
    threads = [threading.Thread(target=hammer, args=(t,)) for t in ("limited", "limited", "limited", "team-a")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.monotonic() - started
    limited, other = results["limited"], results["team-a"]
    admitted = sum(1 for code, _ in limited if code == 200)
    refused = [h for code, h in limited if code == 429]
    print(f"\nrate limit {LIMITED_RPS}/s burst {LIMITED_BURST}, 2 workers, {elapsed:.1f} s: tenant 'limited' sent "
          f"{len(limited)} ({len(limited) / elapsed:.0f}/s), {admitted} admitted ({admitted / elapsed:.1f}/s), "
          f"{len(refused)} refused with 429; tenant 'team-a' at the same time: {len(other)} sent "
          f"({len(other) / elapsed:.0f}/s), {sum(1 for c, _ in other if c == 200)} ok, "
          f"{sum(1 for c, _ in other if c == 429)} refused")
    assert all(code == 200 for code, _ in other) and len(other) > 0
    assert {code for code, _ in limited} <= {200, 429} and refused
    # One bucket for both workers: never more than the burst plus what the rate refilled meanwhile.
    assert LIMITED_BURST <= admitted <= LIMITED_BURST + LIMITED_RPS * elapsed + 2, admitted
    headers = refused[-1]
    assert int(headers["retry-after"]) >= 1 and headers["ratelimit-limit"] == str(LIMITED_BURST)
    assert headers["ratelimit-remaining"] == "0" and int(headers["ratelimit-reset"]) >= 1
    # gRPC: RESOURCE_EXHAUSTED with the retry pushback (the bucket is still empty).
    code, details, trailers = grpc_refusal(s, lambda: [tf_predict(s, "scale_grpc", s.auth(s.keys["limited"]),
                                                                  version=1) for _ in range(LIMITED_BURST + 5)])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limited" in details
    assert int(trailers["grpc-retry-pushback-ms"]) > 0
    # Exported per tenant (every worker's counts together).
    with s.rest() as rest:
        text = rest.get("/metrics", headers=s.auth(s.keys["prometheus"])).text
    limited_total = _sample(text, "gateway_rate_limited_total", tenant="limited", model="scale", limit="tenant")
    assert limited_total == len(refused), (limited_total, len(refused))
    assert _sample(text, "gateway_tenant_requests_total", tenant="team-a") >= len(other)
    assert _sample(text, "gateway_rate_limit_rps", tenant="limited", model="*") == LIMITED_RPS


def _sample(text: str, name: str, **labels: str) -> float:
    """One sample of the exposition, its labels in any order."""
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        metric, _, rest = series.partition("{")
        if metric == name and dict(re.findall(r'(\w+)="([^"]*)"', rest)) == labels:
            return float(value)
    raise AssertionError(f"{name}{labels} not in /metrics")


# --- backends over mutual TLS --------------------------------------------------------------------------------------

def test_backends_reached_over_mutual_tls(secure: Secure) -> None:
    s = secure
    headers = s.auth(s.keys["team-a"])
    with s.rest() as rest:
        r = rest.post("/v1/models/fast_mtls:predict", json={"instances": [[1, 2, 3]]}, headers=headers)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 8, r.text
    response = tf_predict(s, "fast_grpc_mtls", headers)
    assert tf.make_ndarray(response.outputs["y"]).shape == (8, 3)
    # The backends do demand the client certificate: without it, no connection.
    no_cert = ssl.create_default_context(cafile=str(s.ca_file))
    with httpx.Client(verify=no_cert, timeout=10) as direct, pytest.raises(httpx.HTTPError):
        direct.get(f"https://127.0.0.1:{s.fast_ports['rest']}/v1/models/fast")
    with grpc.secure_channel(f"127.0.0.1:{s.fast_ports['grpc']}", grpc.ssl_channel_credentials(s.ca.pem)) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_pb2.PredictRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


# --- the admin API over TLS, and the lost edit ---------------------------------------------------------------------

def test_admin_api_over_tls_and_the_lost_edit_answers_409(secure: Secure) -> None:
    s = secure
    code, body = curl(s, "/healthz", base=s.admin_url)
    assert code == 200 and json.loads(body) == {"status": "ok"}
    plain = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            s.admin_url.replace("https://", "http://") + "/healthz"], capture_output=True, text=True,
                           timeout=30)
    assert plain.stdout in ("000", "400"), plain  # TLS only: a plaintext request gets no answer
    with httpx.Client(base_url=s.admin_url, verify=s.tls(), timeout=30,
                      headers={"authorization": f"Bearer {s.admin_token}"}) as admin:
        read = admin.get("/routes").json()
        by_hand = read["text"] + "# edited by hand on the host, revision kept\n"
        s.routes_file.write_text(by_hand)
        stale = s.seen(admin.put("/routes", content=read["text"] + "# the stale write\n",
                                 headers={"if-match": f'"{read["etag"]}"'}))
        assert stale.status_code == 409 and "changed since they were read" in stale.json()["error"], stale.text
        assert s.routes_file.read_text() == by_hand
        fresh = admin.get("/routes").json()
        assert fresh["etag"] == writer.etag(by_hand, read["revision"]) != read["etag"]


# --- certificate rotation under traffic ----------------------------------------------------------------------------

def _handshake_serial(port: int, ca_file: Path, alpn: str) -> int:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return serial_of(tls.getpeercert(binary_form=True) or b"")


def test_certificates_rotated_mid_traffic_fail_no_request(secure: Secure) -> None:
    s = secure
    rest_port = int(s.url.rsplit(":", 1)[1])
    grpc_port = int(s.grpc_target.rsplit(":", 1)[1])
    old = _handshake_serial(rest_port, s.ca_file, "http/1.1")
    counts = {"rest": 0, "grpc": 0}
    failures: list[str] = []
    stop = threading.Event()
    headers = s.auth(s.keys["team-a"])

    def rest_loop() -> None:
        with s.rest(headers={**headers, "connection": "close"}) as rest:  # a TLS handshake per request
            while not stop.is_set():
                try:
                    r = rest.post("/v2/models/scale/versions/1/infer", json=X3)
                    if r.status_code != 200:
                        failures.append(f"REST {r.status_code} {r.text[:200]}")
                    counts["rest"] += 1
                except httpx.HTTPError as exc:
                    failures.append(f"REST {exc!r}")

    def grpc_loop() -> None:
        while not stop.is_set():  # a new channel (connection, handshake) per call
            try:
                tf_predict(s, "affine", headers)
                counts["grpc"] += 1
            except grpc.RpcError as exc:
                failures.append(f"gRPC {exc!r}")

    threads = [threading.Thread(target=rest_loop), threading.Thread(target=grpc_loop)]
    for t in threads:
        t.start()
    try:
        _until(lambda: counts["rest"] >= 10 and counts["grpc"] >= 5)
        before = dict(counts)
        new: Issued = s.ca.issue()
        rotated_at = time.monotonic()
        # As a careless tool rotates: the certificate, then (a moment later) the key.
        s.cert_file.write_bytes(new.cert_pem)
        time.sleep(0.5)
        s.key_file.write_bytes(new.key_pem)
        # Every worker takes it at its next handshake after the check interval (0.2 s): 10 in a row on each port.
        for port, alpn in ((rest_port, "http/1.1"), (grpc_port, "h2")):
            _until(lambda p=port, a=alpn: all(_handshake_serial(p, s.ca_file, a) == new.serial for _ in range(10)))
        taken_s = time.monotonic() - rotated_at
        after = dict(counts)
        _until(lambda: counts["rest"] >= after["rest"] + 10 and counts["grpc"] >= after["grpc"] + 5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    print(f"\ncertificate {old:x} -> {new.serial:x}: new one on every handshake {taken_s:.2f} s after the rotation "
          f"began (0.5 s of it with a certificate that did not match its key); requests during the test: REST "
          f"{counts['rest']} (handshake each), gRPC {counts['grpc']} (new channel each), "
          f"{counts['rest'] - before['rest']} / {counts['grpc'] - before['grpc']} from the rotation on; "
          f"{len(failures)} failed")
    assert failures == [], failures[:5]
    assert old != new.serial


def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# --- no secret anywhere --------------------------------------------------------------------------------------------

def test_no_secret_in_logs_metrics_or_error_bodies(secure: Secure) -> None:
    """A realistic session's worth of right and wrong credentials (the tests above, plus these), then every
    secret it used is looked for in the gateway's log, its /metrics and every error body and detail."""
    s = secure
    with s.rest() as rest:
        wrong = [s.keys["team-b"] + "0", s.keys["qa"], s.token("team-a", ttl_s=-5), s.admin_token,
                 "Basic " + s.keys["team-a"]]
        s.presented += wrong
        for credential in wrong:
            s.seen(rest.post("/v2/models/scale/infer", json=X3, headers={"authorization": f"Bearer {credential}"}))
            s.seen(rest.post("/v2/models/scale/infer", json=X3, headers={"x-api-key": credential}))
        metrics = rest.get("/metrics", headers=s.auth(s.keys["prometheus"])).text
    with httpx.Client(base_url=s.admin_url, verify=s.tls(), timeout=30) as admin:
        s.seen(admin.get("/routes", headers={"authorization": f"Bearer {s.keys['qa']}"}))
        s.seen(admin.get("/routes", headers={"authorization": f"Bearer {s.admin_token}x"}))
    ts_keys = json.loads(s.torchserve_key_file.read_text())
    secrets_used = {f"API key of {t}": k for t, k in s.keys.items()}
    secrets_used.update({f"JWT #{i}": t for i, t in enumerate(s.tokens)})
    secrets_used.update({f"JWT #{i} signature": t.rsplit(".", 1)[1] for i, t in enumerate(s.tokens)})
    secrets_used["admin token"] = s.admin_token
    secrets_used.update({f"wrong credential #{i}": v for i, v in enumerate(s.presented)})
    secrets_used.update({f"TorchServe {kind} key": ts_keys[kind]["key"] for kind in ("management", "inference")
                         if isinstance(ts_keys.get(kind), dict) and ts_keys[kind].get("key")})
    for path in (s.key_file, s.client_key):
        secrets_used[f"private key {path.name}"] = "".join(path.read_text().splitlines()[1:-1])[:64]
    log = s.log_file.read_text(errors="replace")
    places = {"gateway log": log, "/metrics": metrics, "error bodies": "\n".join(s.bodies)}
    assert "client authentication on: 5 tenant(s)" in log and '"status":"401"' in log and '"tenant":"team-a"' in log
    assert len(s.bodies) > 50 and "gateway_auth_refusals_total" in metrics
    found = [(what, where) for what, value in secrets_used.items() for where, text in places.items()
             if value and value in text]
    print(f"\nscanned {len(log):,} bytes of gateway log (debug, access log on), {len(metrics):,} of /metrics and "
          f"{len(s.bodies)} error bodies/details/headers for {len(secrets_used)} secrets: {len(found)} found")
    assert found == [], found
