"""`evalterm broker render`: Mosquitto users, ACL and listeners from the registry."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from collector.cli.common import load

__all__ = ['add_parsers']


def cmd_broker_render(args: argparse.Namespace) -> int:
    from collector.db import connect
    from collector.provision.broker import (
        MONITOR_USER,
        Listeners,
        reload_broker,
        render_broker,
    )
    from collector.registry import Registry

    cfg = load(args)
    from collector.cli.device import tool_runner

    runner = tool_runner(args)
    devices = Registry(connect(cfg.state_target)).list()
    files = render_broker(runner, Path(args.out), cfg.mqtt.topic_prefix, devices,
                          cfg.mqtt.username, cfg.mqtt.password, file_group=args.file_group,
                          halls=args.hall or (), listeners=_listeners(args, Listeners),
                          partitions=cfg.partitions.count)
    if not args.dry_run:
        active = sum(1 for d in devices if d.state == "active")
        print(f"wrote {files.passwd}, {files.acl}, {files.conf}: {active} active devices, "
              f"{len(files.users) - active} service users")
        if cfg.partitions.count > 1:
            print(f"partition users {cfg.mqtt.username}-p0 .. -p{cfg.partitions.count - 1}: the "
                  "collector's password and rights ([partitions] count)")
        for user in files.new_service_users:
            whom = ("the technicians' monitoring (read-only)" if user == MONITOR_USER
                    else "the hall's business system")
            print(f"new user {user}: its password is in {files.service_users}; give it to "
                  f"{whom}")
    if args.reload_pid:
        reload_broker(runner, args.reload_pid)
        if not args.dry_run:
            print(f"mosquitto (pid {args.reload_pid}) reloaded")
    elif not args.dry_run:
        print("reload the broker to apply: sudo systemctl reload mosquitto "
              "(or --reload-pid PID)")
    return 0

def _listeners(args: argparse.Namespace, cls: Any) -> Any:
    from collector.errors import UsageError

    bind, _, port = args.hall_listen.rpartition(":")
    if not port.isdecimal() or not 1 <= int(port) <= 65535 or any(c.isspace() for c in bind):
        raise UsageError(f"--hall-listen {args.hall_listen!r}: give ADDRESS:PORT or :PORT "
                         "(e.g. :8883 for every interface, 10.20.0.2:8883)")
    return cls(local_port=args.local_port, hall_bind=bind.strip("[]"), hall_port=int(port),
               pki_dir=Path(args.pki), mtls=args.mtls, autosave_s=args.autosave_s)


def add_parsers(sub: Any) -> None:
    """Register `evalterm broker`."""
    br = sub.add_parser("broker", help="Mosquitto users, ACL and listeners from the registry")
    br_sub = br.add_subparsers(dest="broker_command", required=True)
    rd = br_sub.add_parser("render", help="write passwd, acl and evalterm.conf; optionally reload")
    rd.add_argument("--out", default="/etc/mosquitto/evalterm", help="folder for the files")
    rd.add_argument("--hall", action="append", help="a hall that gets a business-system user "
                    "even before it has devices (repeatable)")
    rd.add_argument("--file-group", help="group that may read passwd and acl (mode 640), "
                    "e.g. mosquitto")
    rd.add_argument("--reload-pid", type=int, help="send SIGHUP to this mosquitto after writing")
    rd.add_argument("--pki", default="/etc/evalterm/pki",
                    help="folder of `evalterm pki` (ca-bundle.crt, server.crt/key, crl.pem)")
    rd.add_argument("--hall-listen", default=":8883", metavar="[ADDRESS]:PORT",
                    help="TLS listener for the hall network (default :8883, every interface)")
    rd.add_argument("--local-port", type=int, default=1883,
                    help="plain MQTT port on 127.0.0.1 for services on this host (default 1883)")
    rd.add_argument("--mtls", action="store_true", help="hall listener: require a client "
                    "certificate of the project CA; its CN is the user name")
    rd.add_argument("--autosave-s", type=int, default=10,
                    help="seconds between saves of the broker's state (default 10)")
    rd.add_argument("--dry-run", action="store_true")
    rd.set_defaults(func=cmd_broker_render)

