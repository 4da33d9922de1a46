"""The gateway process itself: no tensorflow or torch in it, routes reload, invalid routes keep the old table."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import yaml

from .stack import Gateway

NO_FRAMEWORKS = """
import asyncio, importlib, json, pkgutil, sys
from gateway.server import create_app
app = create_app()

async def main():
    await app.process.start()
    # Exercise a real request path in-process: a v2 infer and a TF predict through the ASGI app.
    sent = []
    async def send(message):
        sent.append(message)
    v2 = b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}'
    for path, body in (("/v2/models/scale/infer", v2), ("/v1/models/affine:predict", b'{"instances":[[1,2,3]]}')):
        chunks = [{"type": "http.request", "body": body, "more_body": False}]
        async def receive():
            return chunks.pop(0)
        scope = {"type": "http", "method": "POST", "path": path, "headers": []}
        await app(scope, receive, send)
    print("HOT PATH", sorted(m for m in sys.modules if m.split(".")[0] in ("fastapi", "pydantic", "starlette")))
    # The OpenAPI document is built on its first request (pydantic loads then, in a thread, and only then).
    async def no_body():
        return {"type": "http.request", "body": b"", "more_body": False}
    await app({"type": "http", "method": "GET", "path": "/openapi.json", "headers": []}, no_body, send)
    print("DOCUMENT", "pydantic" in sys.modules, json.loads(sent[-1]["body"])["openapi"])
    await app.process.stop()
    print([m["status"] for m in sent if m["type"] == "http.response.start"])

asyncio.run(main())
import gateway
for mod in pkgutil.walk_packages(gateway.__path__, "gateway."):
    if not mod.name.endswith("__main__"):
        importlib.import_module(mod.name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "torch", "keras", "tensorflow_serving"))
print("FRAMEWORKS", loaded)
"""


def test_gateway_imports_neither_tensorflow_nor_torch(gateway: Gateway) -> None:
    """Nor FastAPI or pydantic on the inference path: those are for the admin API and the OpenAPI documents."""
    result = subprocess.run([sys.executable, "-c", NO_FRAMEWORKS], capture_output=True, text=True, timeout=60,
                            env={"GATEWAY_ROUTES_FILE": str(gateway.routes_file), "PATH": "/usr/bin:/bin",
                                 "GATEWAY_GRPC_PORT": "0", "GATEWAY_ADMIN_PORT": "0"})
    assert result.returncode == 0, result.stderr
    assert "[200, 200, 200]" in result.stdout, result.stdout
    assert "HOT PATH []" in result.stdout, result.stdout
    assert "DOCUMENT True 3.1.0" in result.stdout, result.stdout
    assert "FRAMEWORKS []" in result.stdout, result.stdout


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_routes_file_change_is_applied_and_invalid_change_refused(gateway: Gateway, client: httpx.Client) -> None:
    original = gateway.routes_file.read_text()
    try:
        routes = yaml.safe_load(original)
        routes["revision"] = 2
        routes["models"]["scale"]["default_version"] = 1
        gateway.routes_file.write_text(yaml.safe_dump(routes))

        def default_is(version: str) -> bool:
            r = client.post("/v2/models/scale/infer",
                            json={"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
            return r.status_code == 200 and r.headers["x-model-version"] == version

        assert wait_for(lambda: default_is("1"))
        # An invalid file is refused; revision 2 keeps serving.
        routes["models"]["scale"]["default_version"] = 99
        gateway.routes_file.write_text(yaml.safe_dump(routes))
        time.sleep(1.0)
        assert default_is("1")
    finally:
        gateway.routes_file.write_text(original)
    assert wait_for(lambda: default_is("2"))
