"""`evalterm device update`: plan a hall's rollout, then run it over MQTT (the adapter around
collector/ota/rollout.py's decisions)."""

from __future__ import annotations

import json
import queue
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from collector import outbox
from collector.clock import now_ms
from collector.config import Config
from collector.db import connect
from collector.ota import OtaError
from collector.ota.image import Image, load_image
from collector.ota.rollout import Rollout
from collector.ota.server import OtaServer
from collector.registry import Device, Registry

__all__ = ["Plan", "plan_update", "run_update"]


@dataclass(frozen=True)
class Plan:
    image: Image
    canary: Device
    rest: list[Device]

    @property
    def devices(self) -> list[Device]:
        return [self.canary, *self.rest]


def last_fw(conn: sqlite3.Connection, device: str) -> str:
    """The firmware version the device last reported (boot event, heartbeat or status)."""
    row = conn.execute("SELECT data FROM device_log WHERE device=? AND kind IN ('boot', "
                       "'heartbeat', 'status') ORDER BY id DESC LIMIT 1", (device,)).fetchone()
    if row is None:
        return "unknown"
    try:
        return str(json.loads(row[0]).get("fw", "unknown"))
    except ValueError:
        return "unknown"


def plan_update(conn: sqlite3.Connection, hall: str, window: str | None, image: Path) -> Plan:
    img = load_image(image)
    devices = [d for d in Registry(conn).list() if d.hall == hall and d.state == "active"]
    if window is not None:
        devices = [d for d in devices if d.window == window]
        if not devices:
            raise OtaError(f"no active device at {hall}/{window}: check `evalterm device list`")
    elif not devices:
        raise OtaError(f"no active device in hall {hall}: check `evalterm device list`")
    devices.sort(key=lambda d: (d.window, d.device))
    return Plan(img, devices[0], devices[1:])


def describe(plan: Plan, conn: sqlite3.Connection) -> list[str]:
    img = plan.image
    lines = [f"image {img.version}: {len(img.files)} files, {img.size} bytes, manifest sha256 "
             f"{img.manifest_sha[:16]}..."]
    for i, d in enumerate(plan.devices):
        step = "first (canary)" if i == 0 else "then"
        lines.append(f"  {step}: {d.device} at {d.hall}/{d.window}, now runs "
                     f"{last_fw(conn, d.device)}")
    return lines


def run_update(cfg: Config, plan: Plan, *, out: Callable[[str], None] = print,
               wait_s: int = 600, timeout_s: int = 600, stall_s: int = 15,
               should_stop: Callable[[], bool] | None = None, user: str | None = None,
               password: str = "") -> Rollout:
    """Run the rollout to its end; returns it (its `failed` runs say what went wrong)."""
    conn = connect(cfg.state_target)
    try:
        server = OtaServer(cfg, plan.devices, plan.image, secrets.randbelow(0xFFFFFFFE) + 1,
                           lambda dev: outbox.next_cseq(conn, dev), now_ms, user, password)
        rollout = Rollout.plan(plan.image.version, plan.canary, plan.rest,
                               timeout_s=timeout_s, stall_s=stall_s)
        server.start()
        try:
            time.sleep(0.5)  # the retained status of each device arrives first
            _loop(server, rollout, out, wait_s, should_stop)
        finally:
            server.stop()
        if server.rejected:
            out(f"refused {server.rejected} messages that did not check (see the log)")
        return rollout
    finally:
        conn.close()


def _loop(server: OtaServer, rollout: Rollout, out: Callable[[str], None], wait_s: int,
          should_stop: Callable[[], bool] | None) -> None:
    started = False
    while not rollout.done and not (should_stop and should_stop()):
        try:
            topic, payload = server.inbox.get(timeout=0.2)
        except queue.Empty:
            topic = ""
            started = True  # the retained statuses are in: the canary may start
        actions = []
        now = now_ms()
        if topic:
            got = server.handle(topic, payload)
            if got is not None:
                kind, device, what = got
                if kind == "status":
                    rollout.status(device, what)
                elif kind == "request":
                    rollout.request(device, now, what)
                else:
                    actions += rollout.event(device, what[0], what[1], now)
        if started:
            actions += rollout.tick(now)
        for what, run in actions:
            if what == "update":
                server.send_update(run.dev, wait_s)
            else:
                server.send_confirm(run.dev, wait_s)
        for line in rollout.lines:
            out(line)
        rollout.lines.clear()
