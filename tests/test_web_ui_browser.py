"""Issue 17 item 3: the hall manager's web UI end to end in headless Chromium (Debian's package,
driven by Playwright; no browser is downloaded). The UI runs on a real uvicorn, mounted at /ui.

Screenshots go to $EVALTERM_UI_SHOTS if set, else to the test's tmp_path; their paths are
printed (pytest -s shows them)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_helpers import PASSWORD, seed, serve

from collector.db import connect
from collector.manager import audit

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="needs Debian's chromium package (scripts/setup.sh installs it)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip, pinned)")


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("EVALTERM_UI_SHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def hall(tmp_path: Path) -> Iterator[tuple[str, dict[str, int], Path]]:
    db = tmp_path / "state.db"
    ids = seed(db)
    with serve(db) as base:
        yield base, ids, db


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def _page(browser: Any, lang: str = "zh-CN") -> Any:
    ctx = browser.new_context(locale=lang, viewport={"width": 1280, "height": 900})
    return ctx.new_page()


def _shot(page: Any, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def _sign_in(page: Any, base: str, user: str) -> None:
    page.goto(f"{base}/cases")
    assert "/login" in page.url  # not signed in: sent to the sign-in page
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(re.compile(r".*/ui/cases$"))
    assert user in page.inner_text("#who")


def _sign_out(page: Any) -> None:
    page.click("#signout")
    page.wait_for_url(re.compile(r".*/ui/login$"))
    assert page.inner_text("#flash") == "已退出登录。"
    page.goto(page.url.replace("/login", "/cases"))
    assert "/login" in page.url  # the session is gone


def test_manager_day(hall: tuple[str, dict[str, int], Path], browser: Any, shots: Path) -> None:
    base, ids, db = hall
    page = _page(browser)
    page.goto(f"{base}/login")
    _shot(page, shots, "01-login")
    page.fill("#username", "zhang")
    page.fill("#password", "wrong-password")
    page.click("#login-submit")
    assert page.inner_text("#error") == "用户名或密码错误。"

    _sign_in(page, base, "zhang")
    # The case list: overdue first, with its deadline, names instead of ids.
    first = page.locator("#cases tbody tr").first
    assert first.get_attribute("data-case") == str(ids["overdue"])
    assert "overdue" in (first.get_attribute("class") or "")
    assert "逾期" in first.inner_text() and "陈静" in first.inner_text()
    assert "综合受理 2 号窗口" in first.inner_text()
    assert page.locator("#cases tbody tr").count() == 3
    _shot(page, shots, "02-cases")
    # Filter by window: only w01's case.
    page.select_option("#filter-window", "w01")
    page.click("#filters button")
    rows = page.locator("#cases tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-case") == str(ids["staff_s7"])
    page.goto(f"{base}/cases")

    # The overdue case: the 差评 and the steps so far, then 核实 -> 整改 -> 回访 -> 办结.
    first.locator("a.case-link").click()
    page.wait_for_url(re.compile(rf".*/cases/{ids['overdue']}$"))
    assert page.inner_text("#level") == "1 · 非常不满意"
    assert page.inner_text("#reason") == "等候时间长"
    assert page.inner_text("#window") == "综合受理 2 号窗口"
    assert page.inner_text("#staff").startswith("陈静")
    assert page.inner_text("#txn") == "BJ20261101-0003"
    assert "立案" in page.inner_text("#steps")
    _shot(page, shots, "03-case-open")
    page.fill("#text", "调取录像：窗口等候 48 分钟，叫号系统故障")
    page.click("#submit-verify")
    assert page.inner_text("#flash") == "已保存，并已记入审计日志。"
    assert page.inner_text("#state") == "已核实"
    page.fill("#text", "维修叫号系统，增设高峰期弹性窗口")
    page.click("#submit-rectify")
    assert page.inner_text("#state") == "已整改"
    page.check("#reached-yes")
    page.fill("#text", "群众表示满意")
    page.click("#submit-callback")
    assert page.inner_text("#state") == "已回访"
    steps = page.inner_text("#steps")
    for word in ("核实", "整改", "回访", "zhang", "叫号系统故障", "已联系到", "群众表示满意"):
        assert word in steps
    _shot(page, shots, "04-case-called-back")
    page.click("#submit-close")
    assert page.inner_text("#state") == "已办结"
    assert page.inner_text("#finished") == "本案件已结束。"

    # An appeal on the case of staff member s7, who is manager li: the window lead files it, li
    # may not decide it (the staff member concerned), zhang (a second manager) approves it.
    _sign_out(page)
    _sign_in(page, base, "wang")  # the window lead files the appeal
    page.goto(f"{base}/cases/{ids['staff_s7']}")
    page.fill("#grounds", "群众误按，已电话确认")
    page.click("#submit-appeal")
    assert "本案件有待审批的申诉" in page.inner_text("#appeal")
    page.goto(f"{base}/appeals")
    assert page.locator("form.decide").count() == 0  # a lead does not decide appeals
    _sign_out(page)

    _sign_in(page, base, "li")  # the staff member concerned, a manager too
    page.goto(f"{base}/appeals")
    card = page.locator(".appeal").first
    card.locator(".note-text").fill("我同意")
    card.locator("button.approve").click()
    assert page.inner_text("#error") == ("申诉须由第二人审批：提出申诉的人和被评价的工作人员"
                                         "本人都不能审批。")
    _shot(page, shots, "05-appeal-refused-for-staff-concerned")
    _sign_out(page)

    _sign_in(page, base, "zhang")  # a second manager approves
    page.goto(f"{base}/appeals")
    assert "群众误按，已电话确认" in page.inner_text(".appeal")
    _shot(page, shots, "06-appeals")
    card = page.locator(".appeal").first
    card.locator(".note-text").fill("核实录像，确系误按")
    card.locator("button.approve").click()
    assert page.inner_text("#flash") == "已保存，并已记入审计日志。"
    assert page.inner_text("#no-appeals") == "没有待审批的申诉。"
    assert "zhang" in page.inner_text("#decided") and "已批准" in page.inner_text("#decided")
    page.goto(f"{base}/cases/{ids['staff_s7']}")
    assert page.inner_text("#state") == "已撤销（申诉通过）"
    assert "申诉批准，差评撤销" in page.inner_text("#steps")

    page.goto(f"{base}/directory")
    assert "李明" in page.inner_text("#dir-staff") and "A0107" in page.inner_text("#dir-staff")
    assert "居民身份证换领" in page.inner_text("#dir-windows")
    _shot(page, shots, "07-directory")
    page.click("#lang-switch")
    assert page.inner_text("h1") == "Directory"
    page.goto(f"{base}/cases?state=all")
    assert page.inner_text("h1") == "Follow-up cases"
    assert "closed" in page.inner_text("#cases") and "voided" in page.inner_text("#cases")
    _shot(page, shots, "08-cases-english")
    page.click("#lang-switch")
    _sign_out(page)

    # Every step went through the service: the audit log has who did what, and verifies.
    conn = connect(db)
    trail = conn.execute("SELECT actor, action FROM mgr_audit WHERE subject=? ORDER BY seq",
                         (f"case:{ids['overdue']}",)).fetchall()
    assert trail == [("system", "case.open"), ("zhang", "case.verify"),
                     ("zhang", "case.rectify"), ("zhang", "case.callback"),
                     ("zhang", "case.close")]
    trail = conn.execute("SELECT actor, action FROM mgr_audit WHERE subject=? ORDER BY seq",
                         (f"case:{ids['staff_s7']}",)).fetchall()
    assert trail == [("system", "case.open"), ("wang", "appeal.file"),
                     ("zhang", "appeal.approve")]
    assert audit.verify(conn).ok
    conn.close()


def test_inspector_and_bad_csrf_refused(hall: tuple[str, dict[str, int], Path],
                                        browser: Any, shots: Path) -> None:
    base, ids, db = hall
    page = _page(browser)
    _sign_in(page, base, "zhao")  # the inspector (督查) sees everything...
    page.goto(f"{base}/cases/{ids['overdue']}")
    assert "只读" in page.inner_text("#readonly")
    assert page.locator("form#form-verify").count() == 0  # ...and is offered no form
    assert page.locator("form#form-appeal").count() == 0
    _shot(page, shots, "09-inspector-case")
    # A POST made by hand from the inspector's own session (a valid CSRF token) is refused.
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    resp = page.request.post(f"{base}/cases/{ids['overdue']}/verify",
                             form={"csrf": csrf, "text": "inspector was here"}, max_redirects=0)
    assert resp.status == 403
    assert "您的角色无权办理此事项" in resp.text()
    page.set_content(resp.text())
    _shot(page, shots, "10-inspector-post-refused")
    _sign_out(page)

    # A manager's form with a forged CSRF token: refused before anything is done.
    _sign_in(page, base, "zhang")
    page.goto(f"{base}/cases/{ids['overdue']}")
    page.eval_on_selector("#form-verify input[name=csrf]", "e => e.value = 'forged'")
    page.fill("#text", "this must not be recorded")
    page.click("#submit-verify")
    assert "安全校验失败" in page.inner_text("#refused")
    _shot(page, shots, "11-bad-csrf-refused")
    page.goto(f"{base}/cases/{ids['overdue']}")
    assert page.inner_text("#state") == "待核实"
    conn = connect(db)
    n = conn.execute("SELECT count(*) FROM mgr_audit WHERE action='case.verify'").fetchone()[0]
    conn.close()
    assert n == 0
