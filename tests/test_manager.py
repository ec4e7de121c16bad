"""Issue 17: the deadline rule, the hash-chained audit log, cases and appeals (real SQLite)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from collector.db import connect
from collector.manager import ManagerError, audit
from collector.manager.cases import CaseService
from collector.manager.deadlines import Calendar, DeadlineRule, add_working_days, load_calendar

# 2026 National Day: Oct 1-8 off, Sat Sep 27 and Sat Oct 10 are make-up working days (调休).
HOLIDAYS = """# date,kind
2026-10-01,off
2026-10-02,off
2026-10-05,off
2026-10-06,off
2026-10-07,off
2026-10-08,off
2026-09-27,work
2026-10-10,work
"""


@pytest.fixture
def cal(tmp_path: Path) -> Calendar:
    p = tmp_path / "holidays.csv"
    p.write_text(HOLIDAYS, encoding="utf-8")
    return load_calendar(p)


@pytest.mark.parametrize(("start", "days", "due"), [
    ("2026-11-02", 1, "2026-11-03"),   # Monday -> Tuesday
    ("2026-11-06", 1, "2026-11-09"),   # Friday -> Monday (weekend skipped)
    ("2026-11-06", 5, "2026-11-13"),
    ("2026-11-07", 1, "2026-11-09"),   # opened on a Saturday
    ("2026-09-25", 1, "2026-09-27"),   # Friday -> Sunday Sep 27, a make-up working day
    ("2026-09-30", 1, "2026-10-09"),   # National Day skipped
    ("2026-09-30", 2, "2026-10-10"),   # make-up Saturday counts
    ("2026-09-30", 3, "2026-10-12"),
    ("2026-10-03", 15, "2026-10-28"),
])
def test_working_days(cal: Calendar, start: str, days: int, due: str) -> None:
    assert add_working_days(date.fromisoformat(start), days, cal) == date.fromisoformat(due)


def test_per_hall_override_and_bad_calendar(cal: Calendar, tmp_path: Path) -> None:
    rule = DeadlineRule(default_days=5, per_hall={"h2": 2}, calendar=cal)
    assert rule.due("h1", date(2026, 11, 2)) == date(2026, 11, 9)
    assert rule.due("h2", date(2026, 11, 2)) == date(2026, 11, 4)
    bad = tmp_path / "bad.csv"
    bad.write_text("2026-13-01,off\n", encoding="utf-8")
    with pytest.raises(ManagerError) as e:
        load_calendar(bad)
    assert e.value.reason == "bad_calendar" and "bad.csv:1" in str(e.value)


class Clock:
    def __init__(self) -> None:
        self.ms = 1_793_000_000_000  # 2026-10-26 15:33 Beijing (a Monday)

    def __call__(self) -> int:
        return self.ms


def _bad_txn(conn: sqlite3.Connection, txn: str, staff: str, level: int, ms: int) -> None:
    conn.execute("INSERT INTO txn (hall, txn, window, staff_id, service_code, started_ms, "
                 "completed_ms, outcome, deadline_ms, state, rating_id, level) "
                 "VALUES ('h1', ?, 'w01', ?, 'S1', ?, ?, 'done', ?, 'rated', ?, ?)",
                 (txn, staff, ms - 60_000, ms, ms + 1, f"d:1:{txn}", level))
    conn.execute("INSERT INTO rating (rating_id, hall, window, device, boot, seq, level, reason, "
                 "mode, press_ms, received_ms, state, txn) VALUES (?, 'h1', 'w01', 'd', 1, 1, ?, "
                 "'attitude', 'linked', ?, ?, 'linked', ?)", (f"d:1:{txn}", level, ms, ms, txn))


# The test opens the SQLite file itself (the CLI's --state-db, sqlite3 as an attacker would).
_SQLITE_FILE = pytest.mark.parametrize("state_target", ["sqlite"], indirect=True)


@pytest.fixture
def svc(state_target: str) -> CaseService:
    """On SQLite ({tmp_path}/state.db) and PostgreSQL; tests that open the file itself are
    parametrized to SQLite alone."""
    conn = connect(state_target)
    clock = Clock()
    s = CaseService(conn, DeadlineRule(default_days=3), clock)
    for name, role, staff in (("mgr", "manager", None), ("mgr2", "manager", "s7"),
                              ("lead", "lead", None), ("insp", "inspector", None)):
        s.add_user("admin", name, role, "h1", "secret-password", staff)
    _bad_txn(conn, "T1", "s7", 1, clock.ms)
    _bad_txn(conn, "T2", "s8", 2, clock.ms)
    _bad_txn(conn, "T3", "s8", 5, clock.ms)  # a good rating: no case
    return s


def test_cases_steps_roles_and_appeal(svc: CaseService) -> None:
    ids = svc.open_cases()
    assert len(ids) == 2 and svc.open_cases() == []  # idempotent
    c1, c2 = ids
    with pytest.raises(ManagerError) as e:
        svc.verify("insp", c1, "looked")
    assert e.value.reason == "forbidden"
    with pytest.raises(ManagerError) as e:
        svc.rectify("lead", c1, "x")
    assert e.value.reason == "state"
    svc.verify("lead", c1, "staff was curt")
    svc.rectify("lead", c1, "talked to staff")
    svc.callback("lead", c1, True, "满意")
    with pytest.raises(ManagerError):
        svc.close("lead", c1)
    assert svc.close("mgr", c1).state == "closed"
    with pytest.raises(ManagerError):
        svc.authenticate("mgr", "wrong-password")
    assert svc.authenticate("mgr", "secret-password").role == "manager"

    # appeal on T1's... case c2 (staff s8): filer cannot decide; nor can staff concerned
    a = svc.file_appeal("mgr", c2, "citizen pressed by mistake, confirmed by phone")
    with pytest.raises(ManagerError) as e:
        svc.decide_appeal("mgr", a, True, "")
    assert e.value.reason == "conflict"
    with pytest.raises(ManagerError) as e:
        svc.decide_appeal("lead", a, True, "")
    assert e.value.reason == "forbidden"
    assert svc.decide_appeal("mgr2", a, True, "checked the recording").state == "voided"


def test_staff_concerned_cannot_decide(svc: CaseService) -> None:
    c1 = svc.open_cases()[0]  # T1 concerns s7, who is mgr2
    a = svc.file_appeal("mgr", c1, "malicious")
    with pytest.raises(ManagerError) as e:
        svc.decide_appeal("mgr2", a, True, "")
    assert e.value.reason == "conflict" and "staff member concerned" in str(e.value)


def test_overdue_first(svc: CaseService) -> None:
    c1, c2 = svc.open_cases()
    svc.clock_ms.ms += 10 * 86_400_000  # type: ignore[attr-defined]
    svc.verify("mgr", c1, "f")
    lst = svc.list("insp")
    assert [c.case_id for c in lst] == [c1, c2] and all(
        c.overdue(date(2026, 11, 10)) for c in lst)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector.cli", *args], capture_output=True,
                          text=True,
                          cwd=Path(__file__).parents[1], check=False)


@_SQLITE_FILE
def test_audit_verify_detects_edit_delete_truncation(svc: CaseService, tmp_path: Path) -> None:
    c1, _ = svc.open_cases()
    svc.verify("mgr", c1, "finding")
    svc.rectify("mgr", c1, "action")
    db = str(tmp_path / "state.db")
    ok = _cli("audit", "verify", "--state-db", db)
    assert ok.returncode == 0 and "ok: 8 records" in ok.stdout, ok.stderr
    n, head = audit.head(svc.conn)
    assert n == 8

    # The triggers refuse edits through SQL; an attacker with the file drops them first.
    with pytest.raises(sqlite3.DatabaseError):
        svc.conn.execute("UPDATE mgr_audit SET actor='x' WHERE seq=6")
    raw = sqlite3.connect(db)
    original = raw.execute("SELECT actor FROM mgr_audit WHERE seq=6").fetchone()[0]
    raw.execute("DROP TRIGGER mgr_audit_no_update")
    raw.execute("DROP TRIGGER mgr_audit_no_delete")
    raw.execute("UPDATE mgr_audit SET actor='mallory' WHERE seq=6")
    raw.commit()
    bad = _cli("audit", "verify", "--state-db", db)
    assert bad.returncode == 1 and "record 6 was edited" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1

    raw.execute("UPDATE mgr_audit SET actor=? WHERE seq=6", (original,))  # restore, then delete one
    raw.commit()
    assert _cli("audit", "verify", "--state-db", db).returncode == 0
    raw.execute("DELETE FROM mgr_audit WHERE seq=3")
    raw.commit()
    bad = _cli("audit", "verify", "--state-db", db)
    assert bad.returncode == 1 and "record 3 is missing" in bad.stderr

    # Cut the tail (renumbering cannot help: seq 8 removed, chain still consistent to 7).
    raw.execute("DELETE FROM mgr_audit")
    raw.commit()
    assert _cli("audit", "verify", "--state-db", db, "--head", head).returncode == 1


@_SQLITE_FILE
def test_directory_and_export(svc: CaseService, tmp_path: Path) -> None:
    import csv
    import json

    db = str(tmp_path / "state.db")
    (tmp_path / "svc.csv").write_text("code,name,department\nS1,不动产登记,自然资源局\n",
                                      encoding="utf-8")
    (tmp_path / "staff.csv").write_text(
        "staff_id,name,badge,department,hall,windows\ns8,李四,A008,自然资源局,h1,w01\n",
        encoding="utf-8")
    assert _cli("directory", "import", "--state-db", db, "service",
                str(tmp_path / "svc.csv")).returncode == 0
    assert _cli("directory", "import", "--state-db", db, "staff",
                str(tmp_path / "staff.csv")).returncode == 0
    bad = _cli("directory", "import", "--state-db", db, "staff", str(tmp_path / "svc.csv"))
    assert bad.returncode == 2 and "missing column(s)" in bad.stderr
    assert "Traceback" not in bad.stderr

    _c1, c2 = svc.open_cases()
    svc.verify("mgr", c2, "waited 40 min")
    svc.rectify("mgr", c2, "added a second window at peak")
    svc.callback("mgr", c2, True, "满意")
    day = "2026-10-26"
    js = _cli("export", "day", "--state-db", db, "--hall", "h1", "--date", day, "--format", "json")
    rows = json.loads(js.stdout)
    by = {r["办件编号"]: r for r in rows}
    assert set(by) == {"T1", "T2", "T3"}
    assert by["T2"]["事项名称"] == "不动产登记" and by["T2"]["部门"] == "自然资源局"
    assert by["T2"]["评价渠道"] == "评价器" and by["T2"]["等级"] == 2
    assert by["T2"]["整改情况"] == "已回访：added a second window at peak"
    assert by["T2"]["回访结果"] == "已联系：满意" and by["T2"]["差评原因"] == "服务态度"
    assert by["T1"]["整改情况"] == "待核实" and by["T3"]["整改情况"] == ""
    out = tmp_path / "day.csv"
    assert _cli("export", "day", "--state-db", db, "--hall", "h1", "--date", day,
                "--out", str(out)).returncode == 0
    with open(out, encoding="utf-8") as f:
        assert [r["办件编号"] for r in csv.DictReader(f)] == [r["办件编号"] for r in rows]
    assert _cli("export", "day", "--state-db", db, "--hall", "h1",
                "--date", "2026-10-25", "--format", "json").stdout.strip() == "[]"
    bad = _cli("export", "day", "--state-db", db, "--hall", "h1", "--date", "25.10.2026")
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr


@_SQLITE_FILE
def test_report_month_pdf_and_xlsx(svc: CaseService, tmp_path: Path) -> None:
    import shutil

    from openpyxl import load_workbook

    conn = svc.conn
    ms = svc.clock_ms()
    # Window w02: 10 completed, 8 rated (6 x 5, 1 x 4, 1 x 1), staff s9.
    for i, level in enumerate([5, 5, 5, 5, 5, 5, 4, 1, None, None]):
        t = f"W2-{i}"
        conn.execute("INSERT INTO txn (hall, txn, window, staff_id, service_code, started_ms, "
                     "completed_ms, outcome, deadline_ms, state, rating_id, level) VALUES "
                     "('h1', ?, 'w02', 's9', 'S1', ?, ?, 'done', ?, ?, ?, ?)",
                     (t, ms - 1000, ms + i, ms, "unrated" if level is None else "rated",
                      None if level is None else f"x:{t}", level))
        if level is not None:
            conn.execute("INSERT INTO rating (rating_id, hall, window, device, boot, seq, level, "
                         "reason, mode, press_ms, received_ms, state, txn) VALUES (?, 'h1', "
                         "'w02', 'x', 1, ?, ?, ?, 'linked', ?, ?, 'linked', ?)",
                         (f"x:{t}", i, level, "efficiency" if level == 1 else None, ms, ms, t))
    conn.execute("INSERT INTO dir_window VALUES ('h1', 'w02', '二号窗口', 'S1')")
    c = svc.open_cases()  # T1, T2 (w01) and W2-7 (w02)
    assert len(c) == 3
    w2case = next(k for k in svc.list("mgr") if k.window == "w02").case_id
    svc.verify("mgr", w2case, "f")
    svc.rectify("mgr", w2case, "a")
    svc.callback("mgr", w2case, True, "满意")
    svc.close("mgr", w2case)
    out = tmp_path / "out"
    res = _cli("report", "month", "--state-db", str(tmp_path / "state.db"), "--hall", "h1",
               "--month", "2026-10", "--out-dir", str(out))
    assert res.returncode == 0, res.stderr
    pages = int(res.stdout.split("(")[1].split(" ")[0])
    print("PDF pages:", pages)
    pdf = out / "h1-2026-10.pdf"
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True,
                          text=True, check=True).stdout
    assert "月度考核报告" in text and "二号窗口" in text
    assert "办结 13 件" in text  # 10 + T1, T2, T3
    line = next(ln for ln in text.splitlines() if "二号窗口" in ln and "%" in ln).split()
    # columns: 名称 办结数 参评率 满意率 满意指数 漏斗限内 差评数 差评原因,
    # then 整改率 按期整改率 回访率 回访满意率
    assert line[1:8] == ["10", "80.0%", "87.5%", "84.4", "正常", "1", "办事效率1"]  # a tag in words
    assert line[8:12] == ["100.0%", "100.0%", "100.0%", "100.0%"]
    subprocess.run(["pdftoppm", "-png", "-r", "60", str(pdf), str(out / "page")], check=True)
    pngs = sorted(out.glob("page*.png"))
    assert len(pngs) == pages >= 1
    keep = Path("/tmp/evalterm-manager-report")
    keep.mkdir(exist_ok=True)
    for p in [*pngs, pdf]:
        shutil.copy(p, keep / p.name)
    wb = load_workbook(out / "h1-2026-10.xlsx")
    rows = {r[0]: r for r in wb["窗口"].iter_rows(min_row=3, values_only=True)}
    assert rows["二号窗口"][1:5] == ("10", "80.0%", "87.5%", "84.4")
    assert set(wb.sheetnames) == {"窗口", "人员", "诚信标记"}
    bad = _cli("report", "month", "--state-db", str(tmp_path / "state.db"), "--hall", "h1",
               "--month", "Oct")
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr


def test_names_from_the_feed_and_lookup(svc: CaseService) -> None:
    from collector.manager.directory import learn_from_txn, lookup

    svc.conn.execute("UPDATE txn SET staff_name='张三', staff_badge='A007', service_name='社保' "
                     "WHERE txn='T1'")
    learn_from_txn(svc.conn)
    n = lookup(svc.conn, "h1", "w01", "s7", "S1")
    assert (n.staff, n.badge, n.service, n.window) == ("张三", "A007", "社保", "w01")
    assert lookup(svc.conn, "h1", staff_id="nobody").staff == "nobody"


def _rewrite_chain_from(db: str, seq: int, actor: str) -> None:
    """What an attacker with the file does so that `verify` passes: edit record `seq` and
    recompute every hash from it on."""
    raw = sqlite3.connect(db)
    raw.execute("DROP TRIGGER IF EXISTS mgr_audit_no_update")
    raw.execute("DROP TRIGGER IF EXISTS mgr_audit_no_delete")
    rows = raw.execute("SELECT seq, at_ms, actor, action, subject, data, prev FROM mgr_audit "
                       "WHERE seq >= ? ORDER BY seq", (seq,)).fetchall()
    prev = rows[0][6]
    for s, at, who, action, subject, data, _ in rows:
        who = actor if s == seq else who
        h = audit.record_hash(s, at, who, action, subject, data, prev)
        raw.execute("UPDATE mgr_audit SET actor=?, prev=?, hash=? WHERE seq=?", (who, prev, h, s))
        prev = h
    raw.commit()
    raw.close()


@_SQLITE_FILE
def test_anchors_catch_a_chain_rewritten_with_new_hashes(svc: CaseService, tmp_path: Path) -> None:
    c1, _ = svc.open_cases()
    anchors = [(*audit.head(svc.conn), 1000)]
    svc.verify("mgr", c1, "finding")
    anchors.append((*audit.head(svc.conn), 2000))
    assert audit.check_anchors(svc.conn, anchors).ok
    assert audit.check_anchors(svc.conn, []).ok
    _rewrite_chain_from(str(tmp_path / "state.db"), 3, "mallory")
    assert audit.verify(svc.conn).ok  # consistent on its own
    res = audit.check_anchors(svc.conn, anchors)
    assert not res.ok and res.seq == anchors[0][0] and "rewritten" in res.problem
    svc.conn.execute("DROP TRIGGER IF EXISTS mgr_audit_no_delete")
    svc.conn.execute("DELETE FROM mgr_audit WHERE seq >= ?", (anchors[0][0],))
    res = audit.check_anchors(svc.conn, anchors)
    assert not res.ok and "no longer in the log" in res.problem
