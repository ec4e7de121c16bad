"""The web UI's accounts: `evalterm user add|list|passwd` (issue 17).

Accounts live in the state database (`mgr_user`, scrypt hashes); adding one is
`CaseService.add_user` (the same call as `evalterm case user-add`). A password never appears on
the command line: it is read from the terminal (asked twice) or, without one, from the first line
of standard input. Every change is an audit record (actor 'admin' from the command line).
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import sqlite3
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from collector.db import transaction
from collector.manager import ManagerError, audit
from collector.manager.cases import ROLES, CaseService, User, check_new_password, hash_password

__all__ = ["add_parsers", "list_users", "session_stamp", "set_password"]

_Service = Callable[[argparse.Namespace], CaseService]
_Conn = Callable[[argparse.Namespace], sqlite3.Connection]


def list_users(conn: sqlite3.Connection, hall: str | None = None) -> list[User]:
    rows = conn.execute("SELECT username, role, hall, staff_id FROM mgr_user "
                        "WHERE CAST(? AS TEXT) IS NULL OR hall = ? ORDER BY hall, username",
                        (hall, hall))
    return [User(*r) for r in rows]


def session_stamp(conn: sqlite3.Connection, username: str) -> str | None:
    """A fingerprint of the user's password hash, kept in the web UI's session: a new password
    (`set_password`) makes every older session of the user invalid. None: no such user."""
    row = conn.execute("SELECT pw_hash FROM mgr_user WHERE username=?", (username,)).fetchone()
    return None if row is None else hashlib.sha256(str(row[0]).encode()).hexdigest()[:32]


def set_password(svc: CaseService, actor: str, username: str, password: str) -> None:
    """A new password for `username` (`actor`: 'admin' from the command line)."""
    svc.user(username)  # not_found
    check_new_password(password)
    now = svc.clock_ms()
    with transaction(svc.conn) as c:
        c.execute("UPDATE mgr_user SET pw_hash=? WHERE username=?",
                  (hash_password(password), username))
        audit.append(c, now, actor, "user.password", username, {})


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    pw = getpass.getpass("password: ")
    if getpass.getpass("again: ") != pw:
        raise ManagerError("mismatch", "the two passwords differ: run the command again")
    return pw


def _user_add(service: _Service, args: argparse.Namespace) -> int:
    pw = _read_password()
    u = service(args).add_user("admin", args.username, args.role, args.hall, pw, args.staff_id)
    print(f"user {u.username} added ({u.role}, hall {u.hall})")
    return 0


def _user_list(conn: _Conn, args: argparse.Namespace) -> int:
    for u in list_users(conn(args), args.hall):
        print(f"{u.username}\t{u.role}\t{u.hall}\t{u.staff_id or ''}")
    return 0


def _user_passwd(service: _Service, args: argparse.Namespace) -> int:
    svc = service(args)
    svc.user(args.username)  # say "no user" before asking for a password
    set_password(svc, "admin", args.username, _read_password())
    print(f"password of {args.username} changed")
    return 0


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None],
                wrap: Callable[[object], object], service: _Service, conn: _Conn) -> None:
    """`evalterm user add|list|passwd`, registered by collector/manager/cli.py, which hands in
    how it opens the state database (`conn`) and the CaseService (`service`) from the
    arguments: this module does not import the CLI back."""
    g = sub.add_parser("user", help="accounts of the web UI").add_subparsers(
        dest="user_cmd", required=True)
    a = g.add_parser("add", help="add an account (password from the terminal or stdin)")
    common(a)
    a.add_argument("username")
    a.add_argument("--role", required=True, choices=ROLES,
                   help="manager (大厅负责人), lead (窗口负责人) or inspector (督查, read-only)")
    a.add_argument("--hall", required=True)
    a.add_argument("--staff-id", help="the user's own staff id, if they serve at a window too: "
                   "they never decide an appeal about themselves")
    a.set_defaults(func=wrap(partial(_user_add, service)), days=5, holidays=None)
    lst = g.add_parser("list", help="list the accounts")
    common(lst)
    lst.add_argument("--hall")
    lst.set_defaults(func=wrap(partial(_user_list, conn)))
    p = g.add_parser("passwd", help="set a new password (from the terminal or stdin)")
    common(p)
    p.add_argument("username")
    p.set_defaults(func=wrap(partial(_user_passwd, service)), days=5, holidays=None)
