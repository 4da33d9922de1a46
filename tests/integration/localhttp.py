"""A small threaded HTTP server for tests: every request answered by one function (a page to scrape, a recording
proxy in front of a real backend)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Mapping
from typing import Any

#: (method, path, headers, body) -> (status, content type, body)
Respond = Callable[[str, str, Mapping[str, str], bytes], tuple[int, str, bytes]]


class LocalHttp:
    def __init__(self, respond: Respond) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status, content_type, out = respond(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
