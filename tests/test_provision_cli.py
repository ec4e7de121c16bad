"""The CLI of provisioning: `evalterm broker render` and `evalterm device report`."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.cli import main
from collector.provision import pki


def _pki(tmp: Path) -> str:
    pki.init_ca(tmp / "pki")
    pki.issue_server(tmp / "pki", ["broker.hall01.example"])
    return str(tmp / "pki")


def _config(tmp: Path, user: str = "collector", password: str = "pw-0123456789") -> str:
    path = tmp / "evalterm.toml"
    path.write_text(f'[collector]\ndata_dir = "{tmp / "data"}"\n'
                    f'[mqtt]\nusername = "{user}"\npassword = "{password}"\n')
    return str(path)


def test_broker_render_dry_run_then_real(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    cfg = _config(tmp_path)
    assert main(["-c", cfg, "device", "add", "--device", "kp-1", "--hall", "h1",
                 "--window", "w1"]) == 0
    out = tmp_path / "broker"
    capsys.readouterr()
    assert main(["-c", cfg, "broker", "render", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "would write" in printed and "topic write evalterm/dev/h1/w1/kp-1/rating" in printed
    assert not out.exists()
    assert main(["-c", cfg, "broker", "render", "--out", str(out)]) == 2
    assert "run `evalterm pki init" in capsys.readouterr().err  # no TLS files yet
    assert main(["-c", cfg, "broker", "render", "--out", str(out), "--pki", _pki(tmp_path),
                 "--hall-listen", "10.20.0.2:8884"]) == 0
    printed = capsys.readouterr().out
    assert "1 active devices, 4 service users" in printed
    assert "new user feed-h1" in printed
    assert sorted(p.name for p in out.iterdir()) == ["acl", "evalterm.conf", "passwd",
                                                     "service-users"]
    conf = (out / "evalterm.conf").read_text()
    assert "listener 1883 127.0.0.1\n" in conf and "listener 8884 10.20.0.2\n" in conf
    assert main(["-c", cfg, "broker", "render", "--out", str(out), "--pki", _pki(tmp_path / "x"),
                 "--hall-listen", "everywhere"]) == 2
    assert "--hall-listen 'everywhere': give ADDRESS:PORT" in capsys.readouterr().err


def test_broker_render_of_a_partitioned_deployment_is_one_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = Path(_config(tmp_path))
    cfg.write_text(cfg.read_text() + "[partitions]\ncount = 3\n")
    out = tmp_path / "broker"
    assert main(["-c", str(cfg), "broker", "render", "--out", str(out), "--pki",
                 _pki(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "partition users collector-p0 .. -p2" in printed and "pw-0123456789" not in printed
    service = (out / "service-users").read_text()
    for k in range(3):
        assert f"collector-p{k}:pw-0123456789\n" in service
        assert f"user collector-p{k}\ntopic read evalterm/dev/+/+/+/rating" in (
            out / "acl").read_text()
    assert "collector-p3" not in service


def test_broker_render_needs_the_collectors_user(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, user="", password="")
    assert main(["-c", cfg, "broker", "render", "--out", str(tmp_path / "b")]) == 2
    assert "set [mqtt] username and password" in capsys.readouterr().err


def test_reload_of_a_process_that_does_not_exist(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    rc = main(["-c", cfg, "broker", "render", "--out", str(tmp_path / "b"),
               "--pki", _pki(tmp_path), "--reload-pid", "999999999"])
    assert rc == 2 and "no process 999999999" in capsys.readouterr().err


def test_device_report_without_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", _config(tmp_path), "device", "report", "--hall", "h9"]) == 1
    assert "no provisioning report for h9" in capsys.readouterr().err


def test_provision_without_site_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # (only the working directory: where site-HALL.json is looked up)
    rc = main(["-c", _config(tmp_path), "device", "provision", "--port", "/dev/ttyUSB-missing",
               "--hall", "h1", "--window", "w1"])
    assert rc == 2
    assert "no site file site-h1.json" in capsys.readouterr().err
