"""The InfluxDB 2.x/3.x writer (influxdb-client).

No InfluxDB 2.x or 3.x server can be installed on the build machines (Debian ships only 1.x), so
this test checks the HTTP calls the writer makes against a local recording server instead: the path,
the organisation, bucket and precision, the token header and the body. The 1.x path is tested
against the real server in test_collector_servers.py.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from collector.influx import InvalidPoints, V2Writer, WriteFailed


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.status = 204
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                recorder.calls.append({"path": self.path, "headers": dict(self.headers),
                                       "body": body.decode()})
                self.send_response(recorder.status)
                payload = b'{"code":"invalid","message":"unable to parse"}'
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.server.shutdown()


def test_v2_write_call(recorder: Recorder) -> None:
    w = V2Writer(recorder.url, "tok-123", "myorg", "evalterm", timeout_s=5)
    lines = ['rating,hall=h1 value=5i 1764201600000000001', 'rating,hall=h1 value=1i 2']
    w.write(lines)
    [call] = recorder.calls
    url = urlparse(call["path"])
    assert url.path == "/api/v2/write"
    assert parse_qs(url.query) == {"org": ["myorg"], "bucket": ["evalterm"], "precision": ["ns"]}
    assert call["headers"]["Authorization"] == "Token tok-123"
    assert call["body"] == "\n".join(lines)
    w.close()


def test_v2_errors_map_to_retry_or_invalid(recorder: Recorder) -> None:
    w = V2Writer(recorder.url, "tok", "o", "b", timeout_s=5)
    recorder.status = 400
    with pytest.raises(InvalidPoints):
        w.write(["bad line"])
    recorder.status = 503
    with pytest.raises(WriteFailed):
        w.write(["m v=1i 1"])
    w.close()
    dead = V2Writer("http://127.0.0.1:9", "tok", "o", "b", timeout_s=2)
    with pytest.raises(WriteFailed):
        dead.write(["m v=1i 1"])
    dead.close()
