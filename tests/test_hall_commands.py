"""Everyday commands with a broken precondition fail with one line that says what is wrong and
what to do (exit status non-zero, never a traceback); the registry's rules for a hall."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import load_config
from collector.db import connect
from collector.registry import Registry

EVALTERM = [sys.executable, "-m", "collector.cli"]
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    """A hall whose InfluxDB and broker are not running (ports nobody listens on)."""
    cfg = load_config(None, env={}).with_overrides(
        collector__data_dir=str(tmp_path / "data"),
        influx__url=f"http://127.0.0.1:{_free_port()}", mqtt__port=_free_port())
    path = tmp_path / "collector.toml"
    path.write_text(cfg.to_toml())
    return path


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVALTERM_")}
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run([*EVALTERM, *args], capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})}, cwd=ROOT)


CASES = [
    # (arguments after -c FILE, what the one line must say)
    (["report"], "is unreachable"),
    (["report", "--since", "1d;DROP"], "--since"),
    (["txn", "import", "/nonexistent/backfill.csv", "--hall", "h1"], "/nonexistent/backfill.csv"),
    (["device", "revoke", "--device", "kp-nope"], "not registered"),
    (["device", "remove", "--device", "kp-nope"], "not registered"),
    (["grafana", "deploy", "--url", "http://127.0.0.1:9", "--timeout", "2"], "unreachable"),
    (["simulate", "--windows", "1", "--duration", "1", "--hall", "sim01"], "refused"),
    (["audit", "verify", "--state-db", "/nonexistent/dir/state.db"], "error"),
    (["backup", "/nonexistent/evalterm-backup"], "no state database"),
    (["restore", "/nonexistent/evalterm-backup"], "no such folder"),
    (["influx", "setup"], "is unreachable"),
    (["influx", "rollup", "--days", "1"], "is unreachable"),
]


@pytest.mark.parametrize(("args", "says"), CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_broken_precondition_is_one_line(cfg_file: Path, args: list[str], says: str) -> None:
    res = _run("-c", str(cfg_file), *args)
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and says in errors[0], res.stderr
    # A refused simulation does not claim it ran.
    assert not re.search(r"simulated \d+ transactions", res.stdout), res.stdout


def test_config_check_of_a_broken_file_is_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text("[detection\nopening_hours = 1\n")
    res = _run("-c", str(bad), "config", "check")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and str(bad) in res.stderr


def test_broker_render_with_an_unknown_file_group_is_one_line(cfg_file: Path,
                                                            tmp_path: Path) -> None:
    pki = str(tmp_path / "pki")
    assert _run("pki", "init", "--dir", pki).returncode == 0
    assert _run("pki", "issue", "server", "--dir", pki, "--name", "mq.example").returncode == 0
    res = _run("-c", str(cfg_file), "broker", "render", "--out", str(tmp_path / "broker"),
               "--pki", pki, "--file-group", "no-such-group-evalterm",
               env={"EVALTERM_MQTT__USERNAME": "evalterm-collector",
                    "EVALTERM_MQTT__PASSWORD": "x"})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "no-such-group-evalterm" in res.stderr and "no such group" in res.stderr, res.stderr
    assert not list((tmp_path / "broker").glob("*.tmp"))


def test_simulate_against_a_secured_broker_asks_for_the_feed_password(cfg_file: Path) -> None:
    res = _run("-c", str(cfg_file), "simulate", "--hall", "sim01", "--duration", "1",
               env={"EVALTERM_MQTT__USERNAME": "evalterm-collector",
                    "EVALTERM_MQTT__PASSWORD": "x"})
    assert res.returncode == 2 and "EVALTERM_SIM_FEED_PASSWORD" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_one_active_device_per_window_and_remove(cfg_file: Path, tmp_path: Path) -> None:
    base = ["-c", str(cfg_file), "device"]
    assert _run(*base, "add", "--device", "kp-1", "--hall", "h1", "--window", "w1").returncode == 0
    second = _run(*base, "add", "--device", "kp-2", "--hall", "h1", "--window", "w1")
    assert second.returncode == 2 and "already has the active device kp-1" in second.stderr
    assert "device replace" in second.stderr
    # A device that never rated is removed; one with stored ratings only with --force.
    assert _run(*base, "add", "--device", "kp-3", "--hall", "h1", "--window", "w3").returncode == 0
    conn = connect(tmp_path / "data" / "state.db")
    conn.execute(
        "INSERT INTO rating (rating_id, hall, window, device, boot, seq, level, mode, press_ms, "
        "received_ms, state) VALUES ('kp-3:1:1', 'h1', 'w3', 'kp-3', 1, 1, 5, 'invited', 1, 1, "
        "'linked')")
    conn.close()
    refused = _run(*base, "remove", "--device", "kp-3")
    assert refused.returncode == 2 and "1 stored ratings" in refused.stderr
    assert "revoke it instead" in refused.stderr
    assert _run(*base, "remove", "--device", "kp-3", "--force").returncode == 0
    assert _run(*base, "remove", "--device", "kp-1").returncode == 0
    conn = connect(tmp_path / "data" / "state.db")
    assert [d.device for d in Registry(conn).list()] == []
    conn.close()
    # The window is free again.
    assert _run(*base, "add", "--device", "kp-2", "--hall", "h1", "--window", "w1").returncode == 0
