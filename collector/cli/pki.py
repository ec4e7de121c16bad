"""`evalterm pki init|issue|rotate|revoke`: the CA of the broker's TLS listener
(collector/provision/pki.py; docs/provisioning.md §2, docs/security.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parsers"]

DEFAULT_DIR = "/etc/evalterm/pki"


def cmd_init(args: argparse.Namespace) -> int:
    from collector.provision.pki import init_ca

    files = init_ca(Path(args.dir), key_type=args.key_type)
    print(f"created the CA in {files.root}: {files.ca_crt.name} (give its bundle "
          f"{files.bundle} to the devices), {files.ca_key.name} (mode 600, keep it offline if "
          "you can); next: evalterm pki issue server --name HOST")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    from collector.provision.pki import PkiFiles, issue_client, issue_server

    if args.what == "server":
        cert = issue_server(Path(args.dir), args.name or [], group=args.group,
                            key_type=args.key_type, days=args.days)
        f = PkiFiles(Path(args.dir))
        print(f"wrote {f.server_crt} and {f.server_key} for {', '.join(args.name)} (valid "
              f"until {cert.not_valid_after_utc:%Y-%m-%d}); restart the broker to use them")
        return 0
    if not args.name or len(args.name) != 1:
        from collector.provision.pki import PkiError

        raise PkiError("a client certificate needs exactly one --name: the device id or user")
    key, crt = issue_client(Path(args.dir), args.name[0], key_type=args.key_type,
                            days=args.days)
    print(f"wrote {crt} and {key} (CN {args.name[0]}); install them on the device")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    from collector.provision.pki import (
        PkiFiles,
        finish_rotation,
        issue_server,
        rotate_ca,
        server_names,
    )

    files = PkiFiles(Path(args.dir))
    if args.finish:
        finish_rotation(files.root)
        names = server_names(files.server_crt) if files.server_crt.exists() else []
        if names:
            issue_server(files.root, names, group=args.group, key_type=args.key_type)
        print(f"the old CA is gone from {files.bundle} and {files.crl}; server.crt no longer "
              "carries the cross-signed CA. Restart the broker.")
        return 0
    names = server_names(files.server_crt) if files.server_crt.exists() else []
    cert = rotate_ca(files.root, key_type=args.key_type)
    if names:
        issue_server(files.root, names, group=args.group, key_type=args.key_type)
    print(f"new CA {cert.subject.rfc4514_string()} in {files.ca_crt}; {files.bundle} holds the "
          "new and the old CA" + (f"; server.crt re-issued for {', '.join(names)} with the "
                                  "cross-signed CA, so devices pinned to either CA connect"
                                  if names else "") +
          ". Restart the broker, give the devices the new bundle, then `evalterm pki rotate "
          "--finish`.")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from collector.provision.pki import PkiFiles, revoke

    serials = revoke(Path(args.dir), args.name)
    print(f"revoked {len(serials)} certificate(s) of {args.name}; {PkiFiles(Path(args.dir)).crl}"
          " rewritten: reload the broker (sudo systemctl reload mosquitto)")
    return 0


def add_parsers(sub: Any) -> None:
    """Register `evalterm pki`."""
    pk = sub.add_parser("pki", help="the CA and certificates of the broker's TLS listener")
    pk_sub = pk.add_subparsers(dest="pki_command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dir", default=DEFAULT_DIR, help=f"PKI folder (default {DEFAULT_DIR})")
        sp.add_argument("--key-type", choices=("ec", "rsa"), default="ec",
                        help="ec: P-256 (default); rsa: 2048 bits")

    it = pk_sub.add_parser("init", help="create the CA (key mode 600) and an empty CRL")
    common(it)
    it.set_defaults(func=cmd_init)

    iss = pk_sub.add_parser("issue", help="the broker's server certificate, or a client one")
    common(iss)
    iss.add_argument("what", choices=("server", "client"))
    iss.add_argument("--name", action="append", help="server: a host name or IP address the "
                     "clients connect to (repeatable, the first is the CN); client: the device "
                     "id or user (CN)")
    iss.add_argument("--group", help="server: group that may read server.key (mode 640), "
                     "e.g. mosquitto")
    iss.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    iss.set_defaults(func=cmd_issue)

    ro = pk_sub.add_parser("rotate", help="a new CA beside the old one; --finish drops the old")
    common(ro)
    ro.add_argument("--finish", action="store_true",
                    help="every device has the new CA file: drop the old CA")
    ro.add_argument("--group", help="group that may read the re-issued server.key")
    ro.set_defaults(func=cmd_rotate)

    rv = pk_sub.add_parser("revoke", help="revoke a client's certificates (crl.pem)")
    rv.add_argument("--dir", default=DEFAULT_DIR, help=f"PKI folder (default {DEFAULT_DIR})")
    rv.add_argument("--name", required=True, help="the device id or user")
    rv.set_defaults(func=cmd_revoke)
