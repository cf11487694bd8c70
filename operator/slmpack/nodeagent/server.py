"""One HTTP port: /metrics (Prometheus text) and /healthz (200 "ok", or 503 and the reason)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

HealthCheck = Callable[[], "tuple[bool, str]"]


def _handler(registry: CollectorRegistry, health: HealthCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/healthz":
                ok, message = health()
                self._send(200 if ok else 503, "text/plain; charset=utf-8", f"{message}\n".encode())
            else:
                self._send(
                    404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n"
                )

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not worth a log line

    return Handler


def start_server(
    host: str, port: int, registry: CollectorRegistry, health: HealthCheck
) -> ThreadingHTTPServer:
    """Serve in a daemon thread; ``server.shutdown()`` stops it. Port 0 picks a free one
    (``server.server_address`` tells which)."""
    server = ThreadingHTTPServer((host, port), _handler(registry, health))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="nodeagent-http", daemon=True).start()
    return server
