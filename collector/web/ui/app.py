"""The web UI's Starlette app: sign-in, the case list and page, appeals, the directory.

Contract:
- Every change goes through `CaseService` with the signed-in user's name: the service checks the
  role and the hall and appends the audit record. A refusal (`ManagerError`) is shown on the page
  with a 4xx status, never as a 500. The UI hides forms a role cannot use, for clarity only.
- Sessions are Starlette's signed cookies (itsdangerous): HttpOnly, SameSite=Lax, Secure when
  `https_only`; the user is read from the database on every request, so a removed user is signed
  out at once. Every POST carries the session's CSRF token (a hidden field), compared in constant
  time; a missing or wrong token is refused with 403 before anything else happens.
- The database is opened per request, in a worker thread (scrypt and SQLite never block the event
  loop the webhook shares), and closed after it.
- Pages are plain HTML forms: no JavaScript, a strict Content-Security-Policy.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from collector.clock import now_ms
from collector.manager import ManagerError
from collector.manager.cases import CaseService, User
from collector.manager.deadlines import DeadlineRule
from collector.manager.directory import lookup
from collector.manager.users import session_stamp
from collector.web.ui import i18n, views
from collector.web.ui.throttle import LoginThrottle

__all__ = ["UiSettings", "build_ui"]

_LOG = logging.getLogger(__name__)
T = TypeVar("T")

_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; "
                               "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_STATUS = {"forbidden": 403, "not_found": 404, "conflict": 409, "state": 409, "exists": 409,
           "bad_credentials": 401}
MAX_TEXT = 2000  # characters of one text field (a finding, an action, grounds, a note)


@dataclass(frozen=True)
class UiSettings:
    """What the UI needs besides the database (the collector maps its configuration here)."""

    rule: DeadlineRule = field(default_factory=DeadlineRule)
    secret_key: str = ""
    """Signs the session cookies; empty: a random key kept in the state database (meta
    'ui_session_key'), so sessions survive a restart and no configuration is needed."""
    https_only: bool = False
    """Mark the cookie Secure: set it when the UI is served over TLS."""
    session_hours: int = 8
    tz: timezone = timezone(timedelta(hours=8))
    clock_ms: Callable[[], int] = now_ms
    max_form_bytes: int = 64 * 1024
    login_max_failures: int = 5
    """Failed sign-ins allowed per user name and client address within `login_window_s`."""
    login_window_s: int = 15 * 60


class _Refused(Exception):
    """A request the UI itself refuses (bad CSRF token, oversized form): status and message key."""

    def __init__(self, status: int, key: str) -> None:
        super().__init__(key)
        self.status, self.key = status, key


def _session_key(open_db: Callable[[], sqlite3.Connection]) -> str:
    conn = open_db()
    try:
        conn.execute("INSERT INTO meta (key, value) VALUES ('ui_session_key', ?) "
                     "ON CONFLICT DO NOTHING", (secrets.token_hex(32),))
        return str(conn.execute("SELECT value FROM meta WHERE key='ui_session_key'").fetchone()[0])
    finally:
        conn.close()


def build_ui(db: str | Path | Callable[[], sqlite3.Connection],
             settings: UiSettings | None = None) -> Starlette:
    """The UI over the state database `db` (a path, or a function that opens a connection: one
    per request, used in one worker thread, closed after it)."""
    s = settings or UiSettings()
    if callable(db):
        open_db = db
    else:
        from collector.db import connect

        target: str | Path = db if str(db).startswith(("postgresql:", "postgres:")) else Path(db)

        def open_db() -> sqlite3.Connection:
            return connect(target)

    ui = _Ui(open_db, s)
    key = s.secret_key or _session_key(open_db)
    routes = [
        Route("/", ui.home, name="home"),
        Route("/login", ui.login_form, methods=["GET"], name="login"),
        Route("/login", ui.login, methods=["POST"], name="login_post"),
        Route("/logout", ui.logout, methods=["POST"], name="logout"),
        Route("/lang", ui.set_lang, methods=["GET"], name="lang"),
        Route("/cases", ui.cases, methods=["GET"], name="cases"),
        Route("/cases/{case_id:int}", ui.case, methods=["GET"], name="case"),
        Route("/cases/{case_id:int}/{step:str}", ui.case_action, methods=["POST"],
              name="case_action"),
        Route("/appeals", ui.appeals, methods=["GET"], name="appeals"),
        Route("/appeals/{appeal_id:int}/decide", ui.decide, methods=["POST"], name="decide"),
        Route("/directory", ui.directory, methods=["GET"], name="directory"),
        Route("/ui.css", ui.css, methods=["GET"], name="css"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(
        SessionMiddleware, secret_key=key, session_cookie="evalterm_ui",
        max_age=s.session_hours * 3600, same_site="lax", https_only=s.https_only)])


class _Ui:
    def __init__(self, open_db: Callable[[], sqlite3.Connection], s: UiSettings) -> None:
        self.open_db, self.s = open_db, s
        self.throttle = LoginThrottle(s.login_max_failures, s.login_window_s * 1000)
        self.env = Environment(loader=PackageLoader("collector.web.ui", "templates"),
                               autoescape=select_autoescape(default=True),
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.css_text = files("collector.web.ui").joinpath("ui.css").read_text(encoding="utf-8")

    # plumbing ------------------------------------------------------------------------------
    def _service(self, conn: sqlite3.Connection) -> CaseService:
        return CaseService(conn, self.s.rule, self.s.clock_ms, self.s.tz)

    async def _db(self, fn: Callable[[CaseService, sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = self.open_db()
            try:
                return fn(self._service(conn), conn)
            finally:
                conn.close()
        return await run_in_threadpool(run)

    def _today(self) -> date:
        return datetime.fromtimestamp(self.s.clock_ms() / 1000, UTC).astimezone(self.s.tz).date()

    @staticmethod
    def _csrf(request: Request) -> str:
        tok = request.session.get("csrf")
        if not isinstance(tok, str) or len(tok) < 32:
            tok = secrets.token_urlsafe(32)
            request.session["csrf"] = tok
        return tok

    def _render(self, request: Request, template: str, ctx: dict[str, Any],
                status: int = 200, user: User | None = None) -> HTMLResponse:
        lang = i18n.negotiate(request.session.get("lang"),
                              request.headers.get("accept-language"))

        def url(name: str, **params: Any) -> str:
            return str(request.url_for(name, **params).path)

        flash = request.session.pop("flash", None)
        # Where the language switch comes back to: this page; after a POST, the page it came
        # from (`here` in ctx) or the case list, never the POST's own URL.
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            here = url("cases")
        body = self.env.get_template(template).render(
            t=lambda key, **kw: i18n.t(lang, key, **kw), lang=lang, url=url, user=user,
            csrf=self._csrf(request), flash=flash, has=i18n.has,
            **{"error": None, "here": here, **ctx})
        return HTMLResponse(body, status_code=status, headers=_HEADERS)

    def _lang(self, request: Request) -> str:
        return i18n.negotiate(request.session.get("lang"), request.headers.get("accept-language"))

    def _error(self, request: Request, e: ManagerError) -> dict[str, str]:
        lang = self._lang(request)
        key = f"err.{e.reason}"
        text = i18n.t(lang, key) if i18n.has(key) else str(e)
        return {"text": text, "detail": str(e) if lang == "en" and i18n.has(key) else ""}

    def _refusal(self, request: Request, r: _Refused, user: User | None) -> HTMLResponse:
        return self._render(request, "refused.html", {"message_key": r.key}, r.status, user)

    def _user(self, svc: CaseService, request: Request) -> User | None:
        name = request.session.get("user")
        stamp = request.session.get("stamp")
        if not isinstance(name, str) or not isinstance(stamp, str):
            return None
        want = session_stamp(svc.conn, name)  # None: the user is gone
        if want is None or not hmac.compare_digest(stamp.encode(), want.encode()):
            return None  # the password changed since this session signed in
        try:
            return svc.user(name)
        except ManagerError:
            return None

    def _to_login(self, request: Request) -> RedirectResponse:
        nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{request.url_for('login').path}?next={_quote(nxt)}", 303,
                                headers=_HEADERS)

    async def _form(self, request: Request) -> FormData:
        """The POST's form, after the size limit and the CSRF check."""
        try:
            length = int(request.headers["content-length"])
        except (KeyError, ValueError):
            raise _Refused(411, "refused.bad_form") from None  # (every browser sends it)
        if length > self.s.max_form_bytes:
            raise _Refused(413, "refused.too_large")
        form = await request.form(max_files=0, max_fields=20,
                                  max_part_size=self.s.max_form_bytes)
        sent = form.get("csrf")
        want = request.session.get("csrf")
        if not isinstance(sent, str) or not isinstance(want, str) or not hmac.compare_digest(
                sent.encode(), want.encode()):
            raise _Refused(403, "refused.csrf")
        for k, v in form.multi_items():
            if not isinstance(v, str):
                raise _Refused(400, "refused.bad_form")
            if len(v) > MAX_TEXT:
                raise _Refused(413, "refused.too_long")
            del k
        return form

    async def _page(self, request: Request, template: str,
                    work: Callable[[CaseService, sqlite3.Connection, User], dict[str, Any]],
                    error: dict[str, str] | None = None, status: int = 200) -> Response:
        def run(svc: CaseService, conn: sqlite3.Connection) -> tuple[User | None, Any]:
            user = self._user(svc, request)
            if user is None:
                return None, None
            try:
                return user, work(svc, conn, user)
            except ManagerError as e:
                return user, e
        user, ctx = await self._db(run)
        if user is None:
            return self._to_login(request)
        if isinstance(ctx, ManagerError):
            return self._render(request, "error.html", {"error": self._error(request, ctx)},
                                _STATUS.get(ctx.reason, 400), user)
        return self._render(request, template, {**ctx, "error": error}, status, user)

    async def _act(self, request: Request,
                   do: Callable[[CaseService, User, FormData], str],
                   back: Callable[[Request, dict[str, str], int], Awaitable[Response]]) -> Response:
        """A POST: the form (size, CSRF), the signed-in user, the action through the service.
        Success: 303 to the page (with a flash); refusal: the page again with the reason."""
        try:
            form = await self._form(request)
        except _Refused as r:
            return self._refusal(request, r, None)

        def run(svc: CaseService, conn: sqlite3.Connection) -> tuple[User | None, Any]:
            user = self._user(svc, request)
            if user is None:
                return None, None
            try:
                return user, do(svc, user, form)
            except ManagerError as e:
                return user, e
        user, res = await self._db(run)
        if user is None:
            return self._to_login(request)
        if isinstance(res, ManagerError):
            _LOG.info("ui: %s refused for %s: %s", request.url.path, user.username, res)
            return await back(request, self._error(request, res), _STATUS.get(res.reason, 400))
        request.session["flash"] = "flash.done"
        return RedirectResponse(res, 303, headers=_HEADERS)

    # pages ---------------------------------------------------------------------------------
    async def css(self, request: Request) -> Response:
        return Response(self.css_text, media_type="text/css",
                        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options":
                                 "nosniff"})

    async def home(self, request: Request) -> Response:
        return RedirectResponse(request.url_for("cases").path, 303, headers=_HEADERS)

    async def set_lang(self, request: Request) -> Response:
        lang = request.query_params.get("to", "")
        if lang in i18n.LANGS:
            request.session["lang"] = lang
        return RedirectResponse(_safe_next(request.query_params.get("next"),
                                           request.url_for("cases").path), 303, headers=_HEADERS)

    async def login_form(self, request: Request) -> Response:
        return self._render(request, "login.html", {
            "next": _safe_next(request.query_params.get("next"), ""), "error": None,
            "username": ""})

    async def login(self, request: Request) -> Response:
        try:
            form = await self._form(request)
        except _Refused as r:
            return self._refusal(request, r, None)
        username = str(form.get("username", "")).strip()
        password = str(form.get("password", ""))
        nxt = _safe_next(str(form.get("next", "")), request.url_for("cases").path)
        key = (username.lower(), request.client.host if request.client else "")
        wait_ms = self.throttle.retry_after_ms(key, self.s.clock_ms())
        if wait_ms > 0:
            _LOG.warning("ui: sign-in of %r from %s throttled", username, key[1])
            text = i18n.t(self._lang(request), "err.throttled", minutes=-(-wait_ms // 60_000))
            return self._render(request, "login.html", {
                "next": nxt, "error": {"text": text, "detail": ""}, "username": username}, 429)

        def run(svc: CaseService, conn: sqlite3.Connection) -> tuple[User, str] | ManagerError:
            try:
                user = svc.authenticate(username, password)
            except ManagerError as e:
                return e
            return user, session_stamp(conn, user.username) or ""
        res = await self._db(run)
        if isinstance(res, ManagerError):
            self.throttle.failed(key, self.s.clock_ms())
            _LOG.info("ui: sign-in refused for %r", username)
            return self._render(request, "login.html", {
                "next": nxt, "error": self._error(request, res), "username": username},
                _STATUS.get(res.reason, 400))
        self.throttle.succeeded(key)
        user, stamp = res
        lang = request.session.get("lang")
        request.session.clear()  # a new session (and CSRF token) at every sign-in
        if lang:
            request.session["lang"] = lang
        request.session["user"] = user.username
        request.session["stamp"] = stamp
        request.session["csrf"] = secrets.token_urlsafe(32)
        _LOG.info("ui: %s signed in", user.username)
        return RedirectResponse(nxt, 303, headers=_HEADERS)

    async def logout(self, request: Request) -> Response:
        try:
            await self._form(request)
        except _Refused as r:
            return self._refusal(request, r, None)
        lang = request.session.get("lang")
        request.session.clear()
        if lang:
            request.session["lang"] = lang
        request.session["flash"] = "flash.signed_out"
        return RedirectResponse(request.url_for("login").path, 303, headers=_HEADERS)

    async def cases(self, request: Request, error: dict[str, str] | None = None,
                    status: int = 200) -> Response:
        q = request.query_params
        window, state = q.get("window", ""), q.get("state", "active")
        lang, today, tz = self._lang(request), self._today(), self.s.tz

        def work(svc: CaseService, conn: sqlite3.Connection, user: User) -> dict[str, Any]:
            cases = svc.list(user.username)  # overdue first
            cache: views.NameCache = {}
            shown = [views.case_row(conn, c, today, tz, lang, cache) for c in cases
                     if (not window or c.window == window) and (
                         state == "all" or c.state == state
                         or (state == "active" and c.state in views.ACTIVE_STATES))]
            windows = sorted((w, lookup(conn, user.hall, w).window)
                             for w in {c.window for c in cases})
            return {"rows": shown, "windows": windows, "window": window, "state": state,
                    "states": views.STATES, "today": today.isoformat(),
                    "overdue": sum(1 for c in cases if c.overdue(today))}
        return await self._page(request, "cases.html", work, error, status)

    async def case(self, request: Request, error: dict[str, str] | None = None,
                   status: int = 200) -> Response:
        case_id = int(request.path_params["case_id"])
        lang, today, tz = self._lang(request), self._today(), self.s.tz

        def work(svc: CaseService, conn: sqlite3.Connection, user: User) -> dict[str, Any]:
            row = views.case_row(conn, svc.get(user.username, case_id), today, tz, lang)
            appeals = views.appeals_of_case(conn, user, case_id, tz)
            return {"row": row, "steps": views.steps_of_case(conn, case_id, tz),
                    "here": request.url_for("case", case_id=case_id).path,
                    "appeals": appeals,
                    "pending": any(a.state == "pending" for a in appeals)}
        return await self._page(request, "case.html", work, error, status)

    async def case_action(self, request: Request) -> Response:
        case_id = int(request.path_params["case_id"])
        step = request.path_params["step"]
        back_to = request.url_for("case", case_id=case_id).path

        def do(svc: CaseService, user: User, form: FormData) -> str:
            text = str(form.get("text", ""))
            u = user.username
            if step == "verify":
                svc.verify(u, case_id, text)
            elif step == "rectify":
                svc.rectify(u, case_id, text)
            elif step == "callback":
                reached = form.get("reached")
                if reached not in ("yes", "no"):
                    raise ManagerError("empty", "say whether the citizen was reached")
                svc.callback(u, case_id, reached == "yes", text)
            elif step == "close":
                svc.close(u, case_id)
            elif step == "appeal":
                svc.file_appeal(u, case_id, text)
            else:
                raise ManagerError("not_found", f"no step {step!r}")
            return back_to

        async def back(req: Request, err: dict[str, str], status: int) -> Response:
            return await self.case(req, err, status)
        return await self._act(request, do, back)

    async def appeals(self, request: Request, error: dict[str, str] | None = None,
                      status: int = 200) -> Response:
        tz = self.s.tz

        def work(svc: CaseService, conn: sqlite3.Connection, user: User) -> dict[str, Any]:
            pending, decided = views.pending_appeals(conn, user, tz)
            return {"pending": pending, "decided": decided,
                    "here": request.url_for("appeals").path}
        return await self._page(request, "appeals.html", work, error, status)

    async def decide(self, request: Request) -> Response:
        appeal_id = int(request.path_params["appeal_id"])
        back_to = request.url_for("appeals").path

        def do(svc: CaseService, user: User, form: FormData) -> str:
            decision = form.get("decision")
            if decision not in ("approve", "refuse"):
                raise ManagerError("empty", "choose approve or refuse")
            svc.decide_appeal(user.username, appeal_id, decision == "approve",
                              str(form.get("note", "")).strip())
            return back_to

        async def back(req: Request, err: dict[str, str], status: int) -> Response:
            return await self.appeals(req, err, status)
        return await self._act(request, do, back)

    async def directory(self, request: Request) -> Response:
        def work(svc: CaseService, conn: sqlite3.Connection, user: User) -> dict[str, Any]:
            return {"d": views.directory(conn, user)}
        return await self._page(request, "directory.html", work)


def _quote(s: str) -> str:
    from urllib.parse import quote

    return quote(s, safe="/")


def _safe_next(nxt: str | None, default: str) -> str:
    """A redirect target from the request: a path on this site only (no `//host`, no scheme)."""
    if nxt and nxt.startswith("/") and not nxt.startswith("//") and "\\" not in nxt \
            and not any(ord(ch) < 32 for ch in nxt):
        return nxt
    return default
