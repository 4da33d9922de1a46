"""Reference proxies for the overhead benchmark: the same forwarding, once as a raw ASGI app and once as a FastAPI
route, to measure what FastAPI's per-request machinery costs (the README's reason to keep it off the hot path), and
the raw app over pyreqwest instead of aiohttp (what the HTTP client alone costs: the bare stack the gateway runs on).

Each forwards ``POST <path>`` with its body to the backend's same path through one pooled client (aiohttp, as the
gateway does by default, or pyreqwest) and answers the backend's status, content type and body. Nothing else: no
routing table, no metrics.

Run: ``python load_tests/reference_proxy.py --framework raw|fastapi [--client aiohttp|pyreqwest] --port 9100
--backend http://127.0.0.1:9000`` (uvicorn, httptools, uvloop, 1 worker, no access log, like the gateway).
"""

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=1)


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
                                 skip_auto_headers=("User-Agent",), auto_decompress=False)


async def forward(client: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, bytes, str]:
    async with client.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT) as r:
        return r.status, await r.read(), r.headers.get("Content-Type", "application/json")


class PyreqwestForwarder:
    """``forward`` over one pyreqwest client (the same pool size and limits)."""

    def __init__(self) -> None:
        from datetime import timedelta

        from pyreqwest.client import ClientBuilder

        self.client = (ClientBuilder().timeout(timedelta(seconds=10)).connect_timeout(timedelta(seconds=1))
                       .max_connections(256).gzip(False).brotli(False).zstd(False).deflate(False).build())

    async def __call__(self, url: str, body: bytes) -> tuple[int, bytes, str]:
        request = self.client.post(url).body_bytes(body).header("Content-Type", "application/json").build()
        response = await request.send()
        return response.status, bytes(await response.bytes()), response.headers.get("content-type",
                                                                                      "application/json")

    async def close(self) -> None:
        await self.client.close()


class RawProxy:
    """A plain ASGI app: read the body, forward, answer."""

    def __init__(self, backend: str, client: str = "aiohttp") -> None:
        self.backend = backend
        self.kind = client
        self.client: aiohttp.ClientSession | None = None
        self.reqwest: PyreqwestForwarder | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if self.kind == "pyreqwest":
                        self.reqwest = PyreqwestForwarder()
                    else:
                        self.client = session()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    for client in (self.client, self.reqwest):
                        if client is not None:
                            await client.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        url, data = self.backend + scope["path"], b"".join(chunks)
        if self.reqwest is not None:
            status, body, content_type = await self.reqwest(url, data)
        else:
            assert self.client is not None
            status, body, content_type = await forward(self.client, url, data)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def fastapi_proxy(backend: str) -> Any:
    """The same forwarding as one FastAPI route (the body read from the Request: no pydantic model). No
    `from __future__ import annotations` in this module: FastAPI reads the route's annotations as objects."""
    from fastapi import FastAPI, Request, Response

    clients: list[aiohttp.ClientSession] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clients.append(session())
        yield
        await clients[0].close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/{path:path}")
    async def proxy(path: str, request: Request) -> Response:
        status, body, content_type = await forward(clients[0], f"{backend}/{path}", await request.body())
        return Response(content=body, status_code=status, media_type=content_type)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("raw", "fastapi"), required=True)
    parser.add_argument("--client", choices=("aiohttp", "pyreqwest"), default="aiohttp",
                        help="the HTTP client (raw only; FastAPI's route uses aiohttp)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="base URL of the backend, e.g. http://127.0.0.1:9000")
    args = parser.parse_args()
    import uvicorn

    app = RawProxy(args.backend, args.client) if args.framework == "raw" else fastapi_proxy(args.backend)
    uvicorn.run(app, host="127.0.0.1", port=args.port, http="httptools", loop="uvloop", access_log=False,
                log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
