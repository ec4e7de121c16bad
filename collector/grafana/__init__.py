"""Grafana dashboards, alert rules and provisioning for evalterm, generated from Python.

`build_all()` returns every file of the provisioning folder (`dashboards/provisioning/`) as data;
`export.write()` writes them, `deploy.deploy()` pushes them to a running Grafana.
"""

from __future__ import annotations

from collector.grafana.common import DS_UID, GRAFANA_VERSION

__all__ = ["DS_UID", "GRAFANA_VERSION"]
