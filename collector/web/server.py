"""The collector's HTTP server: uvicorn serving collector/web/app.py in a thread of the service.

What it promises, and how ([http] options, docs/config.md):

* a connection must send a request's complete headers within `header_timeout_s` of connecting
  (or of its first byte after a previous response), or it is closed: uvicorn has no such timer,
  so `_H11Protocol` below adds one to uvicorn's h11 protocol;
* a webhook body must arrive within `body_timeout_s` (collector/web/app.py, around receive);
* an idle keep-alive connection is closed after `keepalive_s` (uvicorn `timeout_keep_alive`);
* at most `max_connections` open connections are served; a request on one more is answered 503
  by uvicorn (`limit_concurrency`, which counts the connection asking as well: hence the +1);
* the socket is bound here, before the thread starts, with a listen backlog of `backlog`, so a
  port in use fails `start()` with a ConfigError naming `[http] listen`, and port 0 works;
* with `tls_certfile`/`tls_keyfile` the port speaks HTTPS only (TLS 1.2 or later); the TLS
  handshake itself is bounded by asyncio's 60 s handshake timeout.

`start()` returns once the server accepts connections; `stop()` stops accepting, lets requests in
progress finish for up to `GRACE_S` (a webhook request waits for its commit: stop the server
before the ingest worker), then cancels what is left and joins the thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from collector.config import ConfigError, HttpConfig

__all__ = ["GRACE_S", "WebServer"]

_LOG = logging.getLogger(__name__)

GRACE_S = 5


class _H11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for a request's headers (slow-loris)."""

    header_timeout_s = 10.0  # set per server by `_protocol_class`

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the first byte of the next request on this connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            _LOG.info("http: closed a connection from %s that sent no complete request headers "
                      "within %g s", self.client[0] if self.client else "?",
                      self.header_timeout_s)
            self.transport.close()


def _protocol_class(header_timeout_s: float) -> type[H11Protocol]:
    return type("H11Protocol", (_H11Protocol,), {"header_timeout_s": header_timeout_s})


def _tls_context(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
                 ) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    assert config.ssl_certfile is not None
    ctx.load_cert_chain(config.ssl_certfile, config.ssl_keyfile)
    return ctx


def _bind(listen: str, backlog: int) -> socket.socket:
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    where = f"[http] listen = {listen!r}"
    try:
        infos = socket.getaddrinfo(host or None, int(port_text), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot resolve the host ({exc})") from None
    family, kind, proto, _name, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{where}: cannot listen there ({exc.strerror}); choose a free port "
                          "or stop what holds it") from None
    return sock


class WebServer:
    """uvicorn in a daemon thread, serving `app` as `[http]` says."""

    def __init__(self, app: ASGIApp, http: HttpConfig) -> None:
        self._http = http
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._config = uvicorn.Config(
            app,
            http=_protocol_class(http.header_timeout_s),
            ws="none",
            lifespan="auto",
            log_config=None,  # the service's logging as it is
            access_log=False,
            server_header=False,
            timeout_keep_alive=http.keepalive_s,
            limit_concurrency=http.max_connections + 1,
            backlog=http.backlog,
            timeout_graceful_shutdown=GRACE_S,
            ssl_certfile=http.tls_certfile or None,
            ssl_keyfile=http.tls_keyfile or None,
            ssl_context_factory=_tls_context if http.tls_certfile else None,
        )
        self._server = uvicorn.Server(self._config)
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        assert self._sock is not None, "not started"
        port: int = self._sock.getsockname()[1]
        return port

    @property
    def scheme(self) -> str:
        return "https" if self._http.tls_certfile else "http"

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 30.0) -> None:
        """Bind, start the thread, return once the server accepts connections."""
        if self._http.tls_certfile:
            self._check_tls()
        self._sock = _bind(self._http.listen, self._http.backlog)
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise ConfigError(f"[http] the HTTP server did not start: {self._error!r}")
            if time.monotonic() > deadline:
                raise ConfigError("[http] the HTTP server did not start in time")
            time.sleep(0.02)
        _LOG.info("HTTP server on %s://%s (port %d)", self.scheme, self._http.listen, self.port)

    def _check_tls(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self._http.tls_certfile, self._http.tls_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[http] tls_certfile/tls_keyfile: cannot be used ({exc}); give "
                              "the PEM certificate chain and its key (`evalterm pki issue "
                              "server`), readable by this user") from None

    def _run(self) -> None:
        assert self._sock is not None
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # SystemExit from uvicorn's start-up included
            self._error = exc
            _LOG.error("the HTTP server stopped: %r", exc)

    def stop(self, timeout: float = GRACE_S + 10) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()

    def __repr__(self) -> str:
        return f"WebServer({self._http.listen!r})"
