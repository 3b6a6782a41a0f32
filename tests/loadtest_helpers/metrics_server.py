"""A Prometheus endpoint serving fixed text on 127.0.0.1 (GET /metrics; anything else 404), in a thread."""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

__all__ = ["metrics_server"]


@contextlib.contextmanager
def metrics_server(text: str) -> Iterator[str]:
    """Serve `text` at http://127.0.0.1:<free port>/metrics for the block; yield the base URL."""
    body = text.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            found = self.path == "/metrics"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body if found else b"")

        def log_message(self, *args):  # quiet: tests read their own output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
