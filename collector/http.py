"""The collector's HTTP server: /healthz, Prometheus /metrics and the feed webhook
(`POST /api/v1/feed/{hall}`, docs/protocol.md). A webhook request is answered only after its
message was committed, by the ingest worker, like an MQTT message is acknowledged."""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector.config import Config
from collector.ingest import Outcome
from collector.metrics import Metrics
from collector.protocol import MAX_FEED_PAYLOAD


class FeedService(Protocol):
    """What the server needs of the running collector (collector.service.Collector), so that
    this module does not import the service that starts it."""

    cfg: Config
    metrics: Metrics

    def health(self) -> dict[str, Any]: ...

    def submit_feed(self, hall: str, body: bytes, timeout: float = 30.0) -> Outcome | None: ...

__all__ = ["start_http_server"]

_LOG = logging.getLogger(__name__)


def start_http_server(collector: FeedService) -> ThreadingHTTPServer:
    """Serve on `[http] listen` in daemon threads; the caller shuts the server down."""
    host, _, port = collector.cfg.http.listen.rpartition(":")
    
    class Handler(BaseHTTPRequestHandler):
        server_version = "evalterm"

        def log_message(self, fmt: str, *args: Any) -> None:
            _LOG.debug("http: " + fmt, *args)

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: dict[str, Any]) -> None:
            self._send(code, json.dumps(obj, ensure_ascii=False).encode())

        def do_GET(self) -> None:
            if self.path == "/healthz":
                h = collector.health()
                self._json(200 if h["status"] == "ok" else 503, h)
            elif self.path == "/metrics":
                self._send(200, generate_latest(collector.metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            parts = self.path.split("/")
            if len(parts) != 5 or parts[:4] != ["", "api", "v1", "feed"]:
                self._json(404, {"error": "not_found"})
                return
            token = collector.cfg.http.feed_token
            auth = self.headers.get("Authorization", "")
            if not token or not hmac.compare_digest(auth.encode(), f"Bearer {token}".encode()):
                collector.metrics.rejected.labels("unauthorized").inc()
                _LOG.warning("feed webhook: request without a valid token from %s",
                             self.client_address[0])
                self._json(401, {"error": "unauthorized"})
                return
            try:
                length = int(self.headers.get("Content-Length", "-1"))
            except ValueError:
                length = -1
            if length < 0:
                self._json(411, {"error": "length_required"})
                return
            if length > MAX_FEED_PAYLOAD:
                collector.metrics.rejected.labels("oversized").inc()
                self._json(413, {"error": "oversized", "detail": f"limit {MAX_FEED_PAYLOAD}"})
                return
            body = self.rfile.read(length)
            outcome = collector.submit_feed(parts[4], body)
            if outcome is None:
                self._json(503, {"error": "busy"})
            elif outcome.status == "accepted":
                self._json(202, {"status": "accepted"})
            elif outcome.status == "duplicate":
                self._json(200, {"status": "duplicate"})
            elif outcome.status == "rejected":
                self._json(400, {"error": outcome.reason, "detail": outcome.detail})
            else:
                self._json(500, {"error": "internal"})

    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server

