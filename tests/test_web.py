"""The collector's HTTP server (collector/web/) on real sockets, with the real collector behind it
(Mosquitto and InfluxDB from conftest.py): timeouts, limits, hall-scoped tokens, HTTPS from the
project's PKI, and /healthz with evalterm_part_up following a failing part and its recovery.

Timeouts are set short and waited for with generous client deadlines: a test asserts what
happens (cut off, 503, 408), never how fast."""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import feed_bytes, txn_msg, wait_for

from collector.clock import now_ms
from collector.config import Config, ConfigError
from collector.db import connect
from collector.metrics import Metrics
from collector.protocol import MAX_FEED_PAYLOAD
from collector.provision import pki
from collector.registry import Registry
from collector.service import Collector
from collector.sim.servers import InfluxServer
from collector.web.app import build_app
from collector.web.server import WebServer

pytestmark = pytest.mark.servers

TOKEN_A = "token-of-hall-a-0123456789"  # h1
TOKEN_B = "token-of-halls-b-c-987654321"  # h2, h3
CLIENT_TIMEOUT = 30.0  # a safety net for a hung test, not a speed limit


@pytest.fixture
def running(make_config: Callable[..., Config]) -> Iterator[Callable[..., Collector]]:
    started: list[Collector] = []

    def start(cfg: Config | None = None, connected: bool = True) -> Collector:
        c = Collector(cfg or make_config())
        started.append(c)
        c.start()
        if connected:
            wait_for(lambda: c.health()["mqtt_connected"], what="collector connected")
        return c

    yield start
    for c in started:
        c.stop()


def metric(c: Collector, name: str, **labels: str) -> float:
    value = c.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def body(txn: str = "WEB-1", window: str = "w1") -> bytes:
    return feed_bytes(txn_msg(txn, window=window, completed=now_ms()))


def request(port: int, method: str, path: str, data: bytes | None = None,
            headers: dict[str, str] | None = None, *, tls: ssl.SSLContext | None = None
            ) -> tuple[int, dict[str, str], Any]:
    """One request on a connection of its own: (status, headers, JSON or text)."""
    if tls is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT,
                                           context=tls)
    try:
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        text = resp.read().decode()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        return resp.status, hdrs, json.loads(text)
    except json.JSONDecodeError:
        return resp.status, hdrs, text


def post(port: int, hall: str, data: bytes, token: str | None, ctype: str = "application/json",
         **kw: Any) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": ctype} if ctype else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return request(port, "POST", f"/api/v1/feed/{hall}", data, headers, **kw)


def raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def read_response(s: socket.socket) -> bytes:
    """One response (headers and its Content-Length of body), leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    headers, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in headers.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        rest += s.recv(65536)
    return headers + b"\r\n\r\n" + rest


def head(token: str, length: int, hall: str = "h1") -> bytes:
    return (f"POST /api/v1/feed/{hall} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n").encode()


def txn_halls(cfg: Config) -> set[tuple[str, str]]:
    conn = sqlite3.connect(cfg.state_db)
    try:
        return set(conn.execute("SELECT hall, txn FROM txn").fetchall())
    finally:
        conn.close()


# -- timeouts ---------------------------------------------------------------------------------

def test_a_slow_body_is_answered_408_and_cut_off(running: Callable[..., Collector],
                                                  make_config: Callable[..., Config]) -> None:
    cfg = make_config(http__body_timeout_s=0.5)
    c = running(cfg)
    port = c.http_port
    assert port
    data = body()
    s = raw(port)
    s.sendall(head(cfg.http.feed_token, len(data)) + data[:10])  # and the rest never comes
    answer = read_all(s)  # returns only because the server closes the connection
    s.close()
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout", answer
    assert b"connection: close" in rest.lower()
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"] == "body_timeout"
    assert metric(c, "evalterm_rejected_total", reason="body_timeout") == 1
    assert metric(c, "evalterm_http_feed_inflight") == 0  # its slot is free again
    assert post(port, "h1", data, cfg.http.feed_token)[0] == 202  # the same message, whole


def test_incomplete_headers_and_silent_connections_are_closed(
        running: Callable[..., Collector], make_config: Callable[..., Config]) -> None:
    c = running(make_config(http__header_timeout_s=0.5, http__keepalive_s=60))
    port = c.http_port
    assert port
    silent = raw(port)
    slow = raw(port)
    slow.sendall(b"POST /api/v1/feed/h1 HTTP/1.1\r\nHost: x\r\n")  # never the blank line
    assert read_all(silent) == b"" and read_all(slow) == b""  # closed without an answer
    silent.close()
    slow.close()
    # After a response on a keep-alive connection, the next request's headers are timed too.
    s = raw(port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = read_response(s)
    assert first.startswith(b"HTTP/1.1 200"), first
    s.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert read_all(s) == b""
    s.close()


# -- limits -------------------------------------------------------------------------------------

def test_feed_requests_beyond_the_limit_get_503_while_the_others_wait(
        running: Callable[..., Collector], make_config: Callable[..., Config]) -> None:
    cfg = make_config(http__max_feed_requests=2, http__body_timeout_s=120)
    c = running(cfg)
    port = c.http_port
    assert port
    data = body("SLOW-1")
    slow = [raw(port) for _ in range(2)]
    for s in slow:
        s.sendall(head(cfg.http.feed_token, len(data)) + data[:5])
    wait_for(lambda: metric(c, "evalterm_http_feed_inflight") == 2, what="2 requests in progress")
    code, headers, answer = post(port, "h1", body("FAST-1"), cfg.http.feed_token)
    assert (code, answer["error"], headers["retry-after"]) == (503, "busy", "1")
    assert metric(c, "evalterm_http_feed_busy_total") == 1
    for s in slow:  # the 503 came while both slow requests were still waiting for their body
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(1)
        s.setblocking(True)
    slow[0].sendall(data[5:])  # one finishes its body: answered, its slot free
    assert read_response(slow[0]).startswith(b"HTTP/1.1 202")
    assert post(port, "h1", body("FAST-2"), cfg.http.feed_token)[0] == 202
    for s in slow:
        s.close()
    wait_for(lambda: metric(c, "evalterm_http_feed_inflight") == 0, what="slots free")
    assert {t for _, t in txn_halls(cfg)} == {"SLOW-1", "FAST-2"}


def test_a_burst_of_60_concurrent_posts_is_answered_never_reset(
        running: Callable[..., Collector], make_config: Callable[..., Config]) -> None:
    cfg = make_config(http__max_feed_requests=8)
    c = running(cfg)
    port = c.http_port
    assert port
    n = 60
    barrier = threading.Barrier(n)
    codes: dict[int, list[int]] = {i: [] for i in range(n)}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            barrier.wait()
            while not codes[i] or codes[i][-1] == 503:  # a busy answer is retried, as documented
                codes[i].append(post(port, "h1", body(f"BURST-{i}"), cfg.http.feed_token)[0])
        except BaseException as exc:  # a reset or a refused connection
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CLIENT_TIMEOUT * 4)
    assert errors == []
    assert all(set(cs) <= {202, 503} and cs[-1] == 202 for cs in codes.values()), codes
    assert len(txn_halls(cfg)) == n
    assert metric(c, "evalterm_http_feed_busy_total") == sum(cs.count(503) for cs in
                                                             codes.values())


def test_connections_beyond_max_connections_get_503(running: Callable[..., Collector],
                                                    make_config: Callable[..., Config]) -> None:
    c = running(make_config(http__max_connections=2, http__keepalive_s=120,
                            http__header_timeout_s=120))
    port = c.http_port
    assert port
    held = [raw(port) for _ in range(2)]
    for s in held:  # two served keep-alive connections, left open
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 200")
    code, _, _ = request(port, "GET", "/healthz")
    assert code == 503
    held.pop().close()
    wait_for(lambda: request(port, "GET", "/healthz")[0] == 200, what="served again")
    for s in held:
        s.close()


def test_content_type_size_and_length_are_checked(running: Callable[..., Collector],
                                                  make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    c = running(cfg)
    port = c.http_port
    assert port
    token = cfg.http.feed_token
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "",
                  "application/json; charset=gbk"):
        code, headers, answer = post(port, "h1", body(), token, ctype=ctype)
        assert (code, answer["error"]) == (415, "unsupported_media_type"), ctype
        assert headers["connection"] == "close"
    assert metric(c, "evalterm_rejected_total", reason="unsupported_media_type") == 4
    # Over the limit: refused on the header alone, before a byte of the body is read.
    s = raw(port)
    s.sendall(head(token, MAX_FEED_PAYLOAD + 1))
    answer = read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert post(port, "h1", b"x" * (MAX_FEED_PAYLOAD + 1), token)[0] == 413
    assert metric(c, "evalterm_rejected_total", reason="oversized") == 2
    s = raw(port)
    s.sendall(b"POST /api/v1/feed/h1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + token.encode() + b"\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert read_all(s).startswith(b"HTTP/1.1 411")
    s.close()
    assert post(port, "h1", body("CT-1"), token, ctype="Application/JSON; charset=UTF-8")[0] == 202
    assert request(port, "GET", "/api/v1/feed/h1")[0] == 405
    code, _, answer = request(port, "GET", "/nothing")
    assert (code, answer) == (404, {"error": "not_found"})


# -- tokens scoped to halls ----------------------------------------------------------------------

def test_a_token_posts_only_its_own_halls(running: Callable[..., Collector],
                                          make_config: Callable[..., Config]) -> None:
    cfg = make_config(http__feed_token="", http__feed_tokens=f"h1={TOKEN_A}; h2,h3={TOKEN_B}")
    c = running(cfg)
    port = c.http_port
    assert port
    assert post(port, "h1", body("A-1"), TOKEN_A)[0] == 202
    code, _, answer = post(port, "h2", body("A-2"), TOKEN_A)
    assert (code, answer["error"]) == (403, "forbidden_hall")
    assert post(port, "h3", body("B-3"), TOKEN_B)[0] == 202
    assert post(port, "h1", body("B-1"), TOKEN_B)[0] == 403
    assert post(port, "h1", body("X-1"), "test-feed-token-0123456789")[0] == 401  # not given
    assert post(port, "h1", body("X-2"), TOKEN_A[:-1])[0] == 401
    assert metric(c, "evalterm_rejected_total", reason="forbidden_hall") == 2
    assert metric(c, "evalterm_rejected_total", reason="unauthorized") == 2
    assert txn_halls(cfg) == {("h1", "A-1"), ("h3", "B-3")}


def test_the_single_token_of_older_configs_still_serves_every_hall(
        running: Callable[..., Collector], make_config: Callable[..., Config]) -> None:
    cfg = make_config()  # feed_token only, as before
    c = running(cfg)
    assert c.http_port
    for hall in ("h1", "h2"):
        assert post(c.http_port, hall, body(f"OLD-{hall}"), cfg.http.feed_token)[0] == 202
    assert txn_halls(cfg) == {("h1", "OLD-h1"), ("h2", "OLD-h2")}


# -- HTTPS ---------------------------------------------------------------------------------------

def test_https_with_a_certificate_of_the_projects_pki(running: Callable[..., Collector],
                                                      make_config: Callable[..., Config],
                                                      tmp_path: Path) -> None:
    files = pki.init_ca(tmp_path / "pki")
    pki.issue_server(files.root, ["127.0.0.1", "localhost"])
    cfg = make_config(http__tls_certfile=str(files.server_crt),
                      http__tls_keyfile=str(files.server_key))
    c = running(cfg)
    port = c.http_port
    assert port
    trusting = ssl.create_default_context(cafile=str(files.bundle))
    code, _, health = request(port, "GET", "/healthz", tls=trusting)
    assert code == 200 and health["status"] == "ok"
    assert post(port, "h1", body("TLS-1"), cfg.http.feed_token, tls=trusting)[0] == 202
    assert ("h1", "TLS-1") in txn_halls(cfg)
    # A client that does not trust the project's CA refuses the server...
    with pytest.raises(ssl.SSLCertVerificationError):
        request(port, "GET", "/healthz", tls=ssl.create_default_context())
    # ... and plain HTTP on the TLS port gets no HTTP answer at all.
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        request(port, "GET", "/healthz")
    s = raw(port)
    s.sendall(head(cfg.http.feed_token, 5) + b"{...}")
    assert not read_all(s).startswith(b"HTTP/")
    s.close()


def test_unusable_tls_files_and_a_port_in_use_fail_the_start_in_one_line(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("nothing here\n")
    cfg = make_config(http__tls_certfile=str(bad), http__tls_keyfile=str(bad))
    with pytest.raises(ConfigError, match="tls_certfile/tls_keyfile: cannot be used"):
        WebServer(build_app(cfg.http, _NoFeed(), dict, Metrics()), cfg.http).start()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    cfg = make_config(http__listen=f"127.0.0.1:{taken.getsockname()[1]}")
    with pytest.raises(ConfigError, match=r"\[http\] listen = .*cannot listen there"):
        WebServer(build_app(cfg.http, _NoFeed(), dict, Metrics()), cfg.http).start()
    taken.close()


def test_a_mounted_app_is_served_beside_the_collectors_paths_and_stop_frees_the_port(
        make_config: Callable[..., Config]) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse
    from starlette.routing import Mount, Route

    async def page(_request: Request) -> HTMLResponse:
        return HTMLResponse("<p>案件列表</p>")

    ui = Starlette(routes=[Route("/cases", page)])
    cfg = make_config()
    server = WebServer(build_app(cfg.http, _NoFeed(), lambda: {"status": "ok"}, Metrics(),
                                 [Mount("/ui", app=ui)]), cfg.http)
    server.start()
    port = server.port
    code, headers, text = request(port, "GET", "/ui/cases")
    assert (code, text) == (200, "<p>案件列表</p>")
    assert headers["content-type"].startswith("text/html")
    assert request(port, "GET", "/healthz")[:1] == (200,)
    assert request(port, "GET", "/ui/nothing")[0] == 404
    server.stop()
    assert not server.alive
    with pytest.raises(ConnectionRefusedError):
        raw(port)
    again = socket.socket()
    again.bind(("127.0.0.1", port))  # the port is free again
    again.close()


class _NoFeed:
    def submit_feed(self, hall: str, body: bytes, timeout: float = 30.0) -> None:
        return None


# -- /healthz and evalterm_part_up ---------------------------------------------------------------

def _health(port: int) -> tuple[int, dict[str, Any]]:
    code, _, doc = request(port, "GET", "/healthz")
    return code, doc


def _part_up(port: int, part: str) -> str:
    text = request(port, "GET", "/metrics")[2]
    line = [ln for ln in text.splitlines() if ln.startswith(f'evalterm_part_up{{part="{part}"}}')]
    return line[0].split()[-1] if line else "missing"


def test_healthz_degraded_while_influxdb_is_stopped_and_back(
        running: Callable[..., Collector], make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    own = InfluxServer(tmp_path / "influx").start()
    try:
        cfg = make_config(influx__url=own.url, influx__retry_max_s=1.0)
        c = running(cfg)
        port = c.http_port
        assert port
        code, doc = _health(port)
        assert code == 200 and doc["status"] == "ok"
        assert {k: v["state"] for k, v in doc["parts"].items()} == {
            "broker": "up", "ingest": "up", "drainer": "up", "influx": "up", "detector": "up"}
        assert _part_up(port, "influx") == "1.0"
        own.stop()  # with nothing to write: the idle drainer's ping finds it out
        _, doc = wait_for(lambda: (h := _health(port))[0] == 503 and h,
                          what="degraded while InfluxDB is down, without traffic")
        assert doc["status"] == "degraded" and doc["parts"]["influx"]["state"] == "down"
        assert "ping" in doc["parts"]["influx"]["reason"]
        assert doc["parts"]["broker"]["state"] == "up"
        assert _part_up(port, "influx") == "0.0" and _part_up(port, "broker") == "1.0"
        assert post(port, "h1", body("OUT-1"), cfg.http.feed_token)[0] == 202  # a point to write
        wait_for(lambda: "ping" not in _health(port)[1]["parts"]["influx"]["reason"],
                 what="the failed write's own reason")
        assert _health(port)[0] == 503
        own.start()
        wait_for(lambda: _health(port)[0] == 200, timeout=60, what="healthy again")
        assert _part_up(port, "influx") == "1.0"
        assert ("h1", "OUT-1") in txn_halls(cfg)
    finally:
        own.stop()


def test_healthz_degraded_while_the_detector_fails_and_back(
        running: Callable[..., Collector], make_config: Callable[..., Config]) -> None:
    cfg = make_config(detection__interval_s=1)
    conn = connect(cfg.state_db)
    Registry(conn).add("kp1", "h1", "w1", now_ms())  # a hall for the detector to judge
    conn.close()
    c = running(cfg)
    port = c.http_port
    assert port
    wait_for(lambda: _health(port)[0] == 200, what="healthy at first")
    # A real fault: a table the detector reads (and nothing else here writes) goes away.
    db = sqlite3.connect(cfg.state_db)
    db.execute("ALTER TABLE window_log RENAME TO window_log_away")
    db.commit()
    _, doc = wait_for(lambda: (h := _health(port))[0] == 503 and h,
                      what="degraded while detection fails")
    assert doc["parts"]["detector"]["state"] == "down"
    assert "window_log" in doc["parts"]["detector"]["reason"]
    assert _part_up(port, "detector") == "0.0"
    db.execute("ALTER TABLE window_log_away RENAME TO window_log")
    db.commit()
    db.close()
    wait_for(lambda: _health(port)[0] == 200, what="healthy after a good run")
    assert _part_up(port, "detector") == "1.0"


def test_a_detector_switched_off_is_off_not_degraded(running: Callable[..., Collector],
                                                     make_config: Callable[..., Config]) -> None:
    c = running(make_config(detection__enabled=False))
    port = c.http_port
    assert port
    code, doc = _health(port)
    assert code == 200 and doc["parts"]["detector"]["state"] == "off"
    assert _part_up(port, "detector") == "missing"


def test_healthz_degraded_without_the_broker(running: Callable[..., Collector],
                                            make_config: Callable[..., Config]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    c = running(make_config(mqtt__port=dead), connected=False)
    port = c.http_port
    assert port
    code, doc = _health(port)
    assert code == 503 and doc["parts"]["broker"]["state"] == "down"
    assert doc["parts"]["broker"]["reason"] and _part_up(port, "broker") == "0.0"


def test_the_service_mounts_the_managers_ui_with_its_configuration(
        make_config: Callable[..., Config]) -> None:
    from collector.manager.run import ui_mounts

    assert ui_mounts(make_config(manager__enabled=False)) == []
    cfg = make_config()
    mounts = ui_mounts(cfg)
    server = WebServer(build_app(cfg.http, _NoFeed(), lambda: {"status": "ok"}, Metrics(),
                                 mounts), cfg.http)
    server.start()
    try:
        code, _headers, text = request(server.port, "GET", "/ui/login")
        assert code == 200 and "登录" in text, (code, text[:200])
        assert request(server.port, "GET", "/ui/cases")[0] in (302, 303, 307)  # sign in first
    finally:
        server.stop()
