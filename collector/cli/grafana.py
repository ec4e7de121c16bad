"""`evalterm grafana export|deploy` (docs/dashboards.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = ["add_parsers"]


def _langs(value: str) -> tuple[str, ...]:
    return ("zh", "en") if value == "both" else (value,)


def cmd_export(args: argparse.Namespace) -> int:
    from collector.config import load_config
    from collector.grafana.export import write

    cfg = load_config(args.config) if args.config else None
    paths = write(Path(args.out), cfg, _langs(args.lang))
    print(f"wrote {len(paths)} files under {args.out}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from grafana_client import GrafanaApi
    from grafana_client.client import (
        GrafanaClientError,
        GrafanaException,
        GrafanaUnauthorizedError,
    )

    from collector.config import load_config
    from collector.errors import ServiceUnavailable
    from collector.grafana.deploy import deploy

    cfg = load_config(args.config) if args.config else None
    token = os.environ.get(args.token_env) if args.token_env else None
    credential: Any = token
    if not credential and args.user:
        credential = (args.user, os.environ.get(args.password_env, ""))
    api = GrafanaApi.from_url(args.url, credential=credential, timeout=args.timeout)
    try:
        deploy(api, cfg, _langs(args.lang), editable_alerts=args.editable_alerts)
    except GrafanaUnauthorizedError:
        raise ServiceUnavailable(
            f"Grafana at {args.url} refused the credentials: put a service-account token with "
            f"the Editor role in ${args.token_env} (or --user with ${args.password_env})"
        ) from None
    except GrafanaClientError as exc:
        raise ServiceUnavailable(f"Grafana at {args.url} refused the deployment: "
                                 f"{exc.status_code} {exc.message}") from None
    except (OSError, GrafanaException) as exc:  # connection refused, timeout, DNS
        raise ServiceUnavailable(f"Grafana at {args.url} is unreachable "
                                 f"({type(exc).__name__}): start it, or correct --url") from None
    return 0


def add_parsers(sub: Any) -> None:
    """Register the `grafana` command group on the main parser's subparsers."""
    g = sub.add_parser("grafana", help="Grafana dashboards, alert rules and provisioning")
    g_sub = g.add_subparsers(dest="grafana_command", required=True)
    exp = g_sub.add_parser("export", help="write the provisioning folder (dashboards, datasource, "
                           "alerting)")
    exp.add_argument("--out", default="dashboards/provisioning",
                     help="target folder (default: dashboards/provisioning)")
    dep = g_sub.add_parser("deploy", help="push datasource, folders, dashboards and alerting to a "
                           "running Grafana")
    dep.add_argument("--url", default="http://localhost:3000", help="Grafana base URL")
    dep.add_argument("--token-env", default="GRAFANA_TOKEN",
                     help="environment variable holding a service-account token")
    dep.add_argument("--user", help="basic-auth user (when no token); password from --password-env")
    dep.add_argument("--password-env", default="GRAFANA_PASSWORD")
    dep.add_argument("--timeout", type=float, default=10.0)
    dep.add_argument("--editable-alerts", action="store_true",
                     help="leave alert rules editable in the UI (X-Disable-Provenance)")
    for sp in (exp, dep):
        sp.add_argument("--lang", choices=("zh", "en", "both"), default="both",
                        help="dashboard language(s)")
    exp.set_defaults(func=cmd_export)
    dep.set_defaults(func=cmd_deploy)
