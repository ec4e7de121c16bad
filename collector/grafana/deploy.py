"""Push the datasource, folders, dashboards and alerting to a running Grafana (grafana-client).

Idempotent: each object is looked up by its stable UID (or name) and updated if present, created
if not. Order matters: the datasource and folders first (dashboards and rules refer to them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

from collector.config import Config
from collector.grafana import alerts
from collector.grafana.export import FOLDERS, dashboards, datasource

__all__ = ["deploy"]

_LOG = logging.getLogger(__name__)


def _missing(call: Callable[[], Any]) -> bool:
    try:
        call()
    except GrafanaClientError as exc:
        if exc.status_code == 404:
            return True
        raise
    return False


def deploy(api: GrafanaApi, cfg: Config | None = None, langs: tuple[str, ...] = ("zh", "en"),
           editable_alerts: bool = False, report: Callable[[str], None] = print) -> None:
    ds = datasource(cfg)
    if _missing(lambda: api.datasource.get_datasource_by_uid(ds["uid"])):
        api.datasource.create_datasource(ds)
        report(f"datasource {ds['uid']}: created")
    else:
        api.datasource.update_datasource_by_uid(ds["uid"], ds)
        report(f"datasource {ds['uid']}: updated")

    for lang in langs:
        uid, title, _ = FOLDERS[lang]
        if _missing(lambda u=uid: api.folder.get_folder(u)):
            api.folder.create_folder(title, uid=uid)
            report(f"folder {uid}: created")
        else:
            api.folder.update_folder(uid, title=title, overwrite=True)
            report(f"folder {uid}: updated")
        for name, dash in dashboards(lang).items():
            api.dashboard.update_dashboard({"dashboard": dash, "folderUid": uid, "overwrite": True,
                                            "message": "evalterm grafana deploy"})
            report(f"dashboard {dash['uid']} ({name}): saved")

    folder_uid = FOLDERS["zh"][0]
    group = {"title": alerts.GROUP, "folderUid": folder_uid,
             "interval": _seconds(alerts.CONFIG["interval"]), "rules": alerts.rules()}
    ap = api.alertingprovisioning
    ap.update_rule_group(folder_uid, alerts.GROUP, group, disable_provenance=editable_alerts)
    report(f"alert rule group {alerts.GROUP}: {len(group['rules'])} rules saved")

    for cp in alerts.contact_points()["contactPoints"]:
        for recv in cp["receivers"]:
            body = {"uid": recv["uid"], "name": cp["name"], "type": recv["type"],
                    "settings": recv["settings"],
                    "disableResolveMessage": recv["disableResolveMessage"]}
            existing = [x for x in ap.get_contactpoints(name=cp["name"]) or []
                        if x.get("uid") == recv["uid"]]
            if existing:
                ap.update_contactpoint(recv["uid"], body, disable_provenance=editable_alerts)
            else:
                ap.create_contactpoint(body, disable_provenance=editable_alerts)
            report(f"contact point {cp['name']}: {'updated' if existing else 'created'}")

    for mt in alerts.mute_timings()["muteTimes"]:
        body = {"name": mt["name"], "time_intervals": mt["time_intervals"]}
        if _missing(lambda n=mt["name"]: ap.get_mute_timing(n)):
            ap.create_mute_timing(body, disable_provenance=editable_alerts)
            report(f"mute timing {mt['name']}: created")
        else:
            ap.update_mute_timing(mt["name"], body)
            report(f"mute timing {mt['name']}: updated")

    ap.set_notification_policy_tree(alerts.policy_tree(), disable_provenance=editable_alerts)
    report("notification policy tree: saved")


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(duration[:-1]) * units[duration[-1]]
