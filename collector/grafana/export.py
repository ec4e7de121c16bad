"""The provisioning folder: dashboards, datasource, alerting; as data and written to disk.

Layout (drop `provisioning/` into Grafana's `/etc/grafana/provisioning/`):

    provisioning/
        datasources/evalterm-influxdb.yaml      the InfluxQL datasource (uid evalterm-influxdb)
        dashboards/evalterm.yaml                dashboard providers, one folder per language
        dashboards/evalterm/<name>.json         Chinese dashboards (folder 评价器)
        dashboards/evalterm-en/<name>.json      English dashboards (folder "evalterm (English)")
        alerting/evalterm-rules.yaml            alert rules
        alerting/evalterm-contact-points.yaml   contact point template (e-mail)
        alerting/evalterm-policies.yaml         notification policy tree
        alerting/evalterm-mute-timings.yaml     outside opening hours

YAML files are written as JSON (a subset of YAML), sorted and indented, so no YAML library is
needed and diffs stay stable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collector.config import Config
from collector.grafana import alerts, detail, devices, followup, integrity, overview
from collector.grafana.common import DS_UID, FOLDER_UID, to_dict

__all__ = ["DASHBOARDS", "FOLDERS", "build_all", "dashboards", "datasource", "dump", "write"]

DASHBOARDS = {"overview": overview, "detail": detail, "followup": followup,
              "integrity": integrity, "devices": devices}
FOLDERS = {"zh": (FOLDER_UID, "评价器", "evalterm"), "en": (f"{FOLDER_UID}-en",
                                                          "evalterm (English)", "evalterm-en")}
PROVISION_ROOT = "/etc/grafana/provisioning"


def dashboards(lang: str = "zh") -> dict[str, dict[str, Any]]:
    out = {}
    for name, module in DASHBOARDS.items():
        d = to_dict(module.build(lang).build())
        d["id"] = None
        for n, panel in enumerate(d["panels"], start=1):
            panel.setdefault("id", n)  # stable panel ids (links, `viewPanel=`)
        for v in d.get("templating", {}).get("list", []):
            if v["type"] != "interval":  # the SDK sets interval-only defaults on every variable
                for key in ("auto", "auto_count", "auto_min"):
                    v.pop(key, None)
        out[name] = d
    return out


def datasource(cfg: Config | None = None) -> dict[str, Any]:
    """The datasource for the configured InfluxDB; secrets come from Grafana's environment."""
    from collector.config import load_config

    i = (cfg or load_config(None, env={})).influx
    ds: dict[str, Any] = {"orgId": 1, "name": "evalterm InfluxDB", "uid": DS_UID,
                          "type": "influxdb", "access": "proxy", "url": i.url,
                          "isDefault": False, "editable": False}
    if i.version == 1:
        ds["jsonData"] = {"dbName": i.database, "httpMode": "POST", "timeInterval": "10s"}
        ds["database"] = i.database
        if i.username:
            ds["user"] = i.username
            ds["secureJsonData"] = {"password": "${EVALTERM_INFLUX_PASSWORD}"}
    else:  # 2.x / 3.x through the InfluxQL (v1-compatible) endpoint and a DBRP mapping
        ds["jsonData"] = {"version": "InfluxQL", "dbName": i.bucket, "httpMode": "POST",
                          "timeInterval": "10s", "httpHeaderName1": "Authorization"}
        ds["secureJsonData"] = {"httpHeaderValue1": "Token ${EVALTERM_INFLUX_TOKEN}"}
    return ds


def _providers(langs: tuple[str, ...]) -> dict[str, Any]:
    return {"apiVersion": 1, "providers": [{
        "name": f"evalterm-{lang}", "orgId": 1, "type": "file", "folder": FOLDERS[lang][1],
        "folderUid": FOLDERS[lang][0], "disableDeletion": False, "allowUiUpdates": False,
        "updateIntervalSeconds": 60,
        "options": {"path": f"{PROVISION_ROOT}/dashboards/{FOLDERS[lang][2]}"},
    } for lang in langs]}


def build_all(cfg: Config | None = None, langs: tuple[str, ...] = ("zh", "en"),
              alert_lang: str = "zh") -> dict[str, Any]:
    """Every file of the provisioning folder, relative path -> data."""
    files: dict[str, Any] = {
        "datasources/evalterm-influxdb.yaml": {"apiVersion": 1, "datasources": [datasource(cfg)]},
        "dashboards/evalterm.yaml": _providers(langs),
        "alerting/evalterm-rules.yaml": alerts.file_groups(alert_lang, FOLDERS["zh"][1]),
        "alerting/evalterm-contact-points.yaml": alerts.contact_points(),
        "alerting/evalterm-policies.yaml": alerts.policies(),
        "alerting/evalterm-mute-timings.yaml": alerts.mute_timings(),
    }
    for lang in langs:
        for name, d in dashboards(lang).items():
            files[f"dashboards/{FOLDERS[lang][2]}/{name}.json"] = d
    return files


def dump(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def write(root: Path, cfg: Config | None = None, langs: tuple[str, ...] = ("zh", "en")
          ) -> list[Path]:
    """Write the provisioning folder under `root` (e.g. dashboards/provisioning)."""
    written = []
    for rel, data in build_all(cfg, langs).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump(data), encoding="utf-8")
        written.append(path)
    return written
