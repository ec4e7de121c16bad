"""The collector's ASGI application: /healthz, Prometheus /metrics, the feed webhook, and whatever
else the service mounts beside them (the hall manager's UI, collector/web/ui/).

The webhook (`POST /api/v1/feed/{hall}`, docs/protocol.md §6) is answered only after its message
was committed by the ingest worker, as an MQTT message is acknowledged only then. Before a body
is read, a request passes, in this order (each refusal counted as `evalterm_rejected_total{reason}`
and logged, and answered with `Connection: close`, so an unread body is never waited for):

    401 unauthorized            no token, or not one of [http] feed_token / feed_tokens
    403 forbidden_hall          a token posting a hall outside its scope
    415 unsupported_media_type  Content-Type other than application/json (charset utf-8 if given)
    411 length_required         no Content-Length (a chunked body included)
    413 oversized               Content-Length over the protocol's feed limit
    503 busy                    [http] max_feed_requests already in progress (Retry-After: 1)
    408 body_timeout            the body did not arrive within [http] body_timeout_s

then the ingest worker's answer: 202 accepted, 200 duplicate, 400 with the rejection reason, 503
busy when no commit came within the commit timeout, 500 when the message went to the dead-letter
table. Blocking calls (the commit wait, /healthz and /metrics, which read SQLite) run in worker
threads, bounded, never on the event loop.

This module builds the application only; collector/web/server.py serves it.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import anyio
import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from collector.config import FeedToken, HttpConfig, feed_tokens
from collector.ingest import Outcome
from collector.metrics import Metrics
from collector.protocol import MAX_FEED_PAYLOAD, Rejection

__all__ = ["COMMIT_TIMEOUT_S", "FeedSink", "build_app"]

_LOG = logging.getLogger(__name__)

COMMIT_TIMEOUT_S = 30.0  # a webhook request waits this long for its commit, then answers 503


class FeedSink(Protocol):
    """What the webhook needs of the running collector (collector.service.Collector): hand a
    body to the ingest worker and wait for its outcome (None: not committed in time)."""

    def submit_feed(self, hall: str, body: bytes, timeout: float = COMMIT_TIMEOUT_S
                    ) -> Outcome | None: ...


def _json(code: int, obj: dict[str, Any], *, close: bool = False,
          headers: dict[str, str] | None = None) -> JSONResponse:
    h = dict(headers or {})
    if close:
        h["Connection"] = "close"
    return JSONResponse(obj, status_code=code, headers=h)


def _bearer(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _find_token(tokens: Sequence[FeedToken], given: str) -> FeedToken | None:
    """The configured token equal to `given`, compared in constant time against every one."""
    found = None
    for t in tokens:
        if hmac.compare_digest(t.token.encode(), given.encode()) and given:
            found = t
    return found


def _is_json(content_type: str) -> bool:
    media, *params = (p.strip().lower() for p in content_type.split(";"))
    if media != "application/json":
        return False
    for p in params:
        name, _, value = p.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "utf8"):
            return False
    return True


def build_app(http: HttpConfig, feed: FeedSink, health: Callable[[], dict[str, Any]],
              metrics: Metrics, mounts: Sequence[BaseRoute] = ()) -> Starlette:
    """The application; `mounts` (e.g. `Mount("/ui", build_ui(...))`) are routed after the
    collector's own paths."""
    tokens = feed_tokens(http)
    inflight = 0
    limiter: anyio.CapacityLimiter | None = None  # created in the event loop, on first use

    def refuse(reason: Rejection, code: int, detail: str, request: Request, log: str = ""
               ) -> JSONResponse:
        metrics.rejected.labels(reason.value).inc()
        client = request.client.host if request.client else "?"
        _LOG.warning("feed webhook: %s from %s: %s", reason.value, client, log or detail)
        return _json(code, {"error": reason.value, "detail": detail}, close=True)

    async def healthz(_request: Request) -> Response:
        h = await run_in_threadpool(health)
        return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503)

    async def metrics_page(_request: Request) -> Response:
        text = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def read_body(request: Request) -> bytes | None:
        """The body, or None when it did not come within body_timeout_s (h11 holds a body to
        its Content-Length, so it is at most MAX_FEED_PAYLOAD here)."""
        chunks: list[bytes] = []
        with anyio.move_on_after(http.body_timeout_s):
            async for chunk in request.stream():
                chunks.append(chunk)
            return b"".join(chunks)
        return None

    async def feed_post(request: Request) -> Response:
        nonlocal inflight, limiter
        hall = request.path_params["hall"]
        token = _find_token(tokens, _bearer(request))
        if token is None:
            return refuse(Rejection.UNAUTHORIZED, 401, "a valid Authorization: Bearer token is "
                          "required", request, "request without a valid token")
        if not token.allows(hall):
            scope = ",".join(sorted(token.halls or ()))
            return refuse(Rejection.FORBIDDEN_HALL, 403, "this token may not post this hall's "
                          "feed", request, f"a token of halls {scope} posted hall {hall!r}")
        if not _is_json(request.headers.get("content-type", "")):
            return refuse(Rejection.UNSUPPORTED_MEDIA_TYPE, 415, "Content-Type must be "
                          "application/json", request)
        try:
            length = int(request.headers.get("content-length", ""))
        except ValueError:
            length = -1
        if length < 0:
            return refuse(Rejection.LENGTH_REQUIRED, 411, "Content-Length is required", request)
        if length > MAX_FEED_PAYLOAD:
            return refuse(Rejection.OVERSIZED, 413, f"limit {MAX_FEED_PAYLOAD}", request)
        if inflight >= http.max_feed_requests:
            metrics.feed_busy.inc()
            _LOG.warning("feed webhook: %d requests in progress ([http] max_feed_requests); "
                         "answered 503", inflight)
            return _json(503, {"error": "busy", "detail": "too many requests in progress"},
                         close=True, headers={"Retry-After": "1"})
        if limiter is None:
            limiter = anyio.CapacityLimiter(http.max_feed_requests)
        inflight += 1
        metrics.feed_inflight.set(inflight)
        try:
            try:
                body = await read_body(request)
            except ClientDisconnect:
                return Response(status_code=400)  # nobody reads it
            if body is None:
                return refuse(Rejection.BODY_TIMEOUT, 408, f"the body did not arrive within "
                              f"{http.body_timeout_s:g} s", request)
            outcome = await anyio.to_thread.run_sync(feed.submit_feed, hall, body,
                                                     COMMIT_TIMEOUT_S, limiter=limiter)
        finally:
            inflight -= 1
            metrics.feed_inflight.set(inflight)
        if outcome is None:
            return _json(503, {"error": "busy"}, headers={"Retry-After": "1"})
        if outcome.status == "accepted":
            return _json(202, {"status": "accepted"})
        if outcome.status == "duplicate":
            return _json(200, {"status": "duplicate"})
        if outcome.status == "rejected":
            return _json(400, {"error": outcome.reason, "detail": outcome.detail})
        return _json(500, {"error": "internal"})

    async def not_found(_request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 404
        error = {404: "not_found", 405: "method_not_allowed"}.get(code, "error")
        headers = exc.headers if isinstance(exc, HTTPException) else None
        return _json(code, {"error": error}, headers=dict(headers or {}))

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
        Route("/api/v1/feed/{hall}", feed_post, methods=["POST"]),
        *mounts,
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
