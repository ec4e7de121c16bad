"""`evalterm device ...`: the device registry (add, list, revoke), the technicians'
commands on a board (flash, provision, rotate-key, replace, report; docs/provisioning.md) and
the over-the-air update of a hall (update; collector/ota).

Every command that touches a board takes --dry-run: commands that would change something are
printed, not run; read-only ones (chip detection, reading the board back, local compilation)
still run, so the plan is the one for the board that is plugged in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from collector.cli.common import load, now_ms, open_registry
from collector.registry import RegistryError

__all__ = ['add_parsers']


def cmd_device_add(args: argparse.Namespace) -> int:
    reg, _ = open_registry(load(args))
    others = reg.active_at(args.hall, args.window)
    if others:
        raise RegistryError(
            f"{args.hall}/{args.window} already has the active device {others[0].device}: a "
            "window has one; use `evalterm device replace` for a new board, or revoke the old "
            "one first")
    dev = reg.add(args.device, args.hall, args.window, now_ms())
    print(f"registered {dev.device} at {dev.hall}/{dev.window}, key fingerprint {dev.fingerprint}")
    if args.key_file:
        path = Path(args.key_file)
        path.write_text(dev.key.hex() + "\n")
        path.chmod(0o600)
        print(f"key written to {path} (mode 600); put it in the device's config, then delete it")
    else:
        print("the key was not shown: use --key-file to write it for provisioning")
    return 0

def cmd_device_list(args: argparse.Namespace) -> int:
    reg, _ = open_registry(load(args))
    devices = reg.list()
    if args.json:
        print(json.dumps([{"device": d.device, "hall": d.hall, "window": d.window, "state": d.state,
                           "fingerprint": d.fingerprint} for d in devices], indent=2))
        return 0
    print(f"{'device':<24} {'hall':<12} {'window':<10} {'state':<8} fingerprint")
    for d in devices:
        print(f"{d.device:<24} {d.hall:<12} {d.window:<10} {d.state:<8} {d.fingerprint}")
    return 0

def cmd_device_remove(args: argparse.Namespace) -> int:
    reg, _ = open_registry(load(args))
    dev = reg.remove(args.device, force=args.force)
    print(f"removed {dev.device} ({dev.hall}/{dev.window}) from the registry; run `evalterm "
          "broker render` so the broker forgets it too")
    return 0


def cmd_device_revoke(args: argparse.Namespace) -> int:
    reg, _ = open_registry(load(args))
    dev = reg.revoke(args.device, now_ms())
    print(f"{dev.device} is {dev.state}; its messages are refused from now on")
    return 0

def tool_runner(args: argparse.Namespace) -> Any:
    from collector.provision.runner import ToolRunner

    return ToolRunner(dry_run=args.dry_run)

def _provisioner(args: argparse.Namespace) -> Any:
    from collector.db import connect
    from collector.provision.board import MpRemote
    from collector.provision.build import default_firmware_dir
    from collector.provision.device import Provisioner
    from collector.registry import Registry

    cfg = load(args)
    return Provisioner(Registry(connect(cfg.state_target)), MpRemote(tool_runner(args)),
                       Path(args.firmware) if args.firmware else default_firmware_dir(),
                       cfg.state_db.parent / "provisioning", now_ms)

def _site(args: argparse.Namespace, hall: str) -> dict[str, Any]:
    from collector.provision.devconfig import load_site

    return load_site(Path(args.site or f"site-{hall}.json"))

def _done(outcome: Any, dry_run: bool) -> int:
    d = outcome.device
    what = ", ".join(outcome.changed) if outcome.changed else "nothing"
    if dry_run:
        print(f"dry run: {d.device} at {d.hall}/{d.window}, firmware {outcome.firmware}; "
              f"files that would be written: {what}")
        return 0
    if not outcome.changed and not outcome.removed_stale and not outcome.registered:
        print(f"{d.device} at {d.hall}/{d.window} is already provisioned (firmware "
              f"{outcome.firmware}, key {d.fingerprint}): nothing changed")
        return 0
    print(f"{d.device} at {d.hall}/{d.window}: firmware {outcome.firmware}, key fingerprint "
          f"{d.fingerprint}; written: {what}")
    if outcome.removed_stale:
        print(f"removed stale files: {', '.join(outcome.removed_stale)}")
    if outcome.report:
        print(f"report: {outcome.report}")
    print("next: `evalterm broker render --reload-pid $(pidof mosquitto)` so the broker lets it in")
    return 0

def cmd_flash(args: argparse.Namespace) -> int:
    from collector.provision.esp import EspTool, flash_plan

    image, chip = flash_plan(EspTool(tool_runner(args)), args.port, Path(args.image))
    if args.dry_run:
        print(f"dry run: nothing was written to the {chip.chip} on {args.port}")
    else:
        print(f"flashed {image.path.name} onto the {chip.description} on {args.port} "
              f"(MAC {chip.mac}), verified; next: evalterm device provision --port {args.port}")
    return 0

def cmd_provision(args: argparse.Namespace) -> int:
    p = _provisioner(args)
    outcome = p.provision(args.port, args.hall, args.window, _site(args, args.hall),
                          device=args.device, board_profile=args.board, arch=args.arch,
                          force=args.force)
    return _done(outcome, args.dry_run)

def cmd_rotate_key(args: argparse.Namespace) -> int:
    from collector.provision.runner import ProvisionError

    p = _provisioner(args)
    dev = p.registry.get(args.device)
    if dev is None:
        raise ProvisionError(f"{args.device} is not registered")
    outcome = p.rotate_key(args.port, args.device, _site(args, dev.hall),
                           board_profile=args.board, arch=args.arch)
    return _done(outcome, args.dry_run)

def cmd_replace(args: argparse.Namespace) -> int:
    from collector.provision.runner import ProvisionError

    p = _provisioner(args)
    old = p.registry.get(args.old)
    if old is None:
        raise ProvisionError(f"{args.old} is not registered: nothing to replace")
    outcome = p.replace(args.port, args.old, _site(args, old.hall), device=args.device,
                        board_profile=args.board, arch=args.arch, force=args.force)
    return _done(outcome, args.dry_run)

def cmd_report(args: argparse.Namespace) -> int:
    from collector.provision.report import report_path

    path = report_path(load(args).state_db.parent / "provisioning", args.hall)
    if not path.exists():
        print(f"no provisioning report for {args.hall} yet ({path})", file=sys.stderr)
        return 1
    text = path.read_text(encoding="utf-8")
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0

def cmd_update(args: argparse.Namespace) -> int:
    """A staged over-the-air update of a hall (collector/ota): one window, then the rest."""
    from collector.db import connect
    from collector.ota.run import describe, plan_update, run_update

    cfg = load(args)
    conn = connect(cfg.state_target)
    try:
        plan = plan_update(conn, args.hall, args.window, Path(args.image))
        for line in describe(plan, conn):
            print(line)
    finally:
        conn.close()
    if args.dry_run:
        print(f"dry run: nothing was sent; {len(plan.devices)} device(s) would be updated")
        return 0
    password = ""
    if args.mqtt_password_file:
        password = Path(args.mqtt_password_file).read_text().strip()
        if ":" in password:  # a service-users line (user:password)
            password = password.split(":", 1)[1]
    rollout = run_update(cfg, plan, wait_s=args.wait, timeout_s=args.timeout,
                         out=lambda line: print(line, flush=True), user=args.mqtt_user,
                         password=password)
    failed = rollout.failed
    for r in failed:
        print(f"evalterm: error: {r.name}: {r.detail}", file=sys.stderr)
    ok = len(rollout.runs) - len(failed)
    print(f"{ok} of {len(rollout.runs)} device(s) run {plan.image.version}")
    return 1 if failed else 0


def _common(sp: argparse.ArgumentParser, *, board: bool = True) -> None:
    sp.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    sp.add_argument("--dry-run", action="store_true", help="print what would change, change "
                    "nothing")
    if board:
        sp.add_argument("--site", help="the hall's site file (default: site-HALL.json)")
        sp.add_argument("--board", help="board profile (docs/firmware.md), e.g. devkitc-5led")
        sp.add_argument("--arch", help="mpy-cross architecture (default: what the board says)")
        sp.add_argument("--firmware", help="firmware folder (default: this checkout's firmware/)")

def add_parsers(sub: Any) -> None:
    """Register the `device` command group on the main parser's subparsers."""
    dev = sub.add_parser("device", help="the device registry and the boards")
    dev_sub = dev.add_subparsers(dest="device_command", required=True)
    add = dev_sub.add_parser("add", help="register a device and create its key")
    add.add_argument("--device", required=True)
    add.add_argument("--hall", required=True)
    add.add_argument("--window", required=True)
    add.add_argument("--key-file", help="write the new key (hex) to this file, mode 600")
    add.set_defaults(func=cmd_device_add)
    ls = dev_sub.add_parser("list", help="list registered devices (key fingerprints only)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_device_list)
    rv = dev_sub.add_parser("revoke", help="revoke a device: its messages are refused")
    rv.add_argument("--device", required=True)
    rv.set_defaults(func=cmd_device_revoke)
    rm = dev_sub.add_parser("remove", help="delete a device that never rated for real (refused "
                            "for a device with stored ratings unless --force)")
    rm.add_argument("--device", required=True)
    rm.add_argument("--force", action="store_true",
                    help="remove even with stored ratings (simulated or test devices)")
    rm.set_defaults(func=cmd_device_remove)
    fl = dev_sub.add_parser("flash", help="erase the board and write MicroPython (esptool)")
    _common(fl, board=False)
    fl.add_argument("--image", required=True, help="MicroPython .bin for the board's chip")
    fl.set_defaults(func=cmd_flash)

    pv = dev_sub.add_parser("provision", help="install firmware, identity and key; register")
    _common(pv)
    pv.add_argument("--hall", required=True)
    pv.add_argument("--window", required=True)
    pv.add_argument("--device", help="device id (default: the board's, or kp-<unique id>)")
    pv.add_argument("--force", action="store_true",
                    help="rewrite every file, or give a provisioned board a new identity")
    pv.set_defaults(func=cmd_provision)

    rk = dev_sub.add_parser("rotate-key", help="new key in the registry and on the board")
    _common(rk)
    rk.add_argument("--device", required=True)
    rk.set_defaults(func=cmd_rotate_key)

    rp = dev_sub.add_parser("replace", help="a new board takes a broken device's window; the "
                            "old identity is revoked")
    _common(rp)
    rp.add_argument("--old", required=True, help="the device being replaced")
    rp.add_argument("--device", help="the new board's id (default: kp-<unique id>)")
    rp.add_argument("--force", action="store_true")
    rp.set_defaults(func=cmd_replace)

    up = dev_sub.add_parser("update", help="over-the-air firmware update of a hall: one "
                            "window first, the rest after it runs the new version")
    up.add_argument("--hall", required=True)
    up.add_argument("--window", help="update this window only (default: the whole hall, its "
                    "first window first)")
    up.add_argument("--image", required=True, help="the firmware to install: a folder or a tar "
                    "file holding etfw/ (docs/firmware.md, \"Over-the-air updates\")")
    up.add_argument("--dry-run", action="store_true", help="print the plan, send nothing")
    up.add_argument("--wait", type=int, default=600, help="seconds the new version has to hear "
                    "from the collector before the device rolls back (default 600)")
    up.add_argument("--timeout", type=int, default=600, help="seconds without progress before a "
                    "device counts as failed (default 600)")
    up.add_argument("--mqtt-user", help="the update's broker user (`ota` on a rendered "
                    "broker; default: the collector's, only on a broker without users)")
    up.add_argument("--mqtt-password-file", help="a file holding its password (or its "
                    "user:password line)")
    up.set_defaults(func=cmd_update)

    rep = dev_sub.add_parser("report", help="the hall's provisioning report (CSV)")
    rep.add_argument("--hall", required=True)
    rep.add_argument("--out", help="write the CSV here instead of stdout")
    rep.set_defaults(func=cmd_report)

