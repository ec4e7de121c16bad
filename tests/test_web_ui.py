"""Issue 17 item 3: the web UI's rules over real HTTP (uvicorn, no browser): sessions, CSRF,
roles, refusals as 4xx pages, languages, the string catalogue; and `evalterm user ...`.
The end-to-end scenario in Chromium is tests/test_web_ui_browser.py."""

from __future__ import annotations

import http.cookiejar
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_helpers import PASSWORD, seed, serve

from collector.db import connect
from collector.manager import audit
from collector.web.ui import i18n


class Browserless:
    """A cookie-keeping HTTP client that does not follow redirects."""

    def __init__(self, base: str, lang: str = "zh-CN") -> None:
        self.base, self.lang = base, lang
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a: Any, **k: Any) -> None:
                return None
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  NoRedirect())
        self.headers: dict[str, str] = {}

    def request(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        data = None if form is None else urllib.parse.urlencode(form).encode()
        req = urllib.request.Request(self.base + path, data=data,
                                     headers={"Accept-Language": self.lang})
        try:
            with self.opener.open(req) as r:
                self.headers = dict(r.headers)
                self.set_cookies = r.headers.get_all("set-cookie") or []
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            self.headers = dict(e.headers)
            self.set_cookies = e.headers.get_all("set-cookie") or []
            return e.code, e.read().decode()

    def csrf(self, path: str = "/login") -> str:
        status, html = self.request(path)
        assert status == 200, (status, html)
        m = re.search(r'name="csrf" value="([^"]+)"', html)
        assert m, html
        return m.group(1)

    def sign_in(self, user: str, password: str = PASSWORD, nxt: str = "") -> tuple[int, str]:
        return self.request("/login", {"csrf": self.csrf(), "username": user,
                                       "password": password, "next": nxt})


@pytest.fixture
def hall(state_target: str) -> Iterator[tuple[str, dict[str, int], Path]]:
    """The UI over a seeded hall, on SQLite and on PostgreSQL (the "path" then a URL)."""
    db: Any = state_target if "://" in state_target else Path(state_target)
    ids = seed(db)
    with serve(db) as base:
        yield base, ids, db


def _audit_count(db: Path) -> int:
    conn = connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM mgr_audit").fetchone()[0])
    finally:
        conn.close()


def test_session_cookie_and_headers(hall: tuple[str, dict[str, int], Path]) -> None:
    base, _, _ = hall
    c = Browserless(base)
    status, _ = c.request("/cases")
    assert status == 303 and c.headers["location"] == "/ui/login?next=/ui/cases"
    c.csrf()
    cookie = c.set_cookies[0].lower()
    assert cookie.startswith("evalterm_ui=") and "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie  # https_only is off in this test: plain http
    assert "frame-ancestors 'none'" in c.headers["content-security-policy"]
    status, _ = c.sign_in("zhang")
    assert status == 303 and c.headers["location"] == "/ui/cases"
    status, html = c.request("/cases")
    assert status == 200 and "zhang（大厅负责人，h1）" in html


def test_bad_sign_in_and_open_redirect(hall: tuple[str, dict[str, int], Path]) -> None:
    base, _, _ = hall
    c = Browserless(base)
    status, html = c.sign_in("zhang", "not-the-password")
    assert status == 401 and "用户名或密码错误。" in html
    status, html = c.sign_in("nobody")
    assert status == 401 and "用户名或密码错误。" in html
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        c = Browserless(base)
        status, _ = c.sign_in("zhang", nxt=evil)
        assert status == 303 and c.headers["location"] == "/ui/cases", evil
    c = Browserless(base)
    status, _ = c.sign_in("zhang", nxt="/ui/directory")
    assert c.headers["location"] == "/ui/directory"


def test_csrf_refused_on_every_post(hall: tuple[str, dict[str, int], Path]) -> None:
    base, ids, db = hall
    c = Browserless(base)
    c.csrf()
    status, html = c.request("/login", {"username": "zhang", "password": PASSWORD})
    assert status == 403 and "安全校验失败" in html  # sign-in needs the token too
    c.sign_in("zhang")
    before = _audit_count(db)
    cid = ids["overdue"]
    for path, form in ((f"/cases/{cid}/verify", {"text": "x"}),
                       (f"/cases/{cid}/appeal", {"text": "x"}),
                       ("/appeals/1/decide", {"decision": "approve"}),
                       ("/logout", {})):
        for token in (None, "", "forged-token-forged-token-forged-token"):
            f = dict(form) if token is None else {**form, "csrf": token}
            status, html = c.request(path, f)
            assert status == 403 and "安全校验失败" in html, (path, token)
    assert _audit_count(db) == before
    status, html = c.request("/cases")
    assert status == 200 and "zhang" in html  # still signed in: the forged sign-out did nothing


def test_roles_and_refusals_are_pages_not_500(hall: tuple[str, dict[str, int], Path]) -> None:
    base, ids, db = hall
    cid = ids["overdue"]
    insp = Browserless(base)
    insp.sign_in("zhao")
    status, html = insp.request(f"/cases/{cid}")
    assert status == 200 and "form-verify" not in html and "只读" in html
    before = _audit_count(db)
    tok = insp.csrf(f"/cases/{cid}")
    for step in ("verify", "appeal", "close"):
        status, html = insp.request(f"/cases/{cid}/{step}", {"csrf": tok, "text": "x"})
        assert status == 403 and "您的角色无权办理此事项" in html, step
    assert _audit_count(db) == before

    lead = Browserless(base)
    lead.sign_in("wang")
    tok = lead.csrf(f"/cases/{cid}")
    status, html = lead.request(f"/cases/{cid}/rectify", {"csrf": tok, "text": "too early"})
    assert status == 409 and "案件当前的状态不允许这一步" in html
    status, html = lead.request(f"/cases/{cid}/verify", {"csrf": tok, "text": "  "})
    assert status == 400 and "请填写必填内容" in html
    status, html = lead.request(f"/cases/{cid}/callback", {"csrf": tok, "text": "x"})
    assert status == 400  # neither reached nor not reached chosen
    status, html = lead.request(f"/cases/{cid}/verify", {"csrf": tok, "text": "x" * 2001})
    assert status == 413 and "过长" in html
    status, html = lead.request(f"/cases/{cid}/frobnicate", {"csrf": tok, "text": "x"})
    assert status == 404
    status, html = lead.request(f"/cases/{cid}/verify", {"csrf": tok, "text": "属实"})
    assert status == 303
    status, html = lead.request("/cases/999")
    assert status == 404 and "找不到该记录" in html

    other = Browserless(base)  # a manager of another hall
    other.sign_in("other")
    status, html = other.request(f"/cases/{cid}")
    assert status == 403
    status, html = other.request("/cases")
    assert status == 200 and "BJ20261101-0003" not in html

    mgr = Browserless(base)
    mgr.sign_in("zhang")
    tok = mgr.csrf("/appeals")
    status, _ = mgr.request(f"/cases/{cid}/appeal", {"csrf": tok, "text": "误按"})
    assert status == 303
    status, html = mgr.request("/appeals/1/decide", {"csrf": tok, "decision": "approve"})
    assert status == 409 and "申诉须由第二人审批" in html  # the filer may not decide it
    status, html = mgr.request("/appeals/1/decide", {"csrf": tok, "decision": "maybe"})
    assert status == 400
    conn = connect(db)
    assert audit.verify(conn).ok
    assert conn.execute("SELECT state FROM mgr_appeal").fetchall() == [("pending",)]
    conn.close()


def test_languages(hall: tuple[str, dict[str, int], Path]) -> None:
    base, _, _ = hall
    en = Browserless(base, lang="en-GB,en;q=0.9,zh;q=0.5")
    status, html = en.request("/login")
    assert '<html lang="en">' in html and "Sign in" in html
    en.sign_in("zhang")
    status, html = en.request("/cases")
    assert "Follow-up cases" in html and "overdue by" in html
    status, _ = en.request("/lang?to=zh&next=/ui/cases")
    assert status == 303 and en.headers["location"] == "/ui/cases"
    status, html = en.request("/cases")
    assert "整改案件" in html and "逾期" in html  # the choice beats Accept-Language
    status, _ = en.request("/lang?to=en&next=//evil.example")
    assert en.headers["location"] == "/ui/cases"
    status, html = en.request("/cases?window=w01&state=all")  # the switch keeps the filter
    assert 'href="/ui/lang?to=zh&amp;next=/ui/cases%3Fwindow%3Dw01%26state%3Dall"' in html
    tok = en.csrf("/cases/1")
    status, html = en.request("/cases/1/rectify", {"csrf": tok, "text": "too early"})
    assert status == 409 and 'next=/ui/cases/1"' in html  # after a POST: back to the case


@pytest.mark.parametrize(("chosen", "accept", "lang"), [
    (None, None, "zh"),
    (None, "", "zh"),
    (None, "en", "en"),
    (None, "en-US,en;q=0.9", "en"),
    (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh"),
    (None, "fr-FR,fr;q=0.9,en;q=0.5", "en"),
    (None, "de", "zh"),
    (None, "zh;q=0.2,en;q=0.8", "en"),
    (None, "en;q=0", "zh"),
    (None, "en;q=bogus", "zh"),
    ("en", "zh-CN", "en"),
    ("zh", "en", "zh"),
    ("xx", "en", "en"),
])
def test_negotiate(chosen: str | None, accept: str | None, lang: str) -> None:
    assert i18n.negotiate(chosen, accept) == lang


def test_catalogue_covers_the_templates() -> None:
    templates = Path(i18n.__file__).parent / "templates"
    used: set[str] = set()
    for f in templates.glob("*.html"):
        used |= set(re.findall(r"\bt\('([a-z_.]+)'", f.read_text(encoding="utf-8")))
    assert used, "no t('...') found: the pattern no longer matches the templates"
    prefixes = {"role.", "state.", "level.", "step.", "appeal.state.", "err.", "refused.",
                "flash."}
    assert sorted(k for k in used if k not in i18n.MESSAGES and k not in prefixes) == []
    # The keys the templates build from data (a role, a state, a level, an audit action).
    from collector.manager.cases import ROLES
    from collector.web.ui.views import STATES

    built = ([f"role.{r}" for r in ROLES] + [f"state.{s}" for s in STATES]
             + [f"level.{n}" for n in range(1, 6)]
             + [f"appeal.state.{s}" for s in ("pending", "approved", "refused")]
             + [f"step.{a}" for a in ("case.open", "case.verify", "case.rectify",
                                      "case.callback", "case.close", "appeal.file",
                                      "appeal.approve", "appeal.refuse")])
    assert [k for k in built if k not in i18n.MESSAGES] == []
    for key, (zh, en) in i18n.MESSAGES.items():
        assert zh and en, key
        assert sorted(re.findall(r"\{(\w+)\}", zh)) == sorted(re.findall(r"\{(\w+)\}", en)), key


def _cli(db: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector.cli", *args, "--state-db", str(db)],
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_user_cli(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    connect(db).close()
    r = _cli(db, "user", "add", "zhang", "--role", "manager", "--hall", "h1",
             stdin="long-enough-pw\n")
    assert r.returncode == 0 and "user zhang added (manager, hall h1)" in r.stdout, r.stderr
    r = _cli(db, "user", "add", "li", "--role", "manager", "--hall", "h1", "--staff-id", "s7",
             stdin="another-password\n")
    assert r.returncode == 0, r.stderr
    for args, stdin, words in (
            (("add", "zhang", "--role", "lead", "--hall", "h1"), "long-enough-pw\n", "exists"),
            (("add", "wu", "--role", "lead", "--hall", "h1"), "short\n", "at least 8"),
            (("passwd", "nobody"), "long-enough-pw\n", "no user"),
    ):
        r = _cli(db, "user", *args, stdin=stdin)
        assert r.returncode == 2 and words in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = _cli(db, "user", "add", "wu", "--role", "boss", "--hall", "h1", stdin="x" * 9 + "\n")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = _cli(tmp_path / "absent.db", "user", "list")
    assert r.returncode == 2 and "no state database" in r.stderr
    r = _cli(db, "user", "list")
    assert r.stdout.splitlines() == ["li\tmanager\th1\ts7", "zhang\tmanager\th1\t"]
    r = _cli(db, "user", "passwd", "zhang", stdin="a-new-password\n")
    assert r.returncode == 0, r.stderr

    from collector.clock import now_ms
    from collector.manager import ManagerError
    from collector.manager.cases import CaseService
    from collector.manager.deadlines import DeadlineRule

    conn = connect(db)
    svc = CaseService(conn, DeadlineRule(), now_ms)
    assert svc.authenticate("zhang", "a-new-password").role == "manager"
    with pytest.raises(ManagerError):
        svc.authenticate("zhang", "long-enough-pw")
    actions = [a for (a,) in conn.execute("SELECT action FROM mgr_audit ORDER BY seq")]
    assert actions == ["user.add", "user.add", "user.password"]
    assert audit.verify(conn).ok
    conn.close()


def test_login_throttle_core() -> None:
    from collector.web.ui.throttle import LoginThrottle

    th, k = LoginThrottle(max_failures=3, window_ms=1000, max_keys=2), ("zhang", "10.0.0.1")
    for t in (0, 100, 200):
        assert th.retry_after_ms(k, t) == 0
        th.failed(k, t)
    assert th.retry_after_ms(k, 300) == 700  # until the oldest of the 3 failures is 1 s old
    assert th.retry_after_ms(("zhang", "10.0.0.2"), 300) == 0  # another address
    assert th.retry_after_ms(k, 999) == 1
    assert th.retry_after_ms(k, 1000) == 0  # the failure at 0 has left the window
    th.failed(k, 1000)  # failures at 100, 200, 1000: refused until 100 leaves the window
    assert th.retry_after_ms(k, 1000) == 100
    th.succeeded(k)
    assert th.retry_after_ms(k, 1000) == 0
    for i in range(5):  # bounded memory: only max_keys keys are kept
        th.failed((f"u{i}", "a"), 0)
    assert len(th._fails) == 2
    with pytest.raises(ValueError):
        LoginThrottle(max_failures=0)


def test_sign_in_throttled_and_password_change_signs_out(
        hall: tuple[str, dict[str, int], Path]) -> None:
    base, _, db = hall
    kept = Browserless(base)
    assert kept.sign_in("li")[0] == 303
    c = Browserless(base)
    for _ in range(5):
        assert c.sign_in("li", "guess-guess-guess")[0] == 401
    status, html = c.sign_in("li")  # the right password, but too many failures just now
    assert status == 429 and "登录失败次数过多，请 15 分钟后再试。" in html
    assert Browserless(base).sign_in("zhang")[0] == 303  # another user is not affected
    assert kept.request("/cases")[0] == 200  # nor a session signed in before

    from collector.clock import now_ms
    from collector.manager.cases import CaseService
    from collector.manager.deadlines import DeadlineRule
    from collector.manager.users import set_password

    conn = connect(db)
    set_password(CaseService(conn, DeadlineRule(), now_ms), "admin", "li", "a-brand-new-pw")
    conn.close()
    status, _ = kept.request("/cases")
    assert status == 303 and "/ui/login" in kept.headers["location"]  # signed out by the change
