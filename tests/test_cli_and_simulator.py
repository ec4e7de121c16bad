"""The device registry commands, and the simulated hall (the demo) against the real servers."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import query, wait_for

from collector.config import Config
from collector.db import connect
from collector.registry import Registry
from collector.service import Collector
from collector.sim.realtime import SimHall, default_hall

EVALTERM = [sys.executable, "-m", "collector.cli"]


def run(cfg_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EVALTERM, "-c", str(cfg_file), *args], capture_output=True, text=True,
                          timeout=60)


def test_device_add_list_revoke(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(cfg.to_toml())
    key_file = tmp_path / "kp-0007.key"
    res = run(cfg_file, "device", "add", "--device", "kp-0007", "--hall", "hall01", "--window",
              "w03", "--key-file", str(key_file))
    assert res.returncode == 0, res.stderr
    key_hex = key_file.read_text().strip()
    assert len(bytes.fromhex(key_hex)) == 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_hex not in res.stdout
    again = run(cfg_file, "device", "add", "--device", "kp-0007", "--hall", "hall01", "--window",
                "w04")
    assert again.returncode == 2 and "already registered" in again.stderr
    bad = run(cfg_file, "device", "add", "--device", "kp 7", "--hall", "h", "--window", "w")
    assert bad.returncode == 2 and "device id" in bad.stderr
    listing = run(cfg_file, "device", "list")
    assert "kp-0007" in listing.stdout and "active" in listing.stdout
    assert key_hex not in listing.stdout
    assert run(cfg_file, "device", "revoke", "--device", "kp-0007").returncode == 0
    conn = connect(cfg.state_db)
    dev = Registry(conn).get("kp-0007")
    assert dev is not None and dev.state == "revoked" and dev.key.hex() == key_hex
    conn.close()
    assert run(cfg_file, "device", "revoke", "--device", "nope").returncode == 2


@pytest.mark.servers
def test_simulated_hall_links_ratings(make_config: Callable[..., Config], broker: object) -> None:
    cfg = make_config(linking__rating_window_s=20, linking__invite_ttl_s=20)
    spec = default_hall("hall01", windows=3, rate_per_min=40, seed=3)
    conn = connect(cfg.state_db)
    reg = Registry(conn)
    keys = {w.device: reg.add(w.device, "hall01", w.window, int(time.time() * 1000)).key
            for w in spec.windows}
    conn.close()
    collector = Collector(cfg)
    collector.start()
    hall = SimHall(spec, keys, "127.0.0.1", broker.port,  # type: ignore[attr-defined]
                   prefix=cfg.mqtt.topic_prefix, delay_s=(0.2, 1.0))
    try:
        wait_for(lambda: collector.health()["mqtt_connected"])
        hall.start()
        hall.run(8, heartbeat_s=2)
        time.sleep(2)
        sent = hall.ratings_sent()
        assert hall.completed >= 5 and sent >= 3
        rows = wait_for(lambda: (r := query(cfg, 'SELECT * FROM "rating"')) and len(r) >= sent
                        and r, what="simulated ratings")
        assert len(rows) == sent
        assert all(r["link"] == "linked" and r["staff"] != "unknown" for r in rows)
        tele = query(cfg, 'SELECT * FROM "telemetry"')
        assert {t["device"] for t in tele} == {w.device for w in spec.windows}
    finally:
        hall.stop()
        collector.stop()
