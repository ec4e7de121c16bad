"""`evalterm broker render`: Mosquitto users, ACL and listeners from the registry."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from collector.cli.common import load

__all__ = ['add_parsers']


def cmd_broker_render(args: argparse.Namespace) -> int:
    from collector.db import connect
    from collector.provision.broker import reload_broker, render_broker
    from collector.registry import Registry

    cfg = load(args)
    from collector.cli.device import tool_runner

    runner = tool_runner(args)
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

def add_parsers(sub: Any) -> None:
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

