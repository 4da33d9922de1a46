"""A FAST stand-in backend for overhead benchmarks: raw ASGI, TF Serving's REST shapes, fixed answers.

It does almost nothing per request (drain the body, pick a prebuilt answer), so a benchmark through the
gateway measures the gateway's own cost rather than a model's.  It speaks just enough of TF Serving's
REST API for the gateway's TF adapter:

* ``POST /v1/models/{m}[/versions/{v}]:predict`` -> a fixed ``{"predictions": [[...]]}`` for a row
  request (the body mentions ``"instances"``), else a fixed ``{"outputs": [[...]]}`` (columnar request,
  which is what the gateway sends when it translates); the body is read but never parsed;
* ``GET /v1/models/{m}[/versions/{v}]`` -> one AVAILABLE version;
* ``GET /v1/models/{m}[/versions/{v}]/metadata`` -> a ``serving_default`` signature with one input
  ``x`` (DT_FLOAT, [-1, 3]) and one output ``y`` (DT_FLOAT, [-1, 3]).

Anything else answers 404 ``{"error": ...}``.  The answer does not depend on the input (8 rows of 3 floats).

``--delay-s`` makes every predict answer that much later (a slow model, for the tests of slow calls).

Run: ``python load_tests/fast_backend.py --port 9000`` (uvicorn, httptools, uvloop, 1 worker, no access log);
``--tls-cert/--tls-key`` serve HTTPS, ``--client-ca`` also requires a client certificate it signed (mutual TLS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ROWS = [[round(0.5 * i + j * 0.25, 2) for j in range(3)] for i in range(8)]
PREDICTIONS = json.dumps({"predictions": ROWS}, separators=(",", ":")).encode()
OUTPUTS = json.dumps({"outputs": ROWS}, separators=(",", ":")).encode()
_JSON = [(b"content-type", b"application/json")]


def _tensor_info(name: str) -> dict[str, Any]:
    return {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}], "unknown_rank": False},
        "name": name,
    }


def status_body(version: str) -> bytes:
    return json.dumps({"model_version_status": [{
        "version": version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""},
    }]}).encode()


def metadata_body(model: str, version: str) -> bytes:
    return json.dumps({
        "model_spec": {"name": model, "signature_name": "", "version": version},
        "metadata": {"signature_def": {
            "signature_def": {"serving_default": {
                "inputs": {"x": _tensor_info("serving_default_x:0")},
                "outputs": {"y": _tensor_info("StatefulPartitionedCall:0")},
                "method_name": "tensorflow/serving/predict",
                "defaults": {},
            }},
            "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
        }},
    }).encode()


def _model_and_version(rest: str) -> tuple[str, str]:
    """``m`` or ``m/versions/v`` (after ``/v1/models/``) -> (m, v); v is "1" when absent."""
    parts = rest.split("/")
    if len(parts) >= 3 and parts[1] == "versions":
        return parts[0], parts[2]
    return parts[0], "1"


def make_app(delay_s: float = 0.0) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            await asyncio.sleep(delay_s)
        await app(scope, receive, send)

    return slow_app if delay_s > 0 else app


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # no lifespan handling needed (run with lifespan="off")
    method: str = scope["method"]
    path: str = scope["path"]
    status, body = 404, b'{"error":"not found"}'
    if method == "POST":
        # Drain the request body; the answer is fixed.
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if path.startswith("/v1/models/") and path.endswith(":predict"):
            payload = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            status, body = 200, PREDICTIONS if b'"instances"' in payload else OUTPUTS
    elif method == "GET" and path.startswith("/v1/models/"):
        rest = path[len("/v1/models/"):]
        if rest.endswith("/metadata"):
            model, version = _model_and_version(rest[: -len("/metadata")])
            status, body = 200, metadata_body(model, version)
        elif rest:
            _, version = _model_and_version(rest)
            status, body = 200, status_body(version)
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (and --tls-key)")
    parser.add_argument("--tls-key")
    parser.add_argument("--client-ca", help="require a client certificate signed by this CA (mutual TLS)")
    parser.add_argument("--delay-s", type=float, default=0.0, help="answer every predict this much later")
    args = parser.parse_args(argv)
    import ssl

    import uvicorn

    uvicorn.run(make_app(args.delay_s), host=args.host, port=args.port, workers=1, loop="uvloop", http="httptools",
                lifespan="off", access_log=False, log_level="warning", ssl_certfile=args.tls_cert,
                ssl_keyfile=args.tls_key, ssl_ca_certs=args.client_ca,
                ssl_cert_reqs=ssl.CERT_REQUIRED if args.client_ca else ssl.CERT_NONE)


if __name__ == "__main__":
    main()
