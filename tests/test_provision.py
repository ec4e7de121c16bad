"""Provisioning on a bench without hardware (tests/provision_fakes.py): the exact files, the
compiled .mpy set, the config, and the sequence of mpremote and mpy-cross calls; idempotence,
rotate-key, replace, and the errors a technician meets."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import Dev
from provision_fakes import MICROPYTHON, Bench, FakeBoard, short

from collector.config import load_config
from collector.db import connect
from collector.ingest import Inbound, Ingest
from collector.provision.board import MpRemote
from collector.provision.build import default_firmware_dir
from collector.provision.devconfig import _firmware_config, mqtt_password
from collector.provision.device import Provisioner
from collector.provision.report import read_rows
from collector.provision.runner import ProvisionError, ToolRunner
from collector.registry import Registry, RegistryError

FIRMWARE = default_firmware_dir()
MODULES = sorted(f"etfw/{p.stem}.mpy" for p in (FIRMWARE / "etfw").glob("*.py"))
SITE = {"wifi": {"ssid": "hall-net", "password": "wifi-pw"},
        "broker": {"host": "10.0.0.2", "port": 1883}, "lang": "zh"}
PORT = "/dev/ttyUSB0"


class Rig:
    def __init__(self, tmp: Path, board: FakeBoard | None = None, dry_run: bool = False,
                 firmware: Path = FIRMWARE, registry: Registry | None = None) -> None:
        self.tmp = tmp
        self.board = board or FakeBoard(tmp / "board")
        self.printed: list[str] = []
        self.runner = ToolRunner(Bench(self.board), dry_run=dry_run, echo=self.printed.append)
        self.conn = connect(tmp / "state.db")
        self.registry = registry or Registry(self.conn)
        self.clock = iter(range(1_764_201_600_000, 1_764_201_600_000 + 10**9, 60_000))
        self.p = Provisioner(self.registry, MpRemote(self.runner, sleep=lambda _s: None), firmware,
                             tmp / "reports", lambda: next(self.clock))

    def calls(self) -> list[str]:
        return [short(c) for c in self.runner.calls]


def _compiles() -> list[str]:
    return [f"mpy-cross -march=xtensawin {Path(m).stem}.py" for m in MODULES]


def test_fresh_board_gets_exactly_the_firmware_config_and_registration(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    out = rig.p.provision(PORT, "h1", "w3", SITE, board_profile="devkitc-rgb")

    dev = rig.registry.get("kp-123456")  # from the board's unique id 240ac4123456
    assert dev is not None and (dev.hall, dev.window, dev.state) == ("h1", "w3", "active")
    assert out.device == dev and out.registered
    # The exact files on the board: MicroPython's boot.py, main.py as source, every module
    # compiled, and the config.
    files = rig.board.files()
    assert sorted(files) == sorted(["boot.py", "main.py", "config.json", *MODULES])
    assert files["main.py"] == (FIRMWARE / "main.py").read_bytes()
    for m in MODULES:
        # .mpy version 6 (what the board said it reads). Bytecode-only files carry no
        # architecture (flags 0); -march=xtensawin (calls below) matters for native code.
        assert files[m][:3] == b"M\x06\x00", m
    cfg = json.loads(files["config.json"])
    assert cfg == {**SITE, "board": "devkitc-rgb", "device": "kp-123456", "hall": "h1",
                   "window": "w3", "key": dev.key.hex()}
    parsed = _firmware_config(FIRMWARE).parse(files["config.json"])
    assert parsed.broker["user"] == "kp-123456"
    assert parsed.broker["password"] == mqtt_password(dev.key)
    # What ran, in order: read back, compile, prepare, copy (main.py last), read back, reset.
    assert rig.calls() == [
        "mpremote exec PROBE",
        *_compiles(),
        "mpremote exec PREPARE",
        "mpremote fs cp " + " ".join(Path(m).name for m in MODULES) + " :etfw/",
        "mpremote fs cp config.json :config.json",
        "mpremote fs cp main.py :main.py",
        "mpremote exec PROBE",
        "mpremote reset",
    ]
    assert rig.board.writes[-1] == "main.py"
    rows = read_rows(tmp_path / "reports", "h1")
    assert [(r["device"], r["window"], r["action"], r["firmware"], r["key_fingerprint"],
             r["board_uid"]) for r in rows] == [
        ("kp-123456", "w3", "provision", "1.0.0", dev.fingerprint, "240ac4123456")]


def test_second_run_changes_nothing_and_force_rewrites_after_parking(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.p.provision(PORT, "h1", "w3", SITE)
    before = {p: (tmp_path / "board" / p).stat().st_mtime_ns for p in rig.board.files()}
    key = rig.registry.get("kp-123456").key  # type: ignore[union-attr]
    rig.runner.calls.clear()

    out = rig.p.provision(PORT, "h1", "w3", SITE)
    assert out.changed == [] and not out.registered and out.report is None
    assert rig.calls() == ["mpremote exec PROBE", *_compiles()]  # nothing that writes
    assert {p: (tmp_path / "board" / p).stat().st_mtime_ns for p in rig.board.files()} == before
    assert rig.registry.get("kp-123456").key == key  # type: ignore[union-attr]
    assert len(read_rows(tmp_path / "reports", "h1")) == 1

    rig.runner.calls.clear()
    out = rig.p.provision(PORT, "h1", "w3", SITE, force=True)
    assert sorted(out.changed) == sorted(["main.py", "config.json", *MODULES])
    # The firmware runs now (main.py, watchdog): it is parked before anything is written.
    assert rig.calls()[len(_compiles()) + 1:len(_compiles()) + 3] == [
        "mpremote exec PARK + reset", "mpremote exec PREPARE"]
    assert rig.board.writes[-1] == "main.py"
    assert "main.py.off" not in rig.board.files()


def test_only_changed_modules_are_copied_and_stale_ones_removed(tmp_path: Path) -> None:
    fw = tmp_path / "fw"
    shutil.copytree(FIRMWARE, fw, ignore=shutil.ignore_patterns("__pycache__"))
    rig = Rig(tmp_path, firmware=fw)
    rig.p.provision(PORT, "h1", "w3", SITE)
    (tmp_path / "board" / "etfw" / "app.py").write_text("# a stale source file shadows app.mpy\n")
    with (fw / "etfw" / "i18n.py").open("a") as f:
        f.write("\n_CHANGED = 1  # (a comment alone would compile to the same .mpy)\n")
    rig.board.writes.clear()
    out = rig.p.provision(PORT, "h1", "w3", SITE)
    assert out.changed == ["etfw/i18n.mpy", "main.py"]  # main.py: written back after parking
    assert out.removed_stale == ["etfw/app.py"]
    assert rig.board.writes == ["etfw/i18n.mpy", "main.py"]
    assert "etfw/app.py" not in rig.board.files()


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path, dry_run=True)
    out = rig.p.provision(PORT, "h1", "w3", SITE)
    assert rig.board.files().keys() == {"boot.py"}
    assert rig.registry.list() == []
    assert not (tmp_path / "reports").exists()
    assert rig.calls() == ["mpremote exec PROBE", *_compiles()]  # read-only calls only
    assert [short(c) for c in rig.runner.skipped] == [
        "mpremote exec PREPARE",
        "mpremote fs cp " + " ".join(Path(m).name for m in MODULES) + " :etfw/",
        "mpremote fs cp config.json :config.json",
        "mpremote fs cp main.py :main.py",
        "mpremote reset",
    ]
    assert rig.printed[0] == "would register kp-123456 at h1/w3 with a new key"
    assert any(line.startswith("would run: python -m mpremote connect /dev/ttyUSB0 fs cp")
               for line in rig.printed)
    assert sorted(out.changed) == sorted(["main.py", "config.json", *MODULES])


def test_installed_firmware_imports_on_micropython(tmp_path: Path) -> None:
    # A board that reports the unix port's own architecture gets .mpy files for it, so the
    # installed set can be imported and its config parsed right there, as on the device.
    board = FakeBoard(tmp_path / "board", mpy=None)
    rig = Rig(tmp_path, board=board)
    rig.p.provision(PORT, "h1", "w3", SITE)
    assert not (tmp_path / "board" / "etfw" / "app.py").exists()
    code = ("import etfw.config as c, etfw.app, etfw.link\n"
            "cfg = c.parse(open('config.json').read())\n"
            "print(cfg.device, cfg.broker['user'], cfg.broker['password'])")
    done = subprocess.run([str(MICROPYTHON), "-c", code], cwd=tmp_path / "board",
                          capture_output=True, text=True, timeout=30, check=False,
                          env={**os.environ, "MICROPYPATH": "."})
    dev = rig.registry.get("kp-123456")
    assert dev is not None
    assert done.stdout.split() == ["kp-123456", "kp-123456", mqtt_password(dev.key)], done.stderr


def test_rotate_key_rewrites_only_the_config(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.p.provision(PORT, "h1", "w3", SITE)
    old = rig.registry.get("kp-123456")
    assert old is not None
    rig.board.writes.clear()
    out = rig.p.rotate_key(PORT, "kp-123456", SITE)
    new = rig.registry.get("kp-123456")
    assert new is not None and new.key != old.key and out.device == new
    assert rig.board.writes == ["config.json", "main.py"]
    assert json.loads(rig.board.files()["config.json"])["key"] == new.key.hex()
    assert rig.p.board.probe(PORT).config["key_fp"] == new.fingerprint  # type: ignore[index]
    assert [r["action"] for r in read_rows(tmp_path / "reports", "h1")] == [
        "provision", "rotate-key"]


def test_registry_rotate_key(tmp_path: Path) -> None:
    reg = Registry(connect(tmp_path / "state.db"))
    d = reg.add("kp-1", "h1", "w1", 1)
    assert reg.rotate_key("kp-1", bytes(range(32))).key == bytes(range(32))
    assert reg.rotate_key("kp-1").key not in (d.key, bytes(range(32)))
    with pytest.raises(RegistryError, match="32 bytes"):
        reg.rotate_key("kp-1", b"short")
    reg.revoke("kp-1", 2)
    with pytest.raises(RegistryError, match="revoked"):
        reg.rotate_key("kp-1")
    with pytest.raises(RegistryError, match="not registered"):
        reg.rotate_key("kp-2")


def test_replace_keeps_the_window_and_revokes_the_old_identity(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    cfg = load_config(None, env={}).with_overrides(collector__data_dir=str(tmp_path))
    ingest = Ingest(rig.conn, cfg)
    old = rig.registry.add("kp-old", "h1", "w3", 1)
    new_board = FakeBoard(tmp_path / "board2", uid="240ac4abcdef")
    rig2 = Rig(tmp_path / "r2", board=new_board, registry=rig.registry)
    out = rig2.p.replace(PORT, "kp-old", SITE)
    assert out.device.device == "kp-abcdef" and (out.device.hall, out.device.window) == ("h1", "w3")
    assert rig.registry.get("kp-old").state == "revoked"  # type: ignore[union-attr]
    assert [d.device for d in rig.registry.active_at("h1", "w3")] == ["kp-abcdef"]
    rows = read_rows(tmp_path / "r2" / "reports", "h1")
    assert [(r["device"], r["action"], r["replaces"]) for r in rows] == [
        ("kp-abcdef", "replace", "kp-old")]
    # The window's ratings continue under the new device; the old one is refused.
    prefix = cfg.mqtt.topic_prefix
    got = ingest.process_batch([
        Inbound("mqtt", *Dev(prefix, "kp-abcdef", out.device.key, "h1", "w3").rating(5), 1),
        Inbound("mqtt", *Dev(prefix, "kp-old", old.key, "h1", "w3").rating(5), 1),
    ], 2)
    assert [(o.status, o.reason) for o in got] == [("accepted", ""),
                                                   ("rejected", "revoked_device")]


@pytest.mark.parametrize(("setup", "kwargs", "message"), [
    ("registered_elsewhere", {}, "is registered at h1/w9, not h1/w3"),
    ("revoked", {}, "a revoked identity is never used again"),
    ("occupied", {}, "window h1/w3 already has kp-other"),
    ("none", {"board_profile": "devkitc-9led"}, "unknown board profile 'devkitc-9led'"),
    ("none", {"arch": "pdp11"}, "unknown architecture 'pdp11'"),
])
def test_provision_refusals(tmp_path: Path, setup: str, kwargs: dict[str, Any],
                            message: str) -> None:
    rig = Rig(tmp_path)
    if setup == "registered_elsewhere":
        rig.registry.add("kp-123456", "h1", "w9", 1)
    elif setup == "revoked":
        rig.registry.add("kp-123456", "h1", "w3", 1)
        rig.registry.revoke("kp-123456", 2)
    elif setup == "occupied":
        rig.registry.add("kp-other", "h1", "w3", 1)
    with pytest.raises(ProvisionError, match=message):
        rig.p.provision(PORT, "h1", "w3", SITE, **kwargs)
    assert rig.board.writes == []


def test_a_board_that_is_another_device_needs_force(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.p.provision(PORT, "h1", "w3", SITE)
    with pytest.raises(ProvisionError, match=r"already kp-123456 .*add --force"):
        rig.p.provision(PORT, "h1", "w4", SITE, device="kp-new")


def test_site_settings_the_device_would_refuse(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    bad = {**SITE, "lang": "fr", "broker": {"host": "b", "port": 70000}}
    with pytest.raises(ProvisionError, match=r"the device would refuse.*broker\.port.*lang"):
        rig.p.provision(PORT, "h1", "w3", bad)
    assert rig.board.writes == []


def test_board_that_does_not_answer(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.board.present = False
    with pytest.raises(ProvisionError, match="no MicroPython prompt answered on /dev/ttyUSB0"):
        rig.p.provision(PORT, "h1", "w3", SITE)


def test_real_mpremote_on_a_silent_serial_port() -> None:
    # The real mpremote against a pty that never answers: our timeout and message.
    master, slave = os.openpty()
    try:
        board = MpRemote(ToolRunner(), timeout_s=3)
        with pytest.raises(ProvisionError, match="no MicroPython prompt answered"):
            board.probe(os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)


def test_real_mpremote_on_a_missing_port() -> None:
    with pytest.raises(ProvisionError, match="cannot open /dev/ttyUSB-missing"):
        MpRemote(ToolRunner()).probe("/dev/ttyUSB-missing")


def test_report_rows_are_csv_with_the_documented_columns(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.p.provision(PORT, "h1", "w3", SITE)
    with (tmp_path / "reports" / "provisioning-h1.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header == ["date", "hall", "window", "device", "action", "firmware",
                      "key_fingerprint", "board_uid", "port", "replaces"]
