"""`evalterm device flash|provision|rotate-key|replace|report` and `evalterm broker render`
(docs/provisioning.md).

Every command that touches a board or the broker takes --dry-run: commands that would change
something are printed, not run; read-only ones (chip detection, reading the board back, local
compilation) still run, so the plan is the one for the board that is plugged in.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_device_commands", "add_subcommands"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _runner(args: argparse.Namespace) -> Any:
    from .provision.runner import ToolRunner

    return ToolRunner(dry_run=args.dry_run)


def _provisioner(args: argparse.Namespace) -> Any:
    from .cli import _config
    from .db import connect
    from .provision.board import MpRemote
    from .provision.build import default_firmware_dir
    from .provision.device import Provisioner
    from .registry import Registry

    cfg = _config(args)
    return Provisioner(Registry(connect(cfg.state_db)), MpRemote(_runner(args)),
                       Path(args.firmware) if args.firmware else default_firmware_dir(),
                       cfg.state_db.parent / "provisioning", _now_ms)


def _site(args: argparse.Namespace, hall: str) -> dict[str, Any]:
    from .provision.devconfig import load_site

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
    from .provision.esp import EspTool, flash_plan

    image, chip = flash_plan(EspTool(_runner(args)), args.port, Path(args.image))
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
    from .provision.runner import ProvisionError

    p = _provisioner(args)
    dev = p.registry.get(args.device)
    if dev is None:
        raise ProvisionError(f"{args.device} is not registered")
    outcome = p.rotate_key(args.port, args.device, _site(args, dev.hall),
                           board_profile=args.board, arch=args.arch)
    return _done(outcome, args.dry_run)


def cmd_replace(args: argparse.Namespace) -> int:
    from .provision.runner import ProvisionError

    p = _provisioner(args)
    old = p.registry.get(args.old)
    if old is None:
        raise ProvisionError(f"{args.old} is not registered: nothing to replace")
    outcome = p.replace(args.port, args.old, _site(args, old.hall), device=args.device,
                        board_profile=args.board, arch=args.arch, force=args.force)
    return _done(outcome, args.dry_run)


def cmd_report(args: argparse.Namespace) -> int:
    from .cli import _config
    from .provision.report import report_path

    path = report_path(_config(args).state_db.parent / "provisioning", args.hall)
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


def cmd_broker_render(args: argparse.Namespace) -> int:
    from .cli import _config
    from .db import connect
    from .provision.broker import reload_broker, render_broker
    from .registry import Registry

    cfg = _config(args)
    runner = _runner(args)
    devices = Registry(connect(cfg.state_db)).list()
    files = render_broker(runner, Path(args.out), cfg.mqtt.topic_prefix, devices,
                          cfg.mqtt.username, cfg.mqtt.password, file_group=args.file_group,
                          halls=args.hall or ())
    if not args.dry_run:
        active = sum(1 for d in devices if d.state == "active")
        print(f"wrote {files.passwd}, {files.acl}, {files.conf}: {active} active devices, "
              f"{len(files.users) - active} service users")
        for user in files.new_service_users:
            print(f"new user {user}: its password is in {files.service_users}; give it to the "
                  "hall's business system")
    if args.reload_pid:
        reload_broker(runner, args.reload_pid)
        if not args.dry_run:
            print(f"mosquitto (pid {args.reload_pid}) reloaded")
    elif not args.dry_run:
        print("reload the broker to apply: sudo systemctl reload mosquitto "
              "(or --reload-pid PID)")
    return 0


def _common(sp: argparse.ArgumentParser, *, board: bool = True) -> None:
    sp.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    sp.add_argument("--dry-run", action="store_true", help="print what would change, change "
                    "nothing")
    if board:
        sp.add_argument("--site", help="the hall's site file (default: site-HALL.json)")
        sp.add_argument("--board", help="board profile (docs/firmware.md), e.g. devkitc-5led")
        sp.add_argument("--arch", help="mpy-cross architecture (default: what the board says)")
        sp.add_argument("--firmware", help="firmware folder (default: this checkout's firmware/)")


def add_device_commands(dev_sub: Any) -> None:
    """Register under `evalterm device`."""
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

    rep = dev_sub.add_parser("report", help="the hall's provisioning report (CSV)")
    rep.add_argument("--hall", required=True)
    rep.add_argument("--out", help="write the CSV here instead of stdout")
    rep.set_defaults(func=cmd_report)


def add_subcommands(sub: Any) -> None:
    """Register `evalterm broker`."""
    br = sub.add_parser("broker", help="Mosquitto users and ACL from the registry")
    br_sub = br.add_subparsers(dest="broker_command", required=True)
    rd = br_sub.add_parser("render", help="write passwd, acl and evalterm.conf; optionally reload")
    rd.add_argument("--out", default="/etc/mosquitto/evalterm", help="folder for the files")
    rd.add_argument("--hall", action="append", help="a hall that gets a business-system user "
                    "even before it has devices (repeatable)")
    rd.add_argument("--file-group", help="group that may read passwd and acl (mode 640), "
                    "e.g. mosquitto")
    rd.add_argument("--reload-pid", type=int, help="send SIGHUP to this mosquitto after writing")
    rd.add_argument("--dry-run", action="store_true")
    rd.set_defaults(func=cmd_broker_render)
